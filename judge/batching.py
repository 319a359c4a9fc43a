"""Collecting concurrent requests into batch calls (``judge.batch_size``).

The judge answers several items' questions in one endpoint call: choices (``question = "choose"``) and the
yes/no cross-checks of unlikely picks (``verify_below``). A :class:`Batcher` holds what callers submit and
hands it to its ``run`` coroutine in batches of at most ``size``: a batch leaves when it is full, or
``wait_ms`` after its first entry arrived, whichever comes first. Each caller waits for its own result.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["Batcher"]

P = TypeVar("P")
R = TypeVar("R")


@dataclass
class _Waiting(Generic[P, R]):
    payload: P
    future: asyncio.Future[R]


class Batcher(Generic[P, R]):
    """Runs submitted payloads in batches; ``run`` returns one result (or exception) per payload, in order.

    An exception raised by ``run`` itself reaches every caller of that batch (so each keeps its item and
    retries); a cancelled caller is left out of the batch it had not yet joined.
    """

    def __init__(
        self,
        size: int,
        wait_ms: float,
        run: Callable[[list[P]], Awaitable[list[R | BaseException]]],
        *,
        closed: Callable[[], Exception],
    ) -> None:
        self.size = size
        self.wait_ms = wait_ms
        self._run = run
        self._closed = closed
        self._pending: list[_Waiting[P, R]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def pending(self) -> int:
        """Payloads waiting for their batch to leave."""
        return len(self._pending)

    async def submit(self, payload: P) -> R:
        """Queue ``payload`` for the next batch and wait for its result."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[R] = loop.create_future()
        self._pending.append(_Waiting(payload, fut))
        if len(self._pending) >= self.size:
            self.flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.wait_ms / 1000.0, self.flush)
        return await fut  # a cancelled waiter cancels its future; the batch skips it

    def flush(self) -> None:
        """Send what is pending, in batches of at most ``size`` (called by the timer or when full)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._pending:
            batch = [w for w in self._pending[: self.size] if not w.future.done()]
            del self._pending[: self.size]
            if batch:
                task = asyncio.get_running_loop().create_task(self._send(batch))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        """Stop: waiting callers hear ``closed()`` (so they keep their items), batches under way are
        cancelled and their callers hear the same."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._fail(self._pending, self._closed())
        self._pending.clear()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _send(self, batch: list[_Waiting[P, R]]) -> None:
        try:
            results = await self._run([w.payload for w in batch])
        except asyncio.CancelledError:  # aclose(): a future cannot hold a cancellation; keep the items
            self._fail(batch, self._closed())
            raise
        except Exception as exc:  # the call could not be made: every caller hears why (and retries)
            self._fail(batch, exc)
            return
        for w, result in zip(batch, results, strict=True):
            if w.future.done():
                continue
            if isinstance(result, BaseException):
                w.future.set_exception(result)
            else:
                w.future.set_result(result)

    @staticmethod
    def _fail(batch: list[_Waiting[P, R]], exc: Exception) -> None:
        for w in batch:
            if not w.future.done():
                w.future.set_exception(exc)
