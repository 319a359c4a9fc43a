"""The LLM judge: binary validation of ranked candidates with recursive delegation (R.E.D. step 3).

For an uncertain item the judge asks, candidate by candidate (best first, at most ``max_depth``), the binary
question "is label L valid for this text?", showing L's description and the ``c`` known-good examples the
caller picked. The first yes ends the item (``validated`` at depth 1, ``corrected`` deeper); no yes means
``unresolved``. Every answer is kept as a :class:`Verdict`; the no's are hard negatives.

Transport is the ``openai`` async client against any OpenAI-compatible endpoint with its own retries
switched off: this module retries 429/5xx/timeouts itself (exponential backoff with jitter, bounded), so
every attempt is counted, budgeted and visible to the circuit breaker. While the circuit is open, or the
per-minute budget is spent, :meth:`Judge.judge` raises at once and the caller parks the item: nothing is
lost and nothing is accepted without a clear yes.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from itertools import pairwise
from typing import Any, TypeVar

import openai
from openai import AsyncOpenAI

from driftlabel.judge.batching import Batcher
from driftlabel.judge.breaker import BreakerState, CircuitBreaker
from driftlabel.judge.budget import RateBudget
from driftlabel.judge.cache import CachedAnswer, VerdictCache, cache_key
from driftlabel.judge.descriptions import load_descriptions
from driftlabel.judge.errors import (
    BudgetExceededError,
    JudgeDataError,
    JudgeUnavailableError,
    KnownClassProposedError,
    MalformedAnswerError,
)
from driftlabel.judge.parse import (
    clean_description,
    confidence_from_logprobs,
    normalise_label_name,
    parse_choice,
    parse_choices,
    parse_examples,
    parse_proposal,
    parse_verdict,
    parse_verdicts,
)
from driftlabel.judge.prompts import (
    BATCH_CHOICE_SCHEMA,
    CHOICE_SCHEMA,
    EXAMPLES_SCHEMA,
    PROPOSAL_SCHEMA,
    VERDICTS_SCHEMA,
    build_choose_batch_messages,
    build_choose_messages,
    build_describe_messages,
    build_generate_messages,
    build_propose_messages,
    build_validate_batch_messages,
    build_validate_messages,
    json_response_format,
    response_format_for,
)
from driftlabel.judge.records import Candidate, JudgeOutcome, JudgeRequest, Verdict
from driftlabel.judge.settings import JudgeSettings, load_judge_settings

__all__ = ["Judge", "JudgeStats"]

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class JudgeStats:
    """A snapshot of the judge's accounting since it was created (``Judge.stats``)."""

    calls: int
    retries: int
    failures: dict[str, int]
    malformed: int
    verdicts: int
    valid: int
    invalid: int
    cache_hits: int
    outcomes: dict[str, int]
    #: cross-checks of unlikely picks (``verify_below``): ``confirmed`` / ``refuted`` / ``no_answer``
    checks: dict[str, int]
    prompt_tokens: int
    completion_tokens: int
    tokens: int
    latency_ms_total: float
    latency_ms_max: float
    budget_rejections: int
    breaker_state: BreakerState
    breaker_opened: int
    in_flight: int
    waiting: int
    answer_format: str

    @property
    def tokens_per_verdict(self) -> float:
        """Tokens per verdict answered by the endpoint (cached ones excluded)."""
        paid = self.verdicts - self.cache_hits
        return self.tokens / paid if paid else 0.0

    @property
    def mean_latency_ms(self) -> float:
        return self.latency_ms_total / self.verdicts if self.verdicts else 0.0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tokens_per_verdict"] = self.tokens_per_verdict
        d["mean_latency_ms"] = self.mean_latency_ms
        return d


@dataclass
class _Counters:
    calls: int = 0
    retries: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    malformed: int = 0
    verdicts: int = 0
    valid: int = 0
    invalid: int = 0
    cache_hits: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    checks: Counter[str] = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tokens: int = 0
    latency_ms_total: float = 0.0
    latency_ms_max: float = 0.0


_FORMAT_ORDER = ("json_schema", "json_object", "text")  # strictest first
_FORMAT_FALLBACK = dict(pairwise(_FORMAT_ORDER))  # each to the next simpler


class _ItemBudgetSpent(Exception):
    """Internal: this item used up ``max_calls_per_item``."""


class _FormatRefused(Exception):
    """Internal: the endpoint rejected ``response_format`` (``sent``), or the call was not sent because
    another call's refusal of the same format is pending or confirmed (``sent`` False)."""

    def __init__(self, sent: bool = True) -> None:
        super().__init__()
        self.sent = sent


@dataclass
class _ItemCalls:
    """One item's calls: ``used`` counts its attempts against ``limit`` (``max_calls_per_item``);
    ``charged`` is what its outcome costs (``JudgeOutcome.calls``): every request sent for it, retries and
    malformed answers included, a batch call as its share, so a misbehaving endpoint does not look free to
    the rate controller."""

    limit: int
    used: int = 0
    charged: float = 0.0

    def take(self) -> None:
        if self.limit > 0 and self.used >= self.limit:
            raise _ItemBudgetSpent
        self.used += 1

    def give_back(self) -> None:
        """A call taken but not sent (its format was refused meanwhile) does not count."""
        self.used -= 1


@dataclass(frozen=True)
class _Check:
    """A yes/no question waiting for its batch call: is ``cand`` right for ``text``? What it costs is
    charged to ``tab``, its item's calls."""

    text: str
    cand: Candidate
    item_id: str
    depth: int
    tab: _ItemCalls = field(compare=False)


@dataclass
class _Answer:
    value: Any
    tokens: int
    confidence: float | None = None
    latency_ms: float = 0.0  # from the first attempt's send to the answer: retries count, queueing not


