"""Emerging classes: texts no known class covers pile up; a dense group of them is proposed as a new class.

The stream feeds this pool with the texts the model cannot place: those whose nearest known example is
farther than the calibrated out-of-scope similarity (``RedClassifier.nearest_similarity`` below
``oos_similarity_threshold``), and those the judge left ``unresolved``. Scattered misfits never form a group;
a new intent does, because its texts are similar to each other. :meth:`NoveltyPool.find_group` looks for the
pooled text with the most neighbours above ``similarity`` and, when that neighbourhood holds ``min_size``
texts, takes it out of the pool as a
:class:`Proposal` (its texts, centroid and density) for the judge to name and the service to publish on the
``proposals`` topic. The pool is bounded (oldest first out) and deterministic for a given input order. A
text already in the pool is not added again: a text that recurs (retries, a repeated query, a replayed
stream) would otherwise make a "dense group" of one distinct text.

The pool keeps its neighbour matrix (which pooled pairs are above ``similarity``; in buffers of 1.25
``capacity`` squared booleans, 6 MB at 2,000) and each text's neighbour count, and updates both as texts
come and go: adding k texts costs a k x n product, not the n x n one a search from scratch needs. Why: the
worker searches after every unresolved text, and from scratch a full pool cost 16 ms per text on a quiet
core (2,000 rows, MiniLM's 384 dimensions; 0.15 ms now), paid again for each of them where most judged texts
end unresolved (O*NET: the right label is among the three candidates asked for ~40 % of texts).
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
        # the pooled rows are [lo, hi) of preallocated buffers: texts join at hi and the oldest leave at lo
        # without a copy; only a group's removal (or a full buffer) compacts them to the front
        self._bX: np.ndarray | None = None
        self._bnear = np.zeros((0, 0), dtype=bool)  # pooled pairs above ``similarity`` (symmetric)
        self._bcounts = np.zeros(0, dtype=np.int64)  # each row's neighbours, itself included
        self._lo = self._hi = 0
        self._texts: list[str] = []
        self._ids: list[str] = []
        self._present: set[str] = set()

    def __len__(self) -> int:
        return len(self._texts)

    @property
    def _X(self) -> np.ndarray | None:
        return None if self._bX is None else self._bX[self._lo : self._hi]

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
        self._grow(X)
        self._texts.extend(texts)
        self._ids.extend(ids)
        cut = len(self._texts) - self.capacity
        if cut > 0:  # the oldest leave: their pairs leave the counts of the rows that stay
            lo, hi = self._lo, self._hi
            self._bcounts[lo + cut : hi] -= self._bnear[lo : lo + cut, lo + cut : hi].sum(axis=0)
            self._lo += cut
            self._present.difference_update(self._texts[:cut])
            del self._texts[:cut]
            del self._ids[:cut]

    def _grow(self, X: np.ndarray) -> None:
        """Append rows: their neighbours among the pooled rows are one k x n product."""
        n, k = self._hi - self._lo, len(X)
        if self._bX is None or self._hi + k > len(self._bX):
            room = max(n + k, self.capacity) + max(self.capacity // 4, k)
            self._compact(np.ones(n, dtype=bool), room=room, dim=X.shape[1])
        assert self._bX is not None
        lo, hi = self._lo, self._hi
        inner = X @ X.T
        inner = np.maximum(inner, inner.T) >= self.similarity  # symmetric whatever the BLAS rounding
        np.fill_diagonal(inner, True)  # a text is its own neighbour
        cross = (X @ self._bX[lo:hi].T) >= self.similarity  # noqa: SIM300  # k x n
        self._bnear[hi : hi + k, lo:hi] = cross
        self._bnear[lo:hi, hi : hi + k] = cross.T
        self._bnear[hi : hi + k, hi : hi + k] = inner
        self._bcounts[lo:hi] += cross.sum(axis=0)
        self._bcounts[hi : hi + k] = cross.sum(axis=1) + inner.sum(axis=1)
        self._bX[hi : hi + k] = X
        self._hi += k

    def _compact(self, keep: np.ndarray, room: int | None = None, dim: int = 0) -> None:
        """Keep the pooled rows where ``keep`` is True (texts, ids, embeddings, neighbours), moved to the
        front of buffers of ``room`` rows (the same buffers when ``room`` is None); the kept counts lose
        the pairs of the rows that go."""
        lo, hi = self._lo, self._hi
        idx = np.flatnonzero(keep)
        near = self._bnear[lo:hi, lo:hi]
        counts = self._bcounts[lo:hi][idx] - near[~keep][:, idx].sum(axis=0)
        kept_near = near.take(idx, axis=0).take(idx, axis=1)
        kept_X = self._bX[lo:hi][idx] if self._bX is not None else np.zeros((0, dim), dtype=np.float32)
        if room is not None:
            self._bX = np.empty((room, kept_X.shape[1]), dtype=np.float32)
            self._bnear = np.zeros((room, room), dtype=bool)
            self._bcounts = np.zeros(room, dtype=np.int64)
        assert self._bX is not None
        m = len(idx)
        self._bX[:m] = kept_X
        self._bnear[:m, :m] = kept_near
        self._bcounts[:m] = counts
        self._lo, self._hi = 0, m
        if m < len(keep):
            flags = keep.tolist()
            self._texts = [t for t, k in zip(self._texts, flags, strict=True) if k]
            self._ids = [t for t, k in zip(self._ids, flags, strict=True) if k]

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

    def find_group(self, max_tries: int = 16) -> Proposal | None:
        """Take the densest neighbourhood out of the pool if it has ``min_size`` texts, else None.

        Centres are tried densest first: a neighbourhood that loses too many texts to the centroid filter
        (a text bridging two groups has the most neighbours) must not hide a real group elsewhere. A
        centre inside a neighbourhood that already failed is skipped, and at most ``max_tries`` are tried,
        so a pool with no group costs a few mat-vecs, not one per text."""
        X = self._X
        if X is None or len(self._texts) < self.min_size:
            return None
        lo, hi = self._lo, self._hi
        counts = self._bcounts[lo:hi]
        # the centres with enough neighbours, densest first; among equals the first pooled: deterministic
        order = np.argsort(-counts, kind="stable")
        tried = np.zeros(hi - lo, dtype=bool)
        for best in order[: int((counts >= self.min_size).sum())].tolist():
            if tried[best]:
                continue
            if max_tries == 0:
                return None
            max_tries -= 1
            near = np.flatnonzero(self._bnear[lo + best, lo:hi])
            centroid = X[near].mean(axis=0)
            centroid /= max(float(np.linalg.norm(centroid)), 1e-12)
            # keep the rows that are near the group's centroid too (drops bridges to another group)
            rows = near[X[near] @ centroid >= self.similarity]
            if len(rows) >= self.min_size:
                break
            tried[near] = True
        else:
            return None
        E = X[rows]
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
        self._compact(keep)
        return proposal
