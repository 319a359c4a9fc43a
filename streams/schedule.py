"""Where refits and re-formings fall in the learning log: pure functions of the records and the counts,
so that every worker refits and re-forms at the same records however its polls cut the log."""

from __future__ import annotations

import numpy as np

__all__ = ["refit_cuts", "trigger_points"]


def trigger_points(valid: np.ndarray, counted: int, every: int) -> list[int]:
    """Ends (exclusive) of the records of a batch after which the count of valid examples, ``counted``
    before it, reaches a multiple of ``every`` (0: never)."""
    if not every or len(valid) == 0:
        return []
    cum = counted + np.cumsum(valid.astype(np.int64))
    return [int(i) + 1 for i in np.flatnonzero((cum % every == 0) & valid & (cum > 0))]


def refit_cuts(valid: np.ndarray, counted: int, every: int, *more: tuple[int, int]) -> list[tuple[int, int]]:
    """Cut a batch into pieces so that a refit (or a re-forming: more ``(counted, every)`` schedules)
    falls right after the record that makes the count of valid examples reach ``every``: the points are
    then positions in the log, the same however the log happens to be batched."""
    n = len(valid)
    ends = set(trigger_points(valid, counted, every))
    for c, e in more:
        ends.update(trigger_points(valid, c, e))
    if not ends or n == 0:
        return [(0, n)]
    cuts, lo = [], 0
    for hi in sorted(ends):
        cuts.append((lo, hi))
        lo = hi
    if lo < n:
        cuts.append((lo, n))
    return cuts
