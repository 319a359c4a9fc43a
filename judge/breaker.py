"""A small circuit breaker: after N consecutive failed calls, fail fast for a while, then probe once.

States: ``closed`` (calls pass), ``open`` (calls refused until ``reset_s`` has passed), ``half_open`` (one
probe call is let through; success closes the circuit, failure opens it again). Failing fast matters for a
stream: while the endpoint is down, items are parked at once instead of each waiting out its retries.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

__all__ = ["BreakerState", "CircuitBreaker"]

BreakerState = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """Counts consecutive failures; not thread-safe (one asyncio loop owns it)."""

    def __init__(self, failures: int, reset_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = failures
        self.reset_s = reset_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False
        self.opened_count = 0

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at >= self.reset_s:
            return "half_open"
        return "open"

    def retry_after(self) -> float:
        """Seconds until a probe will be let through (0 when closed)."""
        if self._opened_at is None:
            return 0.0
        return max(0.0, self.reset_s - (self._clock() - self._opened_at))

    def allow(self) -> bool:
        """May a call go out now? In half-open, only one probe at a time is allowed."""
        state = self.state
        if state == "closed":
            return True
        if state == "open" or self._probing:
            return False
        self._probing = True
        return True

    def record_success(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._probing = False

    def record_failure(self) -> None:
        self._failures += 1
        if self._probing:  # the half-open probe failed: open again for another reset_s
            self._probing = False
            self._opened_at = self._clock()
            self.opened_count += 1
        elif self._opened_at is None and self._failures >= self.threshold:
            self._opened_at = self._clock()
            self.opened_count += 1

    def release_probe(self) -> None:
        """A probe ended without telling us anything about the endpoint (e.g. cancelled): let another go."""
        self._probing = False
