"""The judge path without Kafka: a ``judge-requests`` record -> a ``JudgeOutcome``, waiting out outages.

The judge (``driftlabel.judge.Judge``, an OpenAI-compatible endpoint behind retries, a circuit breaker and
a budget) may be unavailable for minutes. An item must then wait, not be accepted unjudged and not be
dropped: :class:`JudgeCaller` retries with exponential backoff while the judge says "unavailable" or
"over budget", and gives up (``unresolved``, so a human decides) only after repeated *other* errors.
The agent in :mod:`~driftlabel.streams.worker` only publishes what comes back.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

from driftlabel.judge import Candidate, Judge, JudgeOutcome, JudgeRequest, JudgeSettings
from driftlabel.judge.errors import BudgetExceededError, JudgeUnavailableError
from driftlabel.streams.errors import InvalidMessageError
from driftlabel.streams.messages import JudgeRequestMessage
from driftlabel.streams.ports import JudgeClient

__all__ = ["JudgeCaller", "parse_judge_request", "to_judge_request"]

log = logging.getLogger(__name__)


def parse_judge_request(raw: bytes | None) -> JudgeRequestMessage:
    """Parse one ``judge-requests`` record; raises :class:`InvalidMessageError` (-> dead-letter)."""
    try:
        req = JudgeRequestMessage.from_data(json.loads(raw if raw is not None else b"null"))
    except InvalidMessageError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
        raise InvalidMessageError("invalid_value", repr(exc)[:500]) from exc
    if not req.candidates or not req.text:
        raise InvalidMessageError("missing_field", "a judge request needs a text and candidates")
    # faust's from_data does not check types: a forged record must be refused here, not fail later
    candidates_ok = isinstance(req.candidates, list) and all(
        isinstance(c, dict) and isinstance(c.get("label"), str) for c in req.candidates
    )
    if not (isinstance(req.id, str) and isinstance(req.text, str) and candidates_ok):
        raise InvalidMessageError("wrong_type", "id and text must be strings; candidates, labelled objects")
    return req


def to_judge_request(req: JudgeRequestMessage) -> JudgeRequest:
    """The judge's own request type from the topic's message."""
    return JudgeRequest(
        id=req.id,
        text=req.text,
        candidates=[
            Candidate(
                label=c["label"],
                probability=float(c.get("probability", 0.0)),
                description=c.get("description"),
                examples=c.get("examples") or (),
            )
            for c in req.candidates
        ],
    )


class JudgeCaller:
    """Calls the judge for one item until it answers; counts waits in metrics via callbacks."""

    def __init__(
        self,
        settings: JudgeSettings | None = None,
        judge: JudgeClient | None = None,
        *,
        retry_s: float = 1.0,
        retry_max_s: float = 30.0,
        max_failures: int = 3,
        on_unavailable: Callable[[str], None] | None = None,
        in_flight: Callable[[int], None] | None = None,
    ) -> None:
        self.settings = settings
        self._judge = judge
        self.retry_s = retry_s
        self.retry_max_s = retry_max_s
        self.max_failures = max_failures
        self.on_unavailable = on_unavailable
        self.in_flight = in_flight

    @property
    def judge(self) -> JudgeClient:
        """The judge client, built on first use (the worker may never route anything)."""
        if self._judge is None:
            self._judge = Judge(self.settings or JudgeSettings())
        return self._judge

    def tokens_spent(self) -> int | None:
        """Every token the judge's endpoint reported so far (verdicts, answers it could not use, naming
        and example-generating calls), or None for a judge that keeps no tally (a test's fake)."""
        if self._judge is None:
            return 0
        tokens = getattr(getattr(self._judge, "stats", None), "tokens", None)  # Judge.stats: a property
        return int(tokens) if tokens is not None else None

    @property
    def n_examples(self) -> int:
        """Known-good examples per candidate the judge wants to see."""
        return int(self.settings.n_examples) if self.settings is not None else 6

    async def __call__(self, req: JudgeRequestMessage) -> JudgeOutcome:
        """The outcome of one item; waits (with backoff) while the judge is unavailable."""
        request = to_judge_request(req)
        delay = self.retry_s
        failures = 0
        while True:
            if self.in_flight is not None:
                self.in_flight(+1)
            try:
                return await self.judge.judge(request)
            except (JudgeUnavailableError, BudgetExceededError) as exc:
                reason = "budget" if isinstance(exc, BudgetExceededError) else "circuit_open"
                if self.on_unavailable is not None:
                    self.on_unavailable(reason)
                log.warning("judge unavailable (%s); item %s waits %.1fs and is retried", exc, req.id, delay)
            except Exception as exc:  # a broken answer or a bug: retry a few times, then a human decides
                failures += 1
                log.exception("judging %s failed (%d)", req.id, failures)
                if failures >= self.max_failures:
                    return JudgeOutcome(
                        id=req.id, status="unresolved", label=None, verdicts=[],
                        reason=f"judge error: {exc!r}",
                    )  # fmt: skip
            finally:
                if self.in_flight is not None:
                    self.in_flight(-1)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.retry_max_s)

    async def aclose(self) -> None:
        if self._judge is not None:
            try:
                await self._judge.aclose()
            except Exception:
                log.exception("closing the judge failed")
