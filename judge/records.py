"""The judge's value types: what a caller sends (:class:`JudgeRequest`) and gets back (:class:`JudgeOutcome`).

Plain frozen dataclasses, so they are cheap, hashable where it matters, and free of Kafka or model types: the
caller (the stream) fills ``Candidate.description`` and ``Candidate.examples`` from the classifier.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from driftlabel.judge.errors import JudgeDataError

__all__ = ["Candidate", "JudgeOutcome", "JudgeRequest", "OutcomeStatus", "Verdict"]

OutcomeStatus = Literal["validated", "corrected", "unresolved"]


@dataclass(frozen=True)
class Candidate:
    """One ranked label to ask about, with what the LLM needs to judge it (description, nearest examples)."""

    label: str
    probability: float = 0.0
    description: str | None = None
    examples: Sequence[str] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.label, str) or not self.label.strip():
            raise JudgeDataError(f"candidate label must be a non-empty string, got {self.label!r}")
        if isinstance(self.examples, str):
            raise JudgeDataError("candidate examples must be a sequence of strings, not one string")
        object.__setattr__(self, "examples", tuple(str(e) for e in self.examples))


@dataclass(frozen=True)
class JudgeRequest:
    """An uncertain item: its id, its text and its ranked candidates (best first)."""

    id: str
    text: str
    candidates: Sequence[Candidate]

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise JudgeDataError(f"request id must be a non-empty string, got {self.id!r}")
        if not isinstance(self.text, str) or not self.text.strip():
            raise JudgeDataError(f"request {self.id}: text must be a non-empty string")
        cands = tuple(self.candidates)
        if not cands:
            raise JudgeDataError(f"request {self.id}: needs at least one candidate label to ask about")
        if not all(isinstance(c, Candidate) for c in cands):
            raise JudgeDataError(f"request {self.id}: candidates must be Candidate objects")
        object.__setattr__(self, "candidates", cands)


@dataclass(frozen=True)
class Verdict:
    """One answered question "is ``label`` valid for item ``id``?". ``valid=False`` is a hard negative.

    ``depth`` is 1 for the top candidate, 2 for the next one asked, ... ``latency_ms`` runs from the first
    attempt's send to the answer (retries and backoff included, waiting for a concurrency slot not);
    ``tokens`` sums every answered attempt. A cached verdict has ``cached=True``, ``tokens=0`` and the
    lookup's latency.
    """

    id: str
    label: str
    valid: bool
    depth: int
    judge_model: str
    latency_ms: float
    tokens: int
    confidence: float | None = None
    cached: bool = False

    def to_message(self) -> dict[str, Any]:
        """The ``judge-verdicts`` topic value (PRODUCT.md)."""
        return {
            "id": self.id,
            "label": self.label,
            "valid": self.valid,
            "depth": self.depth,
            "judge_model": self.judge_model,
            "latency_ms": round(self.latency_ms, 3),
            "tokens": self.tokens,
        }


@dataclass(frozen=True)
class JudgeOutcome:
    """The result of recursive delegation for one item.

    ``validated``: the top candidate was accepted; ``corrected``: a lower candidate was; ``unresolved``: none
    asked was accepted (or no usable answer came), ``label`` is None and the item goes to human review.
    ``verdicts`` holds every answered question, in order, valid or not; :attr:`pairs` what to learn from them.
    """

    id: str
    status: OutcomeStatus
    label: str | None
    verdicts: list[Verdict] = field(default_factory=list)
    reason: str | None = None
    #: endpoint requests charged to the item: every one sent for it, retries and malformed answers included
    #: (a cached verdict costs none; a ``choose`` question answers every candidate's verdict in one call;
    #: a batch of k items or questions, ``judge.batch_size``, charges each 1/k of the requests it took).
    #: The judge always sets it; None (an outcome built elsewhere) counts one per verdict
    calls: float | None = None
    #: the verdicts (but a cross-check) came from one answer to a ``choose`` question
    chosen: bool = False
    #: the yes/no cross-check of an unlikely pick (``judge.verify_below``), also the last of ``verdicts``
    check: Verdict | None = None

    @property
    def pairs(self) -> list[tuple[str, bool]]:
        """``(label, valid)`` to learn: every verdict, except that a pick its cross-check refuted leaves
        only the check's no (the two answers disagree, so the choice's other verdicts are not trusted
        either) and a confirmed pick is learned once."""
        if self.check is not None and not self.check.valid:
            return [(self.check.label, False)]
        return [(v.label, v.valid) for v in self.verdicts if v is not self.check]

    @property
    def n_calls(self) -> float:
        """Judge calls this item cost, as the rate controller budgets them (:attr:`calls`)."""
        return len(self.verdicts) if self.calls is None else self.calls

    @property
    def answers(self) -> list[tuple[bool, float, int]]:
        """``(accepted, latency_ms, tokens)`` per answered question, for metrics that count requests: a
        verdict each with ``validate`` (batched or not); one for a ``choose`` call (accepted: a candidate
        was picked), whose verdicts all came from that one answer, and one more for its cross-check
        (``check``), if any."""
        if not self.chosen:
            return [(v.valid, v.latency_ms, v.tokens) for v in self.verdicts]
        chosen = [v for v in self.verdicts if v is not self.check]
        out = []
        if chosen:
            picked = any(v.valid for v in chosen)
            out.append((picked, chosen[0].latency_ms, sum(v.tokens for v in chosen)))
        if self.check is not None:
            out.append((self.check.valid, self.check.latency_ms, self.check.tokens))
        return out

    @property
    def tokens(self) -> int:
        """Tokens spent on this item (cached verdicts cost none)."""
        return sum(v.tokens for v in self.verdicts)

    @property
    def hard_negatives(self) -> list[str]:
        """Labels the judge rejected for this text: training rows with ``valid=False``."""
        return [label for label, valid in self.pairs if not valid]
