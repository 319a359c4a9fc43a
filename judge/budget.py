"""Call budget: at most N calls to the endpoint in any rolling 60 s window."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from driftlabel.judge.errors import BudgetExceededError

__all__ = ["RateBudget"]


class RateBudget:
    """A sliding-window counter; ``limit=0`` means unlimited. One asyncio loop owns it."""

    def __init__(
        self, limit: int, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._stamps: deque[float] = deque()
        self.rejected = 0

    def _trim(self, now: float) -> None:
        while self._stamps and now - self._stamps[0] >= self.window_s:
            self._stamps.popleft()

    def used(self) -> int:
        self._trim(self._clock())
        return len(self._stamps)

    def take(self) -> None:
        """Spend one call, or raise :class:`BudgetExceededError` saying when the next one frees up."""
        if self.limit <= 0:
            return
        now = self._clock()
        self._trim(now)
        if len(self._stamps) >= self.limit:
            self.rejected += 1
            retry = self.window_s - (now - self._stamps[0])
            raise BudgetExceededError(
                f"judge budget of {self.limit} calls per minute is spent; keep the item and retry in "
                f"{retry:.1f}s, or raise DRIFTLABEL_JUDGE_MAX_CALLS_PER_MINUTE",
                retry_after_s=retry,
            )
        self._stamps.append(now)
