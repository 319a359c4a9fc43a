"""Pure functions of the flow: from a ranked micro-batch to the messages to publish, and from a judge
outcome to its label, verdicts, training pairs and review item.

No Kafka, no model and no I/O here, so unit tests check every rule (one final label per id, what is
routed, what is learned) without a broker. The agents in :mod:`driftlabel.streams.service` only move
the results to their topics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from driftlabel.streams.messages import (
    JudgeRequestMessage,
    LabelMessage,
    ReviewMessage,
    TrainingMessage,
    VerdictMessage,
)

__all__ = [
    "OUT_OF_SCOPE",
    "JudgeResult",
    "RankingLike",
    "judge_result_messages",
    "label_messages",
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


@dataclass
class JudgeResult:
    """Everything one judged item produces."""

    label: LabelMessage
    verdicts: list[VerdictMessage] = field(default_factory=list)
    training: list[TrainingMessage] = field(default_factory=list)
    review: ReviewMessage | None = None


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
    training = [
        TrainingMessage(id=request.id, text=request.text, label=v.label, source="judge", valid=v.valid)
        for v in verdicts
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
