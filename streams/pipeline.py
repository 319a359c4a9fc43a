"""Pure functions of the flow: from a ranked micro-batch to the messages to publish, and from a judge
outcome to its label, verdicts, training pairs and review item.

No Kafka, no model and no I/O here, so unit tests check every rule (validation, one final label per id,
what is routed, what the judge is asked, what is learned) without a broker. The agents in
:mod:`driftlabel.streams.worker` only move the results to their topics.
"""

from __future__ import annotations

from collections.abc import Container, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from driftlabel.streams.errors import InvalidMessageError
from driftlabel.streams.messages import (
    JudgeRequestMessage,
    LabelMessage,
    ReviewMessage,
    TextMessage,
    TrainingMessage,
    VerdictMessage,
    encode_vector,
    log_digest,
    parse_text,
)
from driftlabel.streams.routing import id_unit

__all__ = [
    "OUT_OF_SCOPE",
    "JudgeResult",
    "ParsedBatch",
    "RankingLike",
    "RawRecord",
    "VerdictAudit",
    "judge_request_messages",
    "judge_result_messages",
    "judgeable",
    "label_messages",
    "label_values",
    "new_pairs",
    "parse_text_batch",
    "sampled",
    "unlabelled_values",
]

OUT_OF_SCOPE = "out_of_scope"


class RankingLike(Protocol):
    """The parts of ``driftlabel.models.Ranking`` used here."""

    labels: list[str]
    scores: np.ndarray
    candidates: list[list[tuple[str, float]]]
    entropy: np.ndarray
    margin: np.ndarray
    out_of_scope: np.ndarray


class OutcomeLike(Protocol):
    """The parts of ``driftlabel.judge.JudgeOutcome`` used here."""

    id: str
    status: str
    label: str | None
    verdicts: Sequence[Any]
    reason: str | None

    @property
    def pairs(self) -> Sequence[tuple[str, bool]]: ...


class RawRecord(Protocol):
    """A consumed record: ``aiokafka.ConsumerRecord`` and faust's ``Message`` both fit."""

    topic: str
    partition: int
    offset: int
    value: bytes | None


@dataclass
class ParsedBatch:
    """One micro-batch of ``texts`` records after validation."""

    items: list[TextMessage] = field(default_factory=list)
    #: the record each item came from (same order as ``items``)
    sources: list[RawRecord] = field(default_factory=list)
    #: records that failed validation, with why (each goes to ``dead-letter`` once)
    bad: list[tuple[RawRecord, InvalidMessageError]] = field(default_factory=list)


def parse_text_batch(records: Sequence[RawRecord], *, max_bytes: int, max_chars: int) -> ParsedBatch:
    """Validate raw ``texts`` records; never raises (a bad record is returned in ``bad``)."""
    out = ParsedBatch()
    for m in records:
        try:
            item = parse_text(
                m.value, topic=m.topic, partition=m.partition, offset=m.offset,
                max_bytes=max_bytes, max_chars=max_chars,
            )  # fmt: skip
        except InvalidMessageError as exc:
            out.bad.append((m, exc))
            continue
        out.items.append(item)
        out.sources.append(m)
    return out


def judgeable(ranking: RankingLike, routed: np.ndarray, n_candidates: int) -> np.ndarray:
    """``routed`` less the rows whose first ``n_candidates`` are all out-of-scope: the judge could only
    be asked about nothing, so those keep the model's label, final at once (never left without one)."""
    ok = np.array(
        [any(lab != OUT_OF_SCOPE for lab, _ in row[:n_candidates]) for row in ranking.candidates], dtype=bool
    )
    return np.asarray(routed, dtype=bool) & ok if len(ok) else np.asarray(routed, dtype=bool)


