"""Drift detection over the service's own signals, with river's detectors.

R.E.D.'s uncertain share falls as the experts learn and rises again when the data drifts or a new class
appears; the judge's agreement with the top-1 prediction falls at the same moments. A
:class:`DriftMonitor` feeds such a per-item signal (0/1 "was uncertain", 0/1 "judge agreed", or any real
value) to a river detector (ADWIN by default: no window size to tune, a false-alarm bound ``delta``) and
returns a :class:`DriftEvent` for every change it detects, for the stream to log, count and act on
(e.g. raise the judge budget, or ``refit()``). River's detectors are per item by nature; ADWIN's update is
compiled and costs well under a microsecond, so this is not on the hot path's budget.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from driftlabel.models.errors import InvalidDataError

__all__ = ["DriftEvent", "DriftMonitor"]

DetectorName = Literal["adwin", "page_hinkley", "kswin"]


@dataclass(frozen=True)
class DriftEvent:
    """One detected change of a monitored signal."""

    signal: str
    position: int
    """How many values the monitor had seen when the change was detected."""
    before: float
    """The signal's running estimate just before the change."""
    after: float
    """The estimate right after (over the detector's new window)."""
    detector: str
    ts: float

    @property
    def direction(self) -> Literal["up", "down"]:
        return "up" if self.after >= self.before else "down"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "direction": self.direction}


class DriftMonitor:
    """A river drift detector over one named signal, fed in micro-batches."""

    def __init__(
        self, signal: str = "uncertain_share", detector: DetectorName = "adwin", **params: Any
    ) -> None:
        self.signal = signal
        self.detector = detector
        self.params = dict(params)
        self._det = self._make()
        self.n = 0
        self.n_detections = 0
        self._sum = 0.0  # running mean since the last detection, for the event's "before"/"after"
        self._count = 0

    def _make(self) -> Any:
        from river import drift

        if self.detector == "adwin":
            return drift.ADWIN(**self.params)
        if self.detector == "page_hinkley":
            return drift.PageHinkley(**self.params)
        if self.detector == "kswin":
            return drift.KSWIN(**self.params)
        raise InvalidDataError(f"unknown drift detector {self.detector!r}; use adwin, page_hinkley or kswin")

    def clone(self) -> DriftMonitor:
        return DriftMonitor(self.signal, self.detector, **self.params)

    @property
    def estimate(self) -> float:
        """The signal's current mean (ADWIN: its window's mean; else the mean since the last change)."""
        est = getattr(self._det, "estimation", None)
        if est is not None and self.detector == "adwin":
            return float(est)
        return self._sum / self._count if self._count else 0.0

    def update_many(self, values: Iterable[float] | np.ndarray) -> list[DriftEvent]:
        """Feed values in order; return the drift events they triggered (usually none)."""
        arr = np.asarray(
            list(values) if not isinstance(values, np.ndarray) else values, dtype=np.float64
        ).reshape(-1)
        if not np.all(np.isfinite(arr)):
            raise InvalidDataError(f"drift signal {self.signal!r}: values must be finite numbers")
        events: list[DriftEvent] = []
        for x in arr.tolist():
            before = self.estimate
            self._det.update(x)
            self.n += 1
            self._sum += x
            self._count += 1
            if self._det.drift_detected:
                self.n_detections += 1
                if self.detector != "adwin":
                    self._sum, self._count = x, 1
                events.append(
                    DriftEvent(self.signal, self.n, before, self.estimate, self.detector, time.time())
                )
        return events

    def reset(self) -> None:
        self._det = self._make()
        self.n = self.n_detections = self._count = 0
        self._sum = 0.0
