"""What an agent does when the broker fails under it: retry what is safe to repeat, else stop at once.

faust acknowledges a batch's records when the agent's body leaves, *also when it raised*, restarts the
agent past them, and commits those offsets: an exception escaping an agent loses its records (no label,
no dead letter). So the agents never let a broker failure escape:

- before the first output of a record is published, every step is safe to repeat (reading the
  ledgers, moving a text to its home partition, a dead letter, which the ledger keeps to one): it is
  retried with backoff until it works (:func:`retry_until`);
- once outputs are out (a final label claimed, a verdict written), repeating the step could double them
  and giving up would lose the rest: the process exits at once (:func:`fail_stop`), exactly as ``kill
  -9`` would. The chaos suite shows that loses nothing: the batch's offsets are not committed, a
  restart reads it again, and the final-label ledger writes each missing output once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from typing import NoReturn, TypeVar

from aiokafka.errors import MessageSizeTooLargeError

__all__ = ["FAIL_STOP_EXIT_CODE", "PERMANENT_ERRORS", "fail_stop", "retry_until"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: the worker's exit status after :func:`fail_stop` (EX_SOFTWARE): a supervisor restarts it
FAIL_STOP_EXIT_CODE = 70
#: errors that repeating cannot mend: the caller dead-letters the record instead
PERMANENT_ERRORS: tuple[type[BaseException], ...] = (MessageSizeTooLargeError,)


def fail_stop(what: str, exc: BaseException) -> NoReturn:
    """Exit the process now, without committing offsets or a checkpoint (what ``kill -9`` does)."""
    log.critical(
        "%s failed after its outputs began to be published (%r): the worker exits now, as kill -9 "
        "would, so the records' offsets stay uncommitted; restart it (a supervisor does) and it reads "
        "them again and writes only the outputs that are missing",
        what,
        exc,
        exc_info=exc,
    )
    print(f"driftlabel worker: {what} failed ({exc!r}); exiting for a restart", file=sys.stderr, flush=True)
    logging.shutdown()
    os._exit(FAIL_STOP_EXIT_CODE)


async def retry_until(
    what: str,
    step: Callable[[], Awaitable[T]],
    *,
    stopping: Callable[[], bool],
    on_fatal: Callable[[str, BaseException], NoReturn] = fail_stop,
    first_wait_s: float = 0.5,
    max_wait_s: float = 10.0,
) -> T:
    """``await step()`` until it returns, waiting ``first_wait_s``, doubling up to ``max_wait_s``.

    Errors in :data:`PERMANENT_ERRORS` are raised to the caller. If the worker stops meanwhile
    (``stopping()``), raising would let faust commit the records: ``on_fatal`` ends the process instead.
    """
    wait = first_wait_s
    attempt = 0
    while True:
        try:
            return await step()
        except asyncio.CancelledError:
            raise
        except PERMANENT_ERRORS:
            raise
        except Exception as exc:
            attempt += 1
            if stopping():
                on_fatal(what, exc)
            log.warning("%s failed (%r, attempt %d); retrying in %.1fs", what, exc, attempt, wait)
            await asyncio.sleep(wait)
            wait = min(wait * 2, max_wait_s)