def judge_request_messages(
    items: Sequence[TextMessage],
    ranking: RankingLike,
    rows: Sequence[int],
    candidates: Sequence[Sequence[dict[str, Any]]],
    model_version: int,
    received: float,
    now: float,
) -> list[tuple[int, JudgeRequestMessage]]:
    """The ``judge-requests`` of the routed ``rows`` (row, message); out-of-scope is never a candidate,
    and a row left with no candidate is not sent (its label stays the model's)."""
    out = []
    for i, cand in zip(rows, candidates, strict=True):
        kept = [c for c in cand if c["label"] != OUT_OF_SCOPE]
        if not kept:
            continue
        out.append(
            (
                i,
                JudgeRequestMessage(
                    id=items[i].id,
                    text=items[i].text,
                    candidates=kept,
                    label=ranking.labels[i],
                    score=float(ranking.scores[i]),
                    entropy=float(ranking.entropy[i]),
                    model_version=int(model_version),
                    received_ts=received,
                    ts=now,
                ),
            )
        )
    return out


def label_messages(
    ids: Sequence[str], ranking: RankingLike, routed: np.ndarray, model_version: int, now: float
) -> list[LabelMessage]:
    """The immediate label of every text of a batch.

    Routed texts get ``final=False`` (their final label comes from the judge); the others are final at
    once, ``status`` ``predicted`` or ``out_of_scope``.
    """
    oos = np.asarray(ranking.out_of_scope, dtype=bool)
    scores = np.asarray(ranking.scores, dtype=float).tolist()
    entropy = np.asarray(ranking.entropy, dtype=float).tolist()
    routed_l = np.asarray(routed, dtype=bool).tolist()
    oos_l = oos.tolist()
    return [
        LabelMessage(
            id=ids[i],
            label=ranking.labels[i],
            score=scores[i],
            entropy=entropy[i],
            status=OUT_OF_SCOPE if oos_l[i] and not routed_l[i] else "predicted",
            final=not routed_l[i],
            candidates=[(str(lab), float(p)) for lab, p in ranking.candidates[i]],
            model_version=int(model_version),
            ts=now,
        )
        for i in range(len(ids))
    ]


def label_values(
    ids: Sequence[str], ranking: RankingLike, routed: np.ndarray, model_version: int, now: float
) -> list[dict[str, Any]]:
    """:func:`label_messages` as plain dicts (the hot path: no faust Record per text; the worker
    serialises them with orjson). Same fields, same rules."""
    routed_l = np.asarray(routed, dtype=bool).tolist()
    oos_l = np.asarray(ranking.out_of_scope, dtype=bool).tolist()
    scores = np.asarray(ranking.scores, dtype=float).tolist()
    entropy = np.asarray(ranking.entropy, dtype=float).tolist()
    version = int(model_version)
    return [
        {
            "id": ids[i],
            "label": ranking.labels[i],
            "score": scores[i],
            "entropy": entropy[i],
            "status": OUT_OF_SCOPE if oos_l[i] and not routed_l[i] else "predicted",
            "final": not routed_l[i],
            "candidates": ranking.candidates[i],  # (label, p) tuples: orjson writes them as arrays
            "model_version": version,
            "ts": now,
        }
        for i in range(len(ids))
    ]


def sampled(item_id: str, share: float) -> bool:
    """Is ``item_id`` in a ``share`` of all ids? Decided by a hash of the id, so a retry decides the same."""
    if share >= 1.0:
        return True
    if share <= 0.0:
        return False
    return id_unit(item_id) < share


def unlabelled_values(
    labels: Sequence[dict[str, Any]],
    texts: Sequence[str],
    X: np.ndarray,
    embedder: str,
    share: float,
) -> list[dict[str, Any]]:
    """The ``training`` values (source ``stream``) for the texts labelled without the judge: each final
    ``predicted`` label of a sampled id, with its text and float16 embedding (self-training, so the
    texts nobody judged still teach the experts; docs/models.md). Out-of-scope and routed texts are not
    learned from: the former are no label's, the latter reach the log through the judge."""
    out: list[dict[str, Any]] = []
    for i, v in enumerate(labels):
        if v["final"] and v["status"] == "predicted" and sampled(v["id"], share):
            out.append(
                {
                    "id": v["id"],
                    "text": texts[i],
                    "source": "stream",
                    "embedding": encode_vector(X[i]),
                    "embedder": embedder,
                }
            )
    return out


