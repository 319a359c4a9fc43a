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
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from driftlabel.models.errors import InvalidDataError

__all__ = ["DriftEvent", "DriftMonitor", "JudgeRateController"]

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


class JudgeRateController:
    """How much of the stream goes to the judge: a learning rate, a maintenance rate, a drift boost.

    R.E.D.'s recursion pays while the judge's answers still teach the experts; once the uncertain share has
    stopped falling (``patience`` windows of ``window`` items without a relative drop of
    ``min_improvement``), the rate falls to ``maintenance``. Drift raises it again: river detectors
    (ADWIN) watch the entropy of every item, the share of judged items whose top-1 the judge rejected,
    and the distance between the recent predicted-class mix and the one before; an upward change of any of
    them is a :class:`DriftEvent` and puts the controller in ``drift`` for ``drift_items`` items at
    ``drift_boost`` x the learning rate (1.0 by default: back from maintenance to the full budget; a
    boost above 1 is borrowed from the budget and paid back after, see :attr:`target_share`).
    Rates are *calls per item*: :attr:`target_share` divides by the measured calls per judged item
    (recursive delegation asks several candidates), so the judge budget holds whatever the depth; calls
    spent beyond the budget so far (texts of a class the experts do not know yet exhaust every candidate
    before the calls-per-judged estimate catches up) are paid back over the next ``window`` items.
    """

    def __init__(
        self,
        calls_per_item: float = 0.10,
        maintenance: float = 0.03,
        window: int = 1000,
        patience: int = 5,
        min_improvement: float = 0.01,
        drift_items: int = 1000,
        drift_boost: float = 1.0,
        delta: float = 0.002,
    ) -> None:
        if not 0.0 <= maintenance <= calls_per_item:
            raise InvalidDataError("need 0 <= maintenance <= calls_per_item")
        self.calls_per_item = calls_per_item
        self.maintenance = maintenance
        self.window = window
        self.patience = patience
        self.min_improvement = min_improvement
        self.drift_items = drift_items
        self.drift_boost = drift_boost
        self.monitors = {
            "entropy": DriftMonitor("entropy", delta=delta),
            "rejection": DriftMonitor("rejection", delta=delta),
            "class_mix": DriftMonitor("class_mix", delta=delta),
        }
        self.state: Literal["learning", "saturated", "drift"] = "learning"
        self.n = 0
        #: the latest drift events (bounded: a service runs for months; the metrics count them all)
        self.events: deque[DriftEvent] = deque(maxlen=1000)
        self._calls = 0.0  # fractional when one call judges several items (judge.batch_size)
        self._other = 0.0  # calls for no streamed item: naming a proposed class, generating examples
        self._judged = 0
        self._allowed = 0.0  # calls the budget allowed so far: the rate in force times the items seen
        self._win_entropy: list[float] = []
        self._best_entropy = np.inf
        self._stale = 0
        self._drift_left = 0
        self._win_sum = 0.0
        self._win_n = 0
        self._mix_prev: np.ndarray | None = None
        self._mix_prev_labels: list[str] = []
        self._mix_prev_map: dict[str, float] = {}
        self._mix_now: dict[str, int] = {}

    @property
    def rate(self) -> float:
        """Judge calls per streamed item wanted now."""
        if self.state == "drift":
            return self.calls_per_item * self.drift_boost
        return self.maintenance if self.state == "saturated" else self.calls_per_item

    @property
    def calls_per_judged(self) -> float:
        """Measured judge calls per judged item (1.5 until there is data: depth-3 delegation)."""
        return self._calls / self._judged if self._judged >= 20 else 1.5

    @property
    def overspent(self) -> float:
        """Judge calls spent beyond the budget so far (0 when within it), :meth:`charge`'s included."""
        return max(0.0, self._calls + self._other - self._allowed)

    def charge(self, calls: float = 1.0) -> None:
        """Count judge calls made for no streamed item (naming a proposed class, generating a described
        class's examples) against the budget. Why: the budget is judge calls per streamed item, all of
        them; uncharged, every proposal and every description-only class spent beyond it (O*NET's 153
        described classes: 0.120 calls per text against 0.10). Routing pays them back over the next
        ``window`` items; they do not enter :attr:`calls_per_judged`."""
        if calls < 0:
            raise InvalidDataError(f"cannot charge {calls} judge calls")
        self._other += float(calls)

    @property
    def target_share(self) -> float:
        """Share of items to route so that :attr:`rate` calls per item are spent (less while paying back
        an overspend)."""
        rate = max(0.0, self.rate - self.overspent / max(self.window, 1))
        return min(1.0, rate / max(self.calls_per_judged, 0.01))

    def observe(
        self,
        entropy: np.ndarray,
        predicted: Sequence[str],
        judged_calls: Sequence[float] = (),
        top1_rejected: Sequence[bool] = (),
    ) -> list[DriftEvent]:
        """Feed one micro-batch: every item's normalised entropy and top-1, and the judged items' outcome.

        Returns the upward drift events it caused (also kept in :attr:`events`).
        """
        ent = np.asarray(entropy, dtype=np.float64).reshape(-1)
        events = [e for e in self.monitors["entropy"].update_many(ent) if e.direction == "up"]
        events += self._judged_events(judged_calls, top1_rejected)
        for lab in predicted:
            self._mix_now[lab] = self._mix_now.get(lab, 0) + 1
        self.n += len(ent)
        # a boost above the budget is borrowed: the budget accrues at calls_per_item, so what a drift
        # spends beyond it is an overspend, paid back over the following window
        self._allowed += min(self.rate, self.calls_per_item) * len(ent)
        self._win_sum += float(ent.sum())
        self._win_n += len(ent)
        if self._win_n >= self.window:
            events += self._close_window()
        if events:
            self._enter_drift(events)
        elif self.state == "drift":
            self._drift_left -= len(ent)
            if self._drift_left <= 0:
                self.state = "learning"
        return events

    def observe_judged(
        self, judged_calls: Sequence[float], top1_rejected: Sequence[bool]
    ) -> list[DriftEvent]:
        """Feed judged items' outcomes alone (the stream learns them later than it labels the batch)."""
        events = self._judged_events(judged_calls, top1_rejected)
        if events:
            self._enter_drift(events)
        return events

    def _enter_drift(self, events: list[DriftEvent]) -> None:
        """Full judge rate for ``drift_items`` items; saturation is judged afresh after it."""
        self.events.extend(events)
        self.state = "drift"
        self._drift_left = self.drift_items
        self._stale = 0
        self._best_entropy = np.inf

    def _judged_events(
        self, judged_calls: Sequence[float], top1_rejected: Sequence[bool]
    ) -> list[DriftEvent]:
        calls = list(judged_calls)
        self._calls += float(sum(calls))
        self._judged += len(calls)
        rej = np.asarray(list(top1_rejected), dtype=np.float64)
        if not len(rej):
            return []
        return [e for e in self.monitors["rejection"].update_many(rej) if e.direction == "up"]

    def _close_window(self) -> list[DriftEvent]:
        mean = self._win_sum / max(self._win_n, 1)
        self._win_sum, self._win_n = 0.0, 0
        if self.state != "drift":
            if mean < self._best_entropy * (1.0 - self.min_improvement):
                self._best_entropy = mean
                self._stale = 0
            else:
                self._stale += 1
            if self._stale >= self.patience:
                self.state = "saturated"
        labels = sorted(self._mix_now)
        counts = np.array([self._mix_now[lab] for lab in labels], dtype=np.float64)
        events: list[DriftEvent] = []
        mix = dict(zip(labels, (counts / max(counts.sum(), 1.0)).tolist(), strict=True))
        if self._mix_prev is not None:
            keys = sorted(set(mix) | set(self._mix_prev_labels))
            a = np.array([mix.get(k, 0.0) for k in keys])
            b = np.array([self._mix_prev_map.get(k, 0.0) for k in keys])
            tv = 0.5 * float(np.abs(a - b).sum())  # total-variation distance between consecutive windows
            events = [e for e in self.monitors["class_mix"].update_many([tv]) if e.direction == "up"]
            if tv > 0.5:  # half the mass moved: too few windows for ADWIN to see, but a change for sure
                events.append(DriftEvent("class_mix", self.n, 0.0, tv, "total_variation", time.time()))
        self._mix_prev = counts
        self._mix_prev_labels = labels
        self._mix_prev_map = mix
        self._mix_now = {}
        return events
