"""Adaptive delegation: which texts of a micro-batch go to the judge.

The judge is the expensive part, so the share of texts sent to it is kept near a target (say 10 %). A
fixed entropy threshold cannot do that: as the experts learn, the uncertainty of the stream falls, and
when classes drift or appear it rises again. :class:`AdaptiveRouter` therefore takes its threshold from
the recent uncertainties themselves (their ``1 - target`` quantile over a rolling window) and spends a
routing credit that grows by ``target`` per text; when more texts are above the threshold than there is
credit, the most uncertain go first. All of it is vectorised over the micro-batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Protocol

import numpy as np

__all__ = ["AdaptiveRouter", "RateSource", "id_unit", "judged_share", "uncertainty"]


class RateSource(Protocol):
    """What :func:`judged_share` needs of ``models.drift.JudgeRateController``."""

    @property
    def rate(self) -> float: ...

    @property
    def target_share(self) -> float: ...

    @property
    def calls_per_judged(self) -> float: ...


def judged_share(
    target_share: float, calls_per_text: float, rate_control: bool, controller: RateSource
) -> float:
    """The share of texts to route now.

    With a calls budget (``calls_per_text > 0``) the controller's rate is in judge calls per text and its
    ``target_share`` divides it by the measured calls per judged text (recursive delegation asks several
    candidates, ~1.9 calls a text here; a batch of k texts in one call charges each 1/k), capped by
    ``target_share`` (with rate control off the budget is fixed: no maintenance level, no drift boost, no
    pay-back); without one, the controller's rate is the share itself, or ``target_share`` alone when rate
    control is off.
    """
    if calls_per_text > 0:
        if not rate_control:
            return min(target_share, calls_per_text / max(controller.calls_per_judged, 0.01))
        return min(target_share, controller.target_share)
    if rate_control and 0.0 < target_share < 1.0:
        return min(1.0, controller.rate)
    return target_share


def id_unit(item_id: str) -> float:
    """A number in [0, 1) fixed by the id alone (a hash), so a retry or a second worker draws the same."""
    h = hashlib.blake2b(item_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64


def uncertainty(
    entropy: np.ndarray,
    margin: np.ndarray,
    kind: str = "margin",
    n_classes: int = 2,
    ids: Sequence[str] | None = None,
) -> np.ndarray:
    """Per-text uncertainty in [0, 1]: ``1 - margin`` (p1 - p2) or entropy normalised by log(n_classes).

    ``random`` ignores the model and draws a number per id (:func:`id_unit`): the router then sends the
    same share of texts, chosen at random. It is a control, to measure what routing by uncertainty buys
    on one's own stream (``bench/bench_service.py --methods random``), not a way to run the service.
    """
    if kind == "margin":
        return np.clip(1.0 - np.asarray(margin, dtype=np.float64), 0.0, 1.0)
    if kind == "entropy":
        return np.clip(np.asarray(entropy, dtype=np.float64) / np.log(max(n_classes, 2)), 0.0, 1.0)
    if kind == "random":
        if ids is None or len(ids) != len(np.asarray(margin)):
            raise ValueError("uncertainty kind 'random' needs one id per text")
        return np.array([id_unit(i) for i in ids], dtype=np.float64)
    raise ValueError(f"unknown uncertainty kind {kind!r}; use 'margin', 'entropy' or 'random'")


class AdaptiveRouter:
    """Keeps the routed share near ``target``; most uncertain first.

    ``route(u)`` returns a boolean mask over the batch. ``target=0`` never routes, ``target=1`` always.
    """

    def __init__(self, target: float = 0.1, window: int = 2000, max_burst: float = 20.0) -> None:
        if not 0.0 <= target <= 1.0:
            raise ValueError(f"target share must be within [0, 1], got {target}")
        self.target = float(target)
        self.max_burst = float(max_burst)
        self._ring = np.zeros(int(window), dtype=np.float64)
        self._filled = 0
        self._pos = 0
        self.credit = 1.0 if target > 0 else 0.0  # the very first uncertain text may go at once
        self.seen = 0
        self.routed = 0

    @property
    def threshold(self) -> float:
        """The current uncertainty threshold (the ``1 - target`` quantile of the recent window)."""
        if self._filled == 0 or self.target >= 1.0:
            return 0.0
        return float(np.quantile(self._ring[: self._filled], 1.0 - self.target))

    @property
    def share(self) -> float:
        """Share of all texts seen so far that were routed."""
        return self.routed / self.seen if self.seen else 0.0

    def _remember(self, u: np.ndarray) -> None:
        n = len(self._ring)
        u = u[-n:]
        idx = (self._pos + np.arange(len(u))) % n
        self._ring[idx] = u
        self._pos = int((self._pos + len(u)) % n)
        self._filled = min(n, self._filled + len(u))

    def route(self, u: np.ndarray, eligible: np.ndarray | None = None) -> np.ndarray:
        """Mask of the texts in this batch to send to the judge.

        ``eligible`` (optional mask) limits routing to some texts, e.g. not the ones the model already
        calls out of scope.
        """
        u = np.asarray(u, dtype=np.float64)
        mask = np.zeros(len(u), dtype=bool)
        if len(u) == 0:
            return mask
        self._remember(u)
        self.seen += len(u)
        if self.target <= 0.0:
            return mask
        if self.target >= 1.0:
            mask[:] = True if eligible is None else eligible
            self.routed += int(mask.sum())
            return mask
        # max_burst bounds what quiet times pile up, never one batch's own share (with cheap, batched
        # judge calls the target can exceed max_burst / batch size: 0.4 x 64 texts > 20)
        gain = self.target * len(u)
        self.credit = min(self.credit + gain, max(self.max_burst, gain))
        ok = np.ones(len(u), dtype=bool) if eligible is None else np.asarray(eligible, dtype=bool)
        above = (u > self.threshold) & ok
        # within the credit, above-threshold texts go first, most uncertain first; when the stream gets
        # easier the quantile lags and credit piles up: spend the surplus on the next most uncertain
        surplus = max(0, int(self.credit - self.max_burst / 2))
        k = min(int(above.sum()) + surplus, int(self.credit), int(ok.sum()))
        if k > 0:
            order = np.lexsort((-u, ~above))  # above-threshold first, then by uncertainty, descending
            order = order[ok[order]]
            mask[order[:k]] = True
            self.credit -= k
            self.routed += k
        return mask
