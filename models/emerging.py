"""Emerging classes: texts no known class covers pile up; a dense group of them is proposed as a new class.

The stream feeds this pool with the texts the model cannot place: those whose nearest known example is
farther than the calibrated out-of-scope similarity (``RedClassifier.nearest_similarity`` below
``oos_similarity_threshold``), and those the judge left ``unresolved``. Scattered misfits never form a group;
a new intent does, because its texts are similar to each other. :meth:`NoveltyPool.find_group` looks for the
pooled text with the most neighbours above ``similarity`` (one matmul over the pool, at most ``capacity``
rows) and, when that neighbourhood holds ``min_size`` texts, takes it out of the pool as a
:class:`Proposal` (its texts, centroid and density) for the judge to name and the service to publish on the
``proposals`` topic. The pool is bounded (oldest first out) and deterministic for a given input order. A
text already in the pool is not added again: a text that recurs (retries, a repeated query, a replayed
stream) would otherwise make a "dense group" of one distinct text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from driftlabel.models.errors import InvalidDataError

__all__ = ["NoveltyPool", "Proposal"]


@dataclass(frozen=True)
class Proposal:
    """A dense group of texts that no known class covers."""

    texts: list[str]
    embeddings: np.ndarray = field(repr=False)
    centroid: np.ndarray = field(repr=False)
    density: float
    """Mean cosine similarity of the group's texts to its centroid."""
    ids: list[str] = field(default_factory=list)

    def examples(self, n: int = 5) -> list[str]:
        """The ``n`` texts nearest to the centroid (what a human or the judge is shown)."""
        order = np.argsort(-(self.embeddings @ self.centroid), kind="stable")
        return [self.texts[i] for i in order[:n].tolist()]

    def own(self, store_similarity: np.ndarray) -> Proposal:
        """The group without the texts that sit nearer a stored example than the group's centroid, nearest
        the centroid first. ``store_similarity[i]``: text i's similarity to its nearest stored example.

        Why: a dense group of unplaced texts can take in texts of known classes along its edge (close
        intents, new wording); learned as the new class's examples they teach it another class's texts.
        A text a known class covers better is no evidence for a new one. (Class-incremental BANKING77,
        batched yes/no, three seeds: the texts added with discovered classes held 28-38 of another class
        in 106, 7-10 in 72-78 with this; docs/models.md.)
        """
        sim = np.asarray(store_similarity, dtype=np.float32).reshape(-1)
        if len(sim) != len(self.texts):
            n = len(self.texts)
            raise InvalidDataError(f"{n} texts need {n} similarities, got {len(sim)}")
        to_centroid = self.embeddings @ self.centroid
        order = np.argsort(-to_centroid, kind="stable")
        keep = order[to_centroid[order] > sim[order]].tolist()
        E = self.embeddings[keep]
        return Proposal(
            texts=[self.texts[i] for i in keep],
            embeddings=E,
            centroid=self.centroid,
            density=float(np.mean(E @ self.centroid)) if keep else 0.0,
            ids=[self.ids[i] for i in keep] if self.ids else [],
        )


class NoveltyPool:
    """A bounded pool of unplaced texts and the search for a dense group among them."""

    def __init__(self, min_size: int = 12, similarity: float = 0.6, capacity: int = 2000) -> None:
        if min_size < 2 or not -1.0 < similarity < 1.0 or capacity < min_size:
            raise InvalidDataError("need min_size >= 2, -1 < similarity < 1 and capacity >= min_size")
        self.min_size = min_size
        self.similarity = similarity
        self.capacity = capacity
        self._X: np.ndarray | None = None
        self._texts: list[str] = []
        self._ids: list[str] = []
        self._present: set[str] = set()

    def __len__(self) -> int:
        return len(self._texts)

    def add(self, X: np.ndarray, texts: Sequence[str], ids: Sequence[str] | None = None) -> None:
        """Add unplaced texts (unit-norm embeddings); the oldest leave when the pool is full."""
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or len(X) != len(texts):
            raise InvalidDataError(f"{len(texts)} texts need {len(texts)} embeddings, got shape {X.shape}")
        if not len(X):
            return
        ids = [str(i) for i in ids] if ids is not None else [""] * len(texts)
        new: list[int] = []
        for i, t in enumerate(texts):  # one row per distinct text (the first of a batch's repeats)
            if t not in self._present:
                self._present.add(t)
                new.append(i)
        if not new:
            return
        if len(new) < len(texts):
            X = X[new]
            texts = [texts[i] for i in new]
            ids = [ids[i] for i in new]
        self._X = X.copy() if self._X is None else np.concatenate([self._X, X])
        self._texts.extend(texts)
        self._ids.extend(ids)
        cut = len(self._texts) - self.capacity
        if cut > 0:
            self._X = self._X[cut:]
            self._present.difference_update(self._texts[:cut])
            del self._texts[:cut]
            del self._ids[:cut]

    def nearest_similarity(self, X: np.ndarray) -> np.ndarray:
        """Each embedding's cosine similarity to its nearest pooled text (-1 where the pool is empty)."""
        X = np.asarray(X, dtype=np.float32)
        if self._X is None or not len(self._texts) or not len(X):
            return np.full(len(X), -1.0, dtype=np.float32)
        return (X @ self._X.T).max(axis=1)

    def find_groups(self) -> list[Proposal]:
        """Every dense group the pool holds now, densest first (:meth:`find_group` until it finds none)."""
        groups: list[Proposal] = []
        while (group := self.find_group()) is not None:
            groups.append(group)
        return groups

    def find_group(self) -> Proposal | None:
        """Take the densest neighbourhood out of the pool if it has ``min_size`` texts, else None."""
        if self._X is None or len(self._texts) < self.min_size:
            return None
        near = (self._X @ self._X.T) >= self.similarity  # noqa: SIM300
        counts = near.sum(axis=1)
        best = int(np.argmax(counts))  # first of the densest: deterministic
        if counts[best] < self.min_size:
            return None
        rows = np.flatnonzero(near[best])
        centroid = self._X[rows].mean(axis=0)
        centroid /= max(float(np.linalg.norm(centroid)), 1e-12)
        # keep the rows that are near the group's centroid too (drops bridges to another group)
        rows = rows[self._X[rows] @ centroid >= self.similarity]
        if len(rows) < self.min_size:
            return None
        E = self._X[rows]
        proposal = Proposal(
            texts=[self._texts[i] for i in rows.tolist()],
            embeddings=E.copy(),
            centroid=centroid,
            density=float(np.mean(E @ centroid)),
            ids=[self._ids[i] for i in rows.tolist()],
        )
        keep = np.ones(len(self._texts), dtype=bool)
        keep[rows] = False
        self._present.difference_update(proposal.texts)
        self._X = self._X[keep]
        self._texts = [t for t, k in zip(self._texts, keep.tolist(), strict=True) if k]
        self._ids = [t for t, k in zip(self._ids, keep.tolist(), strict=True) if k]
        return proposal