class VerdictAudit:
    """Metric labels for the records of the ``judge-verdicts`` log, with bounded cardinality.

    ``judge_model`` and ``depth`` come from the topic, so a misconfigured producer (or a forged record
    that passed validation) could create any number of Prometheus series. The first ``max_models``
    model names seen keep their own label, later ones share ``other``; depths above ``max_depth`` share
    ``"<max_depth>+"``. Deterministic for a given input order; memory is bounded by ``max_models``.
    """

    OTHER = "other"

    def __init__(self, max_models: int = 16, max_depth: int = 5) -> None:
        self.max_models = max_models
        self.max_depth = max_depth
        self._models: set[str] = set()

    def model_label(self, judge_model: str) -> str:
        if judge_model in self._models:
            return judge_model
        if len(self._models) < self.max_models and judge_model != self.OTHER:
            self._models.add(judge_model)
            return judge_model
        return self.OTHER

    def depth_label(self, depth: int) -> str:
        return str(depth) if depth < self.max_depth else f"{self.max_depth}+"

    def labels(self, verdict: VerdictMessage) -> tuple[str, bool, str, float, int]:
        """``(judge_model, valid, depth, latency_s, tokens)`` for ``ServiceMetrics.observe_verdict_log``."""
        return (
            self.model_label(verdict.judge_model),
            bool(verdict.valid),
            self.depth_label(int(verdict.depth)),
            float(verdict.latency_ms) / 1000.0,
            int(verdict.tokens),
        )


@dataclass
class JudgeResult:
    """Everything one judged item produces."""

    label: LabelMessage
    verdicts: list[VerdictMessage] = field(default_factory=list)
    training: list[TrainingMessage] = field(default_factory=list)
    review: ReviewMessage | None = None


def new_pairs(training: Sequence[TrainingMessage], seen: Container[int]) -> list[TrainingMessage]:
    """The judge pairs the learning log does not hold yet (their digest not in ``seen``, the learner's).

    Why: a worker killed between writing an item's pairs and its final label judges the item again after
    the restart (or on the worker that takes its partition); the learner learns a repeated pair once, but
    the ``training`` topic, the replayable record of everything learned, would hold it twice."""
    return [t for t in training if log_digest(t) not in seen]


def judge_result_messages(
    request: JudgeRequestMessage, outcome: OutcomeLike, model_version: int, now: float
) -> JudgeResult:
    """The final label, the verdicts, the training pairs and (if unresolved) the review item of one outcome.

    Accepted pairs are learned as positives; every rejected candidate is a hard negative. An unresolved
    item keeps the model's top candidate as its label, marked ``unresolved``, and goes to ``review``.
    """
    cands = [(str(c["label"]), float(c.get("probability", 0.0))) for c in request.candidates]
    probs = dict(cands)
    verdicts = [
        VerdictMessage(
            id=request.id,
            label=v.label,
            valid=bool(v.valid),
            depth=int(v.depth),
            judge_model=str(v.judge_model),
            latency_ms=float(v.latency_ms),
            tokens=int(v.tokens),
        )
        for v in outcome.verdicts
    ]
    training = [  # what the outcome says to learn: a pick its cross-check refuted is not among them
        TrainingMessage(id=request.id, text=request.text, label=lab, source="judge", valid=bool(valid))
        for lab, valid in outcome.pairs
    ]
    label: str | None
    if outcome.status in ("validated", "corrected") and outcome.label:
        label = outcome.label
        score = probs.get(label, 0.0)
        if not any(t.valid and t.label == label for t in training):  # the outcome is the source of truth
            training.append(TrainingMessage(id=request.id, text=request.text, label=label, source="judge"))
    else:
        label = request.label or (cands[0][0] if cands else None)
        score = request.score
    review = None
    if outcome.status == "unresolved":
        review = ReviewMessage(
            id=request.id,
            text=request.text,
            candidates=cands,
            reason=outcome.reason or "no candidate was accepted by the judge",
            model_version=model_version,
            ts=now,
        )
    final = LabelMessage(
        id=request.id,
        label=label,
        score=float(score),
        entropy=float(request.entropy),
        status=outcome.status,
        final=True,
        candidates=cands,
        model_version=int(model_version),
        ts=now,
    )
    return JudgeResult(label=final, verdicts=verdicts, training=training, review=review)