class Judge:
    """Validates uncertain predictions against an OpenAI-compatible LLM endpoint.

    One instance per process and event loop; share it between tasks (concurrency is bounded inside).
    Pass ``client`` to reuse an ``AsyncOpenAI`` (tests pass one built on an ``httpx.MockTransport``);
    its own retries are switched off either way.
    """

    def __init__(
        self,
        settings: JudgeSettings | None = None,
        client: AsyncOpenAI | None = None,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings if settings is not None else load_judge_settings()
        s = self.settings
        if client is None:
            self._client = AsyncOpenAI(
                base_url=s.base_url,
                api_key=s.api_key.get_secret_value(),
                timeout=s.timeout_s,
                max_retries=0,
            )
            self._owns_client = True
        else:
            self._client = client.with_options(max_retries=0, timeout=s.timeout_s)
            self._owns_client = False
        self._sem = asyncio.Semaphore(s.concurrency)
        # a probe that somehow never ends must not keep the circuit half-open for good: it may wait a
        # timeout for a concurrency slot and another for its answer
        self._breaker = CircuitBreaker(
            s.breaker_failures, s.breaker_reset_s, probe_timeout_s=2 * s.timeout_s + 1
        )
        self._budget = RateBudget(s.max_calls_per_minute)
        self._cache = VerdictCache(s.cache_size)
        self._rng = rng or random.Random()
        self._answer_format: str = s.answer_format
        #: formats the endpoint refused in a fallback that has not ended yet: a call queued with one is not
        #: sent (it would most likely be refused too). The fallback that saw the refusal settles it: its
        #: simpler format answered -> the answer format moves on; the item was refused in every format ->
        #: the item was the problem, and the format is tried again.
        self._pending_refusals: set[str] = set()
        self._descriptions: dict[str, str] = {}
        if s.descriptions_file:
            self.reload_descriptions()
        self._in_flight = 0
        self._waiting = 0
        self._c = _Counters()
        # batch_size > 1: items' choices, and the cross-checks of unlikely picks, share calls
        self._choices: Batcher[tuple[JudgeRequest, list[Candidate]], JudgeOutcome] = Batcher(
            s.batch_size, s.batch_wait_ms, self._choose_many, closed=_closed
        )
        self._checks: Batcher[_Check, Verdict] = Batcher(
            s.batch_size, s.batch_wait_ms, self._validate_many, closed=_closed
        )

    # ------------------------------------------------------------------ public surface

    @property
    def model(self) -> str:
        return self.settings.model

    @property
    def in_flight(self) -> int:
        """Calls to the endpoint under way right now."""
        return self._in_flight

    @property
    def waiting(self) -> int:
        """Calls queued for a concurrency slot (the judge's queue depth)."""
        return self._waiting

    @property
    def breaker_state(self) -> BreakerState:
        return self._breaker.state

    @property
    def cache(self) -> VerdictCache:
        return self._cache

    @property
    def descriptions(self) -> dict[str, str]:
        """Descriptions from ``descriptions_file``, used for candidates that come without one."""
        return dict(self._descriptions)

    def reload_descriptions(self) -> dict[str, str]:
        """Re-read ``descriptions_file`` after a user edited it; edited labels miss the cache from now on."""
        path = self.settings.descriptions_file
        self._descriptions = load_descriptions(path) if path else {}
        return self.descriptions

    @property
    def stats(self) -> JudgeStats:
        c = self._c
        return JudgeStats(
            calls=c.calls,
            retries=c.retries,
            failures=dict(c.failures),
            malformed=c.malformed,
            verdicts=c.verdicts,
            valid=c.valid,
            invalid=c.invalid,
            cache_hits=c.cache_hits,
            outcomes=dict(c.outcomes),
            checks=dict(c.checks),
            prompt_tokens=c.prompt_tokens,
            completion_tokens=c.completion_tokens,
            tokens=c.tokens,
            latency_ms_total=c.latency_ms_total,
            latency_ms_max=c.latency_ms_max,
            budget_rejections=self._budget.rejected,
            breaker_state=self._breaker.state,
            breaker_opened=self._breaker.opened_count,
            in_flight=self._in_flight,
            waiting=self._waiting,
            answer_format=self._answer_format,
        )

    async def judge(self, request: JudgeRequest) -> JudgeOutcome:
        """Recursive delegation over ``request.candidates`` (best first, at most ``max_depth``).

        Raises :class:`JudgeUnavailableError` / :class:`BudgetExceededError` when the endpoint cannot be
        asked now: keep the item and retry after ``exc.retry_after_s`` (verdicts already answered are
        cached, so the retry does not pay for them twice).
        """
        if not isinstance(request, JudgeRequest):
            raise JudgeDataError(f"judge() takes a JudgeRequest, got {type(request).__name__}")
        unique: dict[str, Candidate] = {}
        for cand in request.candidates:  # a label listed twice is asked once
            unique.setdefault(cand.label, cand)
        asked = list(unique.values())[: self.settings.max_depth]
        if self.settings.question == "choose":
            if self.settings.batch_size > 1:
                return await self._choices.submit((request, asked))
            return await self._choose(request, asked)
        return await self._recurse(request, asked)

    async def _recurse(self, request: JudgeRequest, asked: list[Candidate]) -> JudgeOutcome:
        """PRODUCT.md's recursion: one yes/no question per candidate, best first, until a yes. With
        ``batch_size > 1`` each question shares a call with up to ``batch_size - 1`` questions about other
        items (a rejected item's next question joins a later call) and is charged its share of it (a
        cached answer: nothing, and no wait). The outcome's ``calls`` holds every request sent for the
        item (retries and malformed answers included). A call that cannot be made raises, as
        :meth:`judge` documents; the answers already had are cached, so the retry pays only for the rest."""
        s = self.settings
        per_item = _ItemCalls(s.max_calls_per_item)
        batched = s.batch_size > 1
        verdicts: list[Verdict] = []

        for depth, cand in enumerate(asked, start=1):
            try:
                hit = self._cached(request.text, cand, request.id, depth) if batched else None
                if hit is not None:  # answered before: no call, and no wait for a batch
                    verdict = hit
                elif batched:
                    verdict = await self._checks.submit(
                        _Check(request.text, cand, request.id, depth, per_item)
                    )
                else:
                    verdict = await self._validate(
                        request.text, cand, item_id=request.id, depth=depth, calls=per_item
                    )
            except MalformedAnswerError as exc:
                return self._outcome(
                    request.id,
                    "unresolved",
                    None,
                    verdicts,
                    f"no usable answer about {cand.label!r} at depth {depth} ({exc}); send to human review",
                    per_item.charged,
                )
            except _ItemBudgetSpent:
                return self._outcome(
                    request.id,
                    "unresolved",
                    None,
                    verdicts,
                    f"per-item budget of {s.max_calls_per_item} calls spent before a yes (depth {depth}); "
                    "send to human review or raise DRIFTLABEL_JUDGE_MAX_CALLS_PER_ITEM",
                    per_item.charged,
                )
            verdicts.append(verdict)
            if verdict.valid:
                status = "validated" if depth == 1 else "corrected"
                return self._outcome(request.id, status, cand.label, verdicts, None, per_item.charged)
        return self._outcome(
            request.id,
            "unresolved",
            None,
            verdicts,
            f"the judge rejected all {len(asked)} candidate(s) asked (max_depth={s.max_depth})",
            per_item.charged,
        )

    async def validate(self, text: str, candidate: Candidate, *, item_id: str, depth: int = 1) -> Verdict:
        """One binary question: is ``candidate.label`` valid for ``text``?

        Raises :class:`MalformedAnswerError` when no usable yes/no came after the retries (never a yes),
        and the two "retry later" errors like :meth:`judge`.
        """
        if not isinstance(text, str) or not text.strip():
            raise JudgeDataError(f"item {item_id}: text must be a non-empty string")
        if not isinstance(candidate, Candidate):
            raise JudgeDataError(
                f"item {item_id}: candidate must be a Candidate, got {type(candidate).__name__}"
            )
        try:
            return await self._validate(text, candidate, item_id=item_id, depth=depth, calls=None)
        except _ItemBudgetSpent as exc:  # pragma: no cover - calls=None never limits
            raise AssertionError("unreachable") from exc

    async def describe_label(self, label: str, examples: Sequence[str]) -> str:
        """Ask the LLM for a one-sentence description of ``label`` from its name and examples."""
        if not isinstance(label, str) or not label.strip():
            raise JudgeDataError(f"label must be a non-empty string, got {label!r}")
        exs = [str(e) for e in examples][: max(self.settings.n_examples, 1) * 2]
        messages = build_describe_messages(label, exs)

        def parse(resp: Any) -> _Answer:
            return _Answer(clean_description(_content(resp)), _total_tokens(resp))

        answer = await self._call(
            messages,
            parse,
            response_format=None,
            max_tokens=self.settings.max_description_tokens,
            logprobs=False,
            calls=None,
            what=f"description of {label!r}",
        )
        return str(answer.value)

    async def generate_examples(
        self, label: str, description: str | None, n: int, *, known: Sequence[str] = ()
    ) -> list[str]:
        """Ask the endpoint for ``n`` synthetic example texts of a class known only by name and description.

        For ``add_class`` with a description and no examples: the caller marks the texts as synthetic and
        replaces them as real accepted ones arrive. The answer must be strict JSON
        ``{"examples": [str, ...]}``; texts are stripped and deduplicated (case and spacing ignored, and
        against ``known``). When an answer brings fewer than ``n`` new texts the endpoint is asked again (at
        most twice more) for different ones, so the result holds 1 to ``n`` texts. ``known`` (e.g. the
        class's seed examples) is shown to the endpoint as texts to avoid. Raises
        :class:`MalformedAnswerError` when no usable example came, :class:`JudgeDataError` for bad
        arguments, and :class:`JudgeUnavailableError` / :class:`BudgetExceededError` like :meth:`judge`.
        """
        if not isinstance(label, str) or not label.strip():
            raise JudgeDataError(f"label must be a non-empty string, got {label!r}")
        if description is not None and not isinstance(description, str):
            raise JudgeDataError(f"description of {label!r} must be a string or None")
        limit = self.settings.max_generated_examples
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= limit:
            raise JudgeDataError(
                f"n must be an integer from 1 to {limit} (DRIFTLABEL_JUDGE_MAX_GENERATED_EXAMPLES), got {n!r}"
            )
        known_texts = [str(k) for k in known]
        got: list[str] = []
        for round_no in range(3):
            need = n - len(got)
            seen = [*got, *known_texts]
            # what it already has is shown as <avoid> (at most 200 texts), so the endpoint writes new ones
            messages = build_generate_messages(label, description, need, avoid=seen[:200])

            def parse(content: str | None, seen: list[str] = seen) -> list[str]:
                return parse_examples(content, label=label, known=seen)

            try:
                answer = await self._ask_json(
                    messages, EXAMPLES_SCHEMA, "examples", parse, what=f"examples of {label!r}"
                )
                new: list[str] = answer.value
            except MalformedAnswerError:
                if not got:
                    raise
                break  # a later round brought nothing new: keep what the first ones gave
            got.extend(new[:need])
            if len(got) >= n:
                break
            log.info("judge: %d/%d examples of %r after round %d; asking again", len(got), n, label, round_no)
        return got

    async def propose_class(self, texts: Sequence[str], known_labels: Sequence[str] = ()) -> tuple[str, str]:
        """Ask the endpoint to name a dense group of texts that no known class covers.

        Returns ``(name, description)``, the name normalised to snake_case. Pass the group's most typical
        texts (at most 30 are shown) and the known labels, which the endpoint is told not to propose;
        when it names one anyway, :class:`KnownClassProposedError` (a :class:`MalformedAnswerError`) says
        which (``exc.label``): the group is then more likely drifted wording of that class.
        """
        if isinstance(texts, str) or not texts:
            raise JudgeDataError("propose_class needs a non-empty sequence of texts")
        shown = [str(t) for t in texts if isinstance(t, str) and t.strip()][:30]
        if not shown:
            raise JudgeDataError("propose_class needs at least one non-empty text")
        known = [str(k) for k in known_labels]
        messages = build_propose_messages(shown, known)
        answer = await self._ask_json(
            messages, PROPOSAL_SCHEMA, "proposal", parse_proposal, what=f"a class for {len(shown)} texts"
        )
        name, description = answer.value
        by_norm = {normalise_label_name(k): k for k in known}
        if name in by_norm:
            raise KnownClassProposedError(
                f"the endpoint named the known class {by_norm[name]!r} for a group no known class was said "
                "to cover; teach those texts to that class rather than adding a new one",
                label=by_norm[name],
            )
        return name, description

    async def aclose(self) -> None:
        """Stop batching (items still waiting hear that the judge is unavailable, so they are kept and
        retried) and close the HTTP client if this judge created it."""
        await self._choices.aclose()
        await self._checks.aclose()
        if self._owns_client:
            await self._client.close()

    async def __aenter__(self) -> Judge:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ internals

    async def _ask_json(
        self,
        messages: list[dict[str, str]],
        schema: dict[str, Any],
        name: str,
        parse_content: Callable[[str | None], T],
        *,
        what: str,
        max_tokens: int | None = None,
        calls: _ItemCalls | None = None,
    ) -> _Answer:
        """One JSON question under the current answer format, falling back to plainer formats if refused;
        the answer's ``value`` is what ``parse_content`` made of the reply (``max_tokens`` defaults to
        ``max_generation_tokens``)."""

        def parse(resp: Any) -> _Answer:
            return _Answer(parse_content(_content(resp)), _total_tokens(resp))

        async def ask(fmt: str) -> _Answer:
            return await self._call(
                messages,
                parse,
                response_format=json_response_format(name, schema, fmt),
                max_tokens=self.settings.max_generation_tokens if max_tokens is None else max_tokens,
                logprobs=False,
                calls=calls,
                what=what,
            )

        return await self._falling_back(ask)

    def _superseded(self, fmt: str) -> bool:
        """Is ``fmt`` refused (pending) or stricter than the answer format the endpoint was found to take?"""
        return fmt in self._pending_refusals or _FORMAT_ORDER.index(fmt) < _FORMAT_ORDER.index(
            self._answer_format
        )

    async def _falling_back(self, ask: Callable[[str], Awaitable[_Answer]]) -> _Answer:
        """``ask(fmt)`` from the current answer format down (json_schema -> json_object -> text; text sends no
        response_format, so it cannot be refused this way) until one is answered, and settle the refusals
        this question saw: answered in a simpler format, that format is used from now on; refused in
        every format (``MalformedAnswerError``), the item was the problem and the format is kept."""
        fmt = self._answer_format
        refused: list[str] = []
        try:
            while True:
                try:
                    answer = await ask(fmt)
                    break
                except _FormatRefused as exc:
                    if exc.sent:
                        refused.append(fmt)
                    fmt = _FORMAT_FALLBACK[fmt]
            if refused and _FORMAT_ORDER.index(fmt) > _FORMAT_ORDER.index(self._answer_format):
                log.warning(
                    "judge endpoint %s refused response_format=%s; using answer_format=%s from now on",
                    self.settings.endpoint,
                    refused[0],
                    fmt,
                )
                self._answer_format = fmt
            return answer
        finally:
            self._pending_refusals.difference_update(refused)

    def _outcome(
        self,
        item_id: str,
        status: Any,
        label: str | None,
        verdicts: list[Verdict],
        reason: str | None,
        calls: float | None = None,
        chosen: bool = False,
    ) -> JudgeOutcome:
        self._c.outcomes[status] += 1
        return JudgeOutcome(
            id=item_id,
            status=status,
            label=label,
            verdicts=verdicts,
            reason=reason,
            calls=calls,
            chosen=chosen,
        )

    async def _choose(
        self, request: JudgeRequest, asked: list[Candidate], *, shared_tokens: int = 0
    ) -> JudgeOutcome:
        """One question for all ``asked`` candidates (``question = "choose"``): the endpoint picks one or
        none. The pick is a valid verdict at its rank, every other candidate an invalid one (a hard
        negative), so the verdict log and the training records keep the validate mode's shape. Not
        cached: the answer depends on the whole candidate list. ``shared_tokens`` (an item asked again
        after a batch call left it out: its share of that call's tokens) is added to the pick's tokens."""
        s = self.settings
        shown = [(c.label, self._described(c), list(c.examples)[: s.n_examples]) for c in asked]
        messages = build_choose_messages(request.text, shown, max_text_chars=s.max_text_chars)
        per_item = _ItemCalls(s.max_calls_per_item)
        try:
            answer = await self._ask_json(
                messages,
                CHOICE_SCHEMA,
                "choice",
                lambda content: parse_choice(content, len(asked)),
                what=f"item {request.id}: a choice among {len(asked)} candidates",
                max_tokens=s.max_answer_tokens,
                calls=per_item,
            )
        except MalformedAnswerError as exc:
            return self._outcome(
                request.id,
                "unresolved",
                None,
                [],
                f"no usable choice ({exc}); send to human review",
                per_item.charged,
                True,
            )
        except _ItemBudgetSpent:
            return self._outcome(
                request.id,
                "unresolved",
                None,
                [],
                f"per-item budget of {s.max_calls_per_item} calls spent before a usable choice; send to "
                "human review or raise DRIFTLABEL_JUDGE_MAX_CALLS_PER_ITEM",
                per_item.charged,
                True,
            )
        return await self._chosen(
            request,
            asked,
            int(answer.value),
            answer.latency_ms,
            answer.tokens + shared_tokens,
            per_item.charged,
        )

    async def _cross_check(
        self, request: JudgeRequest, asked: list[Candidate], outcome: JudgeOutcome
    ) -> JudgeOutcome:
        """Ask a pick the experts found unlikely again, as a yes/no question: one whose probability is
        below ``verify_below`` x the probability of the experts' favourite among the candidates.

        A wrong choice is most often a plausible candidate the experts ranked well below their favourite;
        where a second, differently phrased question errs independently of the first (the simulated
        expert's do; a real LLM's will only in part), it catches most of them (docs/judge.md).
        A yes keeps the outcome (one call more); a no makes it ``unresolved`` and leaves only that no to
        learn. A check that gets no usable answer leaves the choice as it was; one that
        cannot be asked now (circuit open, budget spent) raises like any call, so the item is kept and
        asked again whole (no pick is learned unchecked while the setting is on).
        """
        s = self.settings
        if s.verify_below <= 0 or outcome.label is None:
            return outcome
        depth, cand = next((d, c) for d, c in enumerate(asked, start=1) if c.label == outcome.label)
        favourite = max(c.probability for c in asked)
        if not cand.probability < s.verify_below * favourite:
            return outcome
        tab = _ItemCalls(s.max_calls_per_item)  # what the check costs (a cached answer: nothing)
        try:
            hit = self._cached(request.text, cand, request.id, depth)
            if hit is not None:  # answered before: no call, and no wait for a batch
                check = hit
            elif s.batch_size > 1:  # asked with other items' checks, in one call
                check = await self._checks.submit(_Check(request.text, cand, request.id, depth, tab))
            else:
                check = await self._validate(request.text, cand, item_id=request.id, depth=depth, calls=tab)
        except (MalformedAnswerError, _ItemBudgetSpent) as exc:
            self._c.checks["no_answer"] += 1
            log.warning("judge: no usable cross-check of item %s's pick %r (%s); the choice stands",
                        request.id, cand.label, exc)  # fmt: skip
            return replace(outcome, calls=(outcome.calls or 0.0) + tab.charged)
        calls = (outcome.calls or 0.0) + tab.charged
        verdicts = [*outcome.verdicts, check]
        if check.valid:
            self._c.checks["confirmed"] += 1
            return replace(outcome, verdicts=verdicts, calls=calls, check=check)
        self._c.checks["refuted"] += 1
        return replace(
            outcome,
            status="unresolved",
            label=None,
            verdicts=verdicts,
            reason=f"the judge chose {cand.label!r} (experts' probability {cand.probability:.3f}, below "
            f"verify_below {s.verify_below} x their favourite's {favourite:.3f}) but said no when asked "
            "about it alone; send to human review",
            calls=calls,
            check=check,
        )

    async def _chosen(
        self,
        request: JudgeRequest,
        asked: list[Candidate],
        pick: int,
        latency_ms: float,
        tokens: int,
        calls: float,
    ) -> JudgeOutcome:
        """The outcome of a choice: the pick is a valid verdict at its rank, every other candidate an
        invalid one; all verdicts carry the answer's latency, the first its tokens (paid once). An unlikely
        pick is cross-checked first (:meth:`_cross_check`); the outcome is counted once, as it ends."""
        s = self.settings
        verdicts = [
            self._record(
                Verdict(
                    request.id,
                    cand.label,
                    depth == pick,
                    depth,
                    s.model,
                    latency_ms,
                    tokens if depth == 1 else 0,
                )
            )
            for depth, cand in enumerate(asked, start=1)
        ]
        if pick == 0:
            return self._outcome(
                request.id,
                "unresolved",
                None,
                verdicts,
                f"the judge chose none of the {len(asked)} candidate(s) shown; send to human review",
                calls,
                True,
            )
        status = "validated" if pick == 1 else "corrected"
        picked = JudgeOutcome(request.id, status, asked[pick - 1].label, verdicts, calls=calls, chosen=True)
        out = await self._cross_check(request, asked, picked)
        self._c.outcomes[out.status] += 1
        return out

    # -- batches: several items' questions in one call (judge.batch_size) --------------------------------

    async def _choose_many(
        self, items: list[tuple[JudgeRequest, list[Candidate]]]
    ) -> list[JudgeOutcome | BaseException]:
        """One call for all ``items``; each outcome is charged ``1/len(items)`` of the requests that call
        took (retries included) and its share of the tokens. An item the answer leaves out (or answers
        twice, differently) is asked again alone, and charged that call besides its share."""
        s = self.settings
        if len(items) == 1:
            return [await self._choose(*items[0])]
        labels = self._shown_labels(c for _request, asked in items for c in asked)
        messages = build_choose_batch_messages(
            [(r.text, [c.label for c in asked]) for r, asked in items],
            labels,
            max_text_chars=s.max_text_chars,
        )
        k = len(items)
        batch = _ItemCalls(s.max_calls_per_item)
        picks: dict[int, int] = {}
        latency_ms, tokens, why = 0.0, 0, ""
        try:
            answer = await self._ask_json(
                messages,
                BATCH_CHOICE_SCHEMA,
                "choices",
                lambda content: parse_choices(content, [len(asked) for _r, asked in items]),
                what=f"a batch of {k} items (a choice each)",
                max_tokens=s.max_answer_tokens * k + 16,
                calls=batch,
            )
            picks, latency_ms, tokens = answer.value, answer.latency_ms, answer.tokens
        except MalformedAnswerError as exc:
            why = str(exc)
        except _ItemBudgetSpent:
            why = f"per-item budget of {s.max_calls_per_item} calls spent"
        share = batch.charged / k
        alone = [i for i in range(k) if i + 1 not in picks]
        if alone:
            log.warning(
                "judge: the batch answer gave no usable choice for %d of %d items%s; asking them alone",
                len(alone),
                k,
                f" ({why})" if why else "",
            )

        def settle(i: int) -> Awaitable[JudgeOutcome]:
            tok = tokens // k + (1 if i < tokens % k else 0)  # the call's tokens, shared out
            if i in alone:
                return self._choose(*items[i], shared_tokens=tok)
            return self._chosen(*items[i], picks[i + 1], latency_ms, tok, share)

        outs = await asyncio.gather(*(settle(i) for i in range(k)), return_exceptions=True)
        results: list[JudgeOutcome | BaseException] = []
        for i, r in enumerate(outs):
            if isinstance(r, JudgeOutcome) and i in alone:  # its share of the batch call plus its own call
                r = replace(r, calls=share + (r.calls or 0))
            results.append(r if isinstance(r, JudgeOutcome | Exception) else JudgeUnavailableError(repr(r)))
        return results

    async def _validate(
        self, text: str, cand: Candidate, *, item_id: str, depth: int, calls: _ItemCalls | None
    ) -> Verdict:
        s = self.settings
        hit = self._cached(text, cand, item_id, depth)
        if hit is not None:
            return hit
        description = self._described(cand)
        key = self._key(text, cand)
        examples = list(cand.examples)[: s.n_examples]

        def parse(resp: Any) -> _Answer:
            choice = _first_choice(resp)
            valid = parse_verdict(getattr(getattr(choice, "message", None), "content", None))
            conf = None
            if s.logprobs and choice is not None and choice.logprobs is not None:
                conf = confidence_from_logprobs(choice.logprobs.content, valid)
            return _Answer(valid, _total_tokens(resp), conf)

        async def ask(fmt: str) -> _Answer:
            messages = build_validate_messages(
                text,
                cand.label,
                description,
                examples,
                answer_format=fmt,
                max_text_chars=s.max_text_chars,
            )
            return await self._call(
                messages,
                parse,
                response_format=response_format_for(fmt),
                max_tokens=s.max_answer_tokens,
                logprobs=s.logprobs,
                calls=calls,
                what=f"item {item_id} label {cand.label!r}",
            )

        answer = await self._falling_back(ask)
        self._cache.put(key, CachedAnswer(bool(answer.value), answer.confidence))
        return self._record(
            Verdict(
                item_id,
                cand.label,
                bool(answer.value),
                depth,
                s.model,
                answer.latency_ms,
                answer.tokens,
                answer.confidence,
            )
        )

    def _described(self, cand: Candidate) -> str | None:
        """A candidate's description: its own, else the one from ``descriptions_file``."""
        return cand.description or self._descriptions.get(cand.label)

    def _key(self, text: str, cand: Candidate) -> str:
        """The verdict cache's key for "is ``cand`` right for ``text``?" (a new description misses it)."""
        return cache_key(text, cand.label, self._described(cand), self.settings.model)

    def _cached(self, text: str, cand: Candidate, item_id: str, depth: int) -> Verdict | None:
        """The cached answer about ``cand`` for ``text`` as a recorded verdict, or None (not asked yet)."""
        s = self.settings
        started = time.perf_counter()
        hit = self._cache.get(self._key(text, cand))
        if hit is None:
            return None
        latency = (time.perf_counter() - started) * 1000
        self._c.cache_hits += 1
        return self._record(
            Verdict(item_id, cand.label, hit.valid, depth, s.model, latency, 0, hit.confidence, True)
        )

    def _shown_labels(self, cands: Iterable[Candidate]) -> dict[str, tuple[str | None, list[str]]]:
        """Each label of a batch prompt once: its description and up to ``n_examples`` of the examples
        its candidates brought."""
        labels: dict[str, tuple[str | None, list[str]]] = {}
        for c in cands:
            _desc, examples = labels.setdefault(c.label, (self._described(c), []))
            for ex in c.examples:
                if len(examples) < self.settings.n_examples and ex not in examples:
                    examples.append(ex)
        return labels

    async def _validate_many(self, checks: list[_Check]) -> list[Verdict | BaseException]:
        """Several yes/no questions in one call (items' questions with ``question = "validate"``, or the
        cross-checks of choices): per question its verdict. Each is charged (``_Check.tab``) its share of
        the requests the batch call took (retries included; a cached answer: nothing). A check the answer
        leaves out is asked again alone (its share plus that call's requests); one that then gets no usable
        answer comes back as its exception. A call that cannot be made raises, for every check of the
        batch."""
        s = self.settings
        out: dict[int, Verdict | BaseException] = {}
        for i, c in enumerate(checks):
            hit = self._cached(c.text, c.cand, c.item_id, c.depth)
            if hit is not None:
                out[i] = hit
        todo = [i for i in range(len(checks)) if i not in out]
        answers: dict[int, bool] = {}
        latency_ms, tokens = 0.0, 0
        if len(todo) > 1:
            labels = self._shown_labels(checks[i].cand for i in todo)
            asked = [(checks[i].text, checks[i].cand.label) for i in todo]
            messages = build_validate_batch_messages(asked, labels, max_text_chars=s.max_text_chars)
            batch = _ItemCalls(s.max_calls_per_item)
            try:
                answer = await self._ask_json(
                    messages,
                    VERDICTS_SCHEMA,
                    "verdicts",
                    lambda content: parse_verdicts(content, len(todo)),
                    what=f"a batch of {len(todo)} yes/no questions",
                    max_tokens=s.max_answer_tokens * len(todo) + 16,
                    calls=batch,
                )
                answers, latency_ms, tokens = answer.value, answer.latency_ms, answer.tokens
            except (MalformedAnswerError, _ItemBudgetSpent) as exc:
                log.warning("judge: no usable answer to a batch of %d yes/no questions (%s); asking each "
                            "alone", len(todo), exc)  # fmt: skip
            finally:
                for i in todo:
                    checks[i].tab.charged += batch.charged / len(todo)
        for n, i in enumerate(todo, start=1):
            if n not in answers:
                continue
            c, valid = checks[i], answers[n]
            self._cache.put(self._key(c.text, c.cand), CachedAnswer(valid, None))
            tok = tokens // len(answers) + (1 if n - 1 < tokens % len(answers) else 0)
            out[i] = self._record(Verdict(c.item_id, c.cand.label, valid, c.depth, s.model, latency_ms, tok))
        alone = [i for i in todo if i not in out]

        async def ask_alone(c: _Check) -> Verdict:
            calls = _ItemCalls(s.max_calls_per_item)
            try:
                return await self._validate(c.text, c.cand, item_id=c.item_id, depth=c.depth, calls=calls)
            finally:
                c.tab.charged += calls.charged

        got = await asyncio.gather(*(ask_alone(checks[i]) for i in alone), return_exceptions=True)
        for i, r in zip(alone, got, strict=True):
            out[i] = r if isinstance(r, Verdict | Exception) else JudgeUnavailableError(repr(r))
        return [out[i] for i in range(len(checks))]

    def _record(self, v: Verdict) -> Verdict:
        c = self._c
        c.verdicts += 1
        if v.valid:
            c.valid += 1
        else:
            c.invalid += 1
        c.latency_ms_total += v.latency_ms
        c.latency_ms_max = max(c.latency_ms_max, v.latency_ms)
        log.debug("verdict %s %s valid=%s depth=%d cached=%s", v.id, v.label, v.valid, v.depth, v.cached)
        return v

    def _backoff(self, retry: int, hint: float | None) -> float:
        """Exponential backoff with jitter (half fixed, half random), capped; honours Retry-After."""
        s = self.settings
        ceiling = min(s.backoff_max_s, s.backoff_base_s * (2**retry))
        delay = ceiling / 2 + self._rng.uniform(0, ceiling / 2)
        if hint is not None and hint > 0:
            delay = max(delay, min(hint, s.backoff_max_s))
        return delay

    async def _call(
        self,
        messages: list[dict[str, str]],
        parse: Callable[[Any], _Answer],
        *,
        response_format: dict[str, Any] | None,
        max_tokens: int,
        logprobs: bool,
        calls: _ItemCalls | None,
        what: str,
    ) -> _Answer:
        """One question with retries: returns the parsed answer or raises a documented error."""
        s = self.settings
        kwargs: dict[str, Any] = {
            "model": s.model,
            "messages": messages,
            "temperature": s.temperature,
            "max_tokens": max_tokens,
        }
        if response_format is not None:
            kwargs["response_format"] = response_format
        if logprobs:
            kwargs["logprobs"] = True
        attempts = s.max_retries + 1
        malformed_left = min(1, s.max_retries)
        last_problem = "no attempt made"
        spent_tokens = 0  # every answered attempt counts, malformed ones included
        first_sent: float | None = None
        for attempt in range(attempts):
            if attempt:
                self._c.retries += 1
            half_open = self._breaker.state == "half_open"
            if not self._breaker.allow():
                wait = self._breaker.retry_after()
                why = (
                    f"judge circuit is half-open: a probe call to {s.endpoint} is testing whether it is back"
                    if half_open
                    else f"judge circuit is open after {self._breaker.threshold} consecutive failed calls to "
                    f"{s.endpoint}"
                )
                raise JudgeUnavailableError(
                    f"{why} (last: {last_problem}); keep the item and retry in {wait:.1f}s",
                    retry_after_s=wait,
                )
            # let through half-open, this call is the probe: however its attempt ends, the next may probe
            probe = self._breaker.probe_id if half_open else None
            hint: float | None = None
            try:
                if calls is not None:
                    calls.take()
                self._waiting += 1
                try:
                    await self._sem.acquire()
                finally:
                    self._waiting -= 1
                try:
                    if response_format is not None and self._superseded(str(response_format.get("type"))):
                        # refused while this call waited for its turn: fall back without sending it
                        if calls is not None:
                            calls.give_back()
                        raise _FormatRefused(sent=False)
                    self._budget.take()
                    self._in_flight += 1
                    self._c.calls += 1
                    if calls is not None:
                        calls.charged += 1
                    if first_sent is None:
                        first_sent = time.perf_counter()
                    try:
                        resp = await self._client.chat.completions.create(**kwargs)
                    finally:
                        self._in_flight -= 1
                finally:
                    self._sem.release()
            except (BudgetExceededError, _ItemBudgetSpent, _FormatRefused):
                raise  # not the endpoint's doing (nor is a cancellation): nothing to record
            except openai.APITimeoutError:
                last_problem = f"timeout after {s.timeout_s}s"
                self._failed("timeout")
            except openai.APIConnectionError as exc:
                last_problem = f"connection failed ({exc.__cause__ or exc})"
                self._failed("connection")
            except openai.RateLimitError as exc:
                last_problem = "HTTP 429 rate limited"
                self._c.failures["429"] += 1  # the endpoint is alive, just busy: not a failure
                hint = _retry_after(exc.response)
            except openai.APIStatusError as exc:
                code = exc.status_code
                if response_format is not None and (
                    code in (400, 413, 422) or (code >= 500 and _mentions_response_format(exc))
                ):
                    # (llama-cpp-python answers an unsupported response_format with HTTP 500)
                    self._breaker.record_success()  # the endpoint is up; it refuses this request
                    self._c.failures[f"http_{code}"] += 1
                    self._pending_refusals.add(str(response_format.get("type")))
                    raise _FormatRefused from exc
                if code >= 500 or code in (408, 409):  # the same set the openai client retries
                    last_problem = f"HTTP {code}"
                    self._failed("5xx" if code >= 500 else f"http_{code}")
                elif code in (400, 413, 422):
                    self._breaker.record_success()  # the endpoint is up; it refuses this request
                    self._c.failures[f"http_{code}"] += 1
                    raise MalformedAnswerError(
                        f"judge endpoint refused the {what} request with HTTP {code} ({_api_message(exc)}); "
                        "the item cannot be judged as sent: send it to review"
                    ) from exc
                else:
                    self._failed(f"http_{code}")
                    hint_msg = {
                        401: "check DRIFTLABEL_JUDGE_API_KEY",
                        403: "check DRIFTLABEL_JUDGE_API_KEY and its permissions",
                        404: "check DRIFTLABEL_JUDGE_BASE_URL (should end in /v1) and DRIFTLABEL_JUDGE_MODEL",
                    }.get(code, "check the judge endpoint settings and its logs")
                    raise JudgeUnavailableError(
                        f"judge endpoint {s.endpoint} refused the {what} request with HTTP {code}: "
                        f"{hint_msg}; the item is kept",
                        retry_after_s=s.breaker_reset_s,
                    ) from exc
            except Exception as exc:
                # anything else the client raised (e.g. json.JSONDecodeError for a 200 whose JSON body
                # is broken) says nothing good about the endpoint: a failed attempt, retried like a 5xx
                last_problem = f"unreadable response ({type(exc).__name__}: {_short(str(exc))})"
                self._failed("unexpected")
            else:
                self._breaker.record_success()
                self._account_usage(resp)
                spent_tokens += _total_tokens(resp)
                try:
                    answer = _read(parse, resp)
                    answer.tokens = spent_tokens
                    answer.latency_ms = (time.perf_counter() - (first_sent or time.perf_counter())) * 1000
                    return answer
                except MalformedAnswerError as exc:
                    self._c.malformed += 1
                    last_problem = str(exc)
                    log.warning("judge: malformed answer for %s: %s", what, exc)
                    if malformed_left <= 0 or attempt + 1 >= attempts:
                        raise
                    malformed_left -= 1
                    continue  # ask again at once: the endpoint is up, no need to back off
            finally:
                if probe is not None:  # the probe ended, whichever way: the next call may probe
                    self._breaker.release_probe(probe)
            if attempt + 1 < attempts:
                delay = self._backoff(attempt, hint)
                log.warning(
                    "judge: %s for %s; retry %d/%d in %.2fs",
                    last_problem,
                    what,
                    attempt + 1,
                    s.max_retries,
                    delay,
                )
                await asyncio.sleep(delay)
        raise JudgeUnavailableError(
            f"judge endpoint {s.endpoint} failed {attempts} attempt(s) for {what} (last: {last_problem}); "
            f"keep the item and retry later",
            retry_after_s=max(self._breaker.retry_after(), s.backoff_max_s),
        )

    def _failed(self, kind: str) -> None:
        self._c.failures[kind] += 1
        self._breaker.record_failure()

    def _account_usage(self, resp: Any) -> None:
        self._c.prompt_tokens += _usage(resp, "prompt_tokens")
        self._c.completion_tokens += _usage(resp, "completion_tokens")
        self._c.tokens += _usage(resp, "total_tokens")


def _closed() -> Exception:
    return JudgeUnavailableError("the judge was closed; retry the item")


def _usage(resp: Any, name: str) -> int:
    """A token count from the reply's ``usage``: 0 when missing or not a number (an odd endpoint's bill must
    not cost an answer that is fine)."""
    value = getattr(getattr(resp, "usage", None), name, None)
    try:
        return max(int(value or 0), 0)
    except (TypeError, ValueError, OverflowError):
        return 0


def _total_tokens(resp: Any) -> int:
    return _usage(resp, "total_tokens")


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _first_choice(resp: Any) -> Any:
    """The first choice of a chat completion (None when it has none). A reply that is not a chat completion
    at all (for a 200 with an HTML page the openai client hands back the page as a ``str``) is malformed."""
    if not hasattr(resp, "choices"):
        raise MalformedAnswerError(
            f"the endpoint's reply is not a chat completion ({type(resp).__name__}: "
            f"{_short(repr(resp), 80)}); is DRIFTLABEL_JUDGE_BASE_URL an OpenAI-compatible API "
            "(ending in /v1)?",
            raw=resp if isinstance(resp, str) else None,
        )
    choices = resp.choices
    return choices[0] if isinstance(choices, list) and choices else None


def _content(resp: Any) -> Any:
    """The first choice's message content as sent: None when there is none, whatever else for the parsers
    to accept or refuse (they take only a string)."""
    return getattr(getattr(_first_choice(resp), "message", None), "content", None)


def _read(parse: Callable[[Any], _Answer], resp: Any) -> _Answer:
    """``parse(resp)``, where anything a reply's odd shape makes a parser raise (a list for content, JSON
    nested too deep...) is a :class:`MalformedAnswerError` like any other unusable answer: retried, counted
    in ``stats.malformed``, never a crash."""
    try:
        return parse(resp)
    except MalformedAnswerError:
        raise
    except Exception as exc:
        raise MalformedAnswerError(
            f"the answer cannot be read ({type(exc).__name__}: {_short(str(exc))})"
        ) from exc


def _mentions_response_format(exc: openai.APIStatusError) -> bool:
    """Does an error response blame the ``response_format`` field?"""
    text = f"{exc.message} {exc.body!r}"
    return "response_format" in text


def _api_message(exc: openai.APIStatusError) -> str:
    """The endpoint's short error message (the openai client unwraps ``{"error": {...}}`` into ``body``)."""
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])[:200]
    return str(exc.message)[:200]


def _retry_after(response: Any) -> float | None:
    """Seconds from a Retry-After header (numeric form only), if present."""
    try:
        value = response.headers.get("retry-after")
        return float(value) if value is not None else None
    except (AttributeError, TypeError, ValueError):
        return None
