"""What the streaming service needs from ``driftlabel.models`` and ``driftlabel.judge``, declared.

``streams/`` depends on two other folders: the classifier (and its embedder) from ``models/`` and the
LLM judge from ``judge/``. These Protocols name exactly the surface it uses, so a reader (and mypy) sees
the dependency, and tests can hand the host a small fake. The real classes satisfy them structurally:
``RedClassifier`` is a :class:`Classifier`, ``load_embedder()`` returns an :class:`Embedder`, ``Judge``
is a :class:`JudgeClient`. The concrete factories live next to their users and are imported at module
level there (:mod:`~driftlabel.streams.host` imports ``RedClassifier``, :mod:`~driftlabel.streams.judging`
imports ``Judge``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from driftlabel.judge import JudgeOutcome, JudgeRequest
from driftlabel.models import Ranking

__all__ = ["Classifier", "Embedder", "JudgeClient"]


@runtime_checkable
class Embedder(Protocol):
    """Texts -> L2-normalised float32 rows (``driftlabel.models.Embedder``)."""

    name: str
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...

    def warmup(self) -> None: ...


@runtime_checkable
class Classifier(Protocol):
    """The parts of ``driftlabel.models.RedClassifier`` the worker calls (all on the model thread)."""

    @property
    def labels(self) -> list[str]: ...

    @property
    def descriptions(self) -> dict[str, str]: ...

    @property
    def model_version(self) -> int: ...

    @property
    def n_subsets(self) -> int: ...

    @property
    def n_examples(self) -> int: ...

    def rank_embeddings(self, X: np.ndarray, top_k: int = 5) -> Ranking: ...

    def learn_embeddings(
        self, X: np.ndarray, texts: Sequence[str], labels: Sequence[str], valid: Sequence[bool] | None = None
    ) -> None: ...

    def observe_embeddings(self, X: np.ndarray) -> None: ...

    def add_class(
        self,
        label: str,
        description: str | None = None,
        examples: Sequence[str] = (),
        synthetic: bool = False,
    ) -> None: ...

    def add_class_embeddings(
        self,
        label: str,
        X: np.ndarray,
        texts: Sequence[str],
        description: str | None = None,
        description_embedding: np.ndarray | None = None,
        synthetic: bool = False,
    ) -> None: ...

    def remove_class(self, label: str) -> None: ...

    def describe_class(self, label: str, description: str) -> None: ...

    def nearest_examples(self, label: str, embedding: np.ndarray, c: int = 6) -> list[str]: ...

    def refit(self, resubset: bool = False) -> None: ...

    def save(self, path: Any) -> None: ...


@runtime_checkable
class JudgeClient(Protocol):
    """``driftlabel.judge.Judge``: one recursive validation per uncertain item.

    ``judge`` may raise ``JudgeUnavailableError`` / ``BudgetExceededError`` (the item waits and is
    retried); ``aclose`` releases the HTTP client.
    """

    async def judge(self, request: JudgeRequest) -> JudgeOutcome: ...

    async def aclose(self) -> None: ...
