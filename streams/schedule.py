"""Where refits and re-formings fall in the learning log: pure functions of the records and the counts,
so that every worker refits and re-forms at the same records however its polls cut the log."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = ["Op", "plan_step", "refit_cuts", "trigger_points"]


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


@dataclass(frozen=True)
class Op:
    """One change of a learning step: ``observe`` or ``learn`` records ``[lo, hi)``, or a ``refit`` or a
    ``reform`` (copy the model and re-form the copy) right after the records before it."""

    kind: Literal["observe", "learn", "refit", "reform"]
    lo: int = 0
    hi: int = 0


def plan_step(
    unlabelled: np.ndarray,
    valid: np.ndarray,
    since_refit: int,
    refit_every: int,
    since_reform: int,
    reform_every: int,
) -> list[Op]:
    """The changes that learning a step of records makes, in log order: runs of unlabelled (``stream``)
    records are observed, runs of labelled ones learned, cut so that a refit or a re-forming falls right
    after the record whose valid example reaches its schedule (``since_*``: valid examples counted before
    the step). One plan, whether the step is applied to the live model or to a copy of it."""
    ops: list[Op] = []
    n, lo = len(valid), 0
    while lo < n:
        hi = lo + 1
        while hi < n and unlabelled[hi] == unlabelled[lo]:
            hi += 1
        if unlabelled[lo]:
            ops.append(Op("observe", lo, hi))
        else:
            run = valid[lo:hi]
            for a, b in refit_cuts(run, since_refit, refit_every, (since_reform, reform_every)):
                ops.append(Op("learn", lo + a, lo + b))
                n_valid = int(run[a:b].sum())
                since_refit += n_valid
                since_reform += n_valid
                if refit_every and since_refit >= refit_every:
                    ops.append(Op("refit"))
                    since_refit = 0
                if reform_every and since_reform >= reform_every:
                    ops.append(Op("reform"))
                    since_reform = 0
        lo = hi
    return ops
