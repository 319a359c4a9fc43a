"""A small circuit breaker: after N consecutive failed calls, fail fast for a while, then probe once.

States: ``closed`` (calls pass), ``open`` (calls refused until ``reset_s`` has passed), ``half_open`` (one
probe call is let through; success closes the circuit, failure opens it again). Failing fast matters for a
stream: while the endpoint is down, items are parked at once instead of each waiting out its retries.

A probe that ends without an answer either way must be released (``release_probe(probe_id)``), or no other
probe would ever go out; as a last resort a probe out longer than ``probe_timeout_s`` is given up on and the
next call probes instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

__all__ = ["BreakerState", "CircuitBreaker"]

BreakerState = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """Counts consecutive failures; not thread-safe (one asyncio loop owns it)."""

    def __init__(
        self,
        failures: int,
        reset_s: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        probe_timeout_s: float | None = None,
        probe_wait_s: float = 1.0,
    ) -> None:
        self.threshold = failures
        self.reset_s = reset_s
        #: a probe out longer than this is taken as lost (None: wait for it, however long)
        self.probe_timeout_s = probe_timeout_s
        #: what :meth:`retry_after` tells callers refused while a probe is out (its end is not known)
        self.probe_wait_s = probe_wait_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False
        self._probe_id = 0
        self._probe_since = 0.0
        self.opened_count = 0

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at >= self.reset_s:
            return "half_open"
        return "open"

    @property
    def probe_id(self) -> int:
        """The id of the latest probe let through: its caller passes it to :meth:`release_probe`."""
        return self._probe_id

    def retry_after(self) -> float:
        """Seconds until a call may be let through: 0 when closed, the rest of the open time, and at least
        ``probe_wait_s`` while a probe is out (told 0, a refused caller would come straight back)."""
        if self._opened_at is None:
            return 0.0
        wait = max(0.0, self.reset_s - (self._clock() - self._opened_at))
        return max(wait, self.probe_wait_s) if self._probing else wait

    def allow(self) -> bool:
        """May a call go out now? In half-open, only one probe at a time is allowed (a new one once the
        probe out is older than ``probe_timeout_s``); a call let through in half-open is the probe."""
        state = self.state
        if state == "closed":
            return True
        if state == "open":
            return False
        now = self._clock()
        if self._probing and (self.probe_timeout_s is None or now - self._probe_since < self.probe_timeout_s):
            return False
        self._probing = True
        self._probe_id += 1
        self._probe_since = now
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

    def release_probe(self, probe_id: int) -> None:
        """Probe ``probe_id`` ended without telling us anything about the endpoint (e.g. cancelled, 429): let
        another go. A call that was not the probe out (or one given up on) releases nothing."""
        if probe_id == self._probe_id:
            self._probing = False
