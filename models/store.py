"""The example store: every label's known-good (and known-bad) examples, embeddings + texts, capped.

The store is what makes R.E.D. recursive: experts are refit from it, noise classes are drawn from it, new
experts are trained from it, and the judge is shown the examples nearest to a text from it. A per-label
cap (first in, first out, so the newest wording of a drifting label wins) keeps memory bounded however
long the stream runs: ``labels x cap x dim x 4`` bytes at most.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from driftlabel.models.errors import InvalidDataError, UnknownLabelError

__all__ = ["ExampleStore", "UnlabelledPool"]


@dataclass
class _Buffer:
    X: np.ndarray
    texts: list[str] = field(default_factory=list)
    representative: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    def __post_init__(self) -> None:
        _freeze(self.X, self.representative)

    def extend(self, X: np.ndarray, texts: list[str], cap: int, representative: np.ndarray) -> None:
        self.X = np.concatenate([self.X, X]) if len(self.X) else X.copy()
        self.texts.extend(texts)
        self.representative = np.concatenate([self.representative, representative])
        if len(self.texts) > cap:
            cut = len(self.texts) - cap
            self.X = self.X[cut:].copy()
            self.representative = self.representative[cut:].copy()
            del self.texts[:cut]
        _freeze(self.X, self.representative)

    def __deepcopy__(self, memo: dict[int, Any]) -> _Buffer:
        """Shares the arrays (read-only, replaced rather than written) and copies the text list: a
        model copy at O*NET's 923 labels took 20 ms, 15 of them deep-copying these buffers."""
        return _Buffer(self.X, list(self.texts), self.representative)


def _freeze(*arrays: np.ndarray) -> None:
    """Stored arrays are never written in place (every change builds new ones), so copies may share
    them; read-only makes a write that would leak into a copy fail loudly instead."""
    for a in arrays:
        a.flags.writeable = False


class ExampleStore:
    """Per-label FIFO buffers of (embedding, text), separately for valid examples and hard negatives.

    Each valid example also records whether it is *representative*: given as training data (``fit``), so
    drawn like the texts to come, rather than chosen by the loop (judged because the experts were unsure,
    generated, proposed). Out-of-scope calibration samples the representative ones: the loop's picks are
    atypical by construction, and their leave-one-out similarities run low (measured in docs/models.md).
    """

    def __init__(self, dim: int, max_per_label: int = 1000, max_negatives_per_label: int = 200) -> None:
        self.dim = dim
        self.max_per_label = max_per_label
        self.max_negatives_per_label = max_negatives_per_label
        self._pos: dict[str, _Buffer] = {}
        self._neg: dict[str, _Buffer] = {}
        self._cache: dict[bool, tuple[np.ndarray, np.ndarray, list[str]]] = {}

    def __deepcopy__(self, memo: dict[int, Any]) -> ExampleStore:
        """An independent store sharing the read-only arrays (see :class:`_Buffer`); the cached
        concatenations are shared too (rebuilt, never written, after a change)."""
        new = ExampleStore(self.dim, self.max_per_label, self.max_negatives_per_label)
        memo[id(self)] = new
        new._pos = {lab: copy.deepcopy(buf, memo) for lab, buf in self._pos.items()}
        new._neg = {lab: copy.deepcopy(buf, memo) for lab, buf in self._neg.items()}
        new._cache = dict(self._cache)
        return new

    # -- writing --------------------------------------------------------------------------------------
    def add(
        self,
        X: np.ndarray,
        texts: Sequence[str],
        labels: Sequence[str] | np.ndarray,
        valid: Sequence[bool] | np.ndarray | None = None,
        representative: bool | Sequence[bool] | np.ndarray = False,
    ) -> None:
        """Append a micro-batch, grouped by label (one concatenation per label, not per row);
        ``representative`` marks rows given as training data (see the class docstring)."""
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.dim:
            raise InvalidDataError(f"embeddings must have shape (n, {self.dim}), got {X.shape}")
        y = np.asarray(labels, dtype=object).astype(str)
        if len(y) != len(X) or len(texts) != len(X):
            raise InvalidDataError(
                f"{len(X)} embeddings, {len(texts)} texts and {len(y)} labels: must be equal"
            )
        v = np.ones(len(X), dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
        rep = np.asarray(representative, dtype=bool)
        if rep.ndim and len(rep) != len(X):
            raise InvalidDataError(f"{len(X)} embeddings and {len(rep)} representative flags: must be equal")
        rep = np.broadcast_to(rep, (len(X),))
        texts_arr = np.asarray(list(texts), dtype=object)
        for is_valid, book, cap in (
            (True, self._pos, self.max_per_label),
            (False, self._neg, self.max_negatives_per_label),
        ):
            sel = np.flatnonzero(v == is_valid)
            if len(sel) == 0 or cap == 0:
                continue
            uniq, inv = np.unique(y[sel], return_inverse=True)
            for j, lab in enumerate(uniq.tolist()):
                rows = sel[inv.reshape(-1) == j]
                buf = book.setdefault(lab, _Buffer(np.zeros((0, self.dim), dtype=np.float32)))
                buf.extend(X[rows], texts_arr[rows].tolist(), cap, rep[rows])
        self._cache.clear()

    def remove_texts(self, label: str, texts: set[str]) -> int:
        """Drop ``label``'s valid examples whose text is in ``texts`` (synthetic ones being replaced)."""
        buf = self._pos.get(label)
        if buf is None or not texts:
            return 0
        keep = np.array([t not in texts for t in buf.texts], dtype=bool)
        removed = int((~keep).sum())
        if removed:
            buf.X = buf.X[keep].copy()
            buf.representative = buf.representative[keep].copy()
            buf.texts = [t for t, k in zip(buf.texts, keep.tolist(), strict=True) if k]
            if not buf.texts:
                del self._pos[label]
            self._cache.clear()
        return removed

    def remove_label(self, label: str) -> None:
        if label not in self._pos and label not in self._neg:
            raise UnknownLabelError(f"no stored examples for label {label!r}")
        self._pos.pop(label, None)
        self._neg.pop(label, None)
        self._cache.clear()

    # -- reading --------------------------------------------------------------------------------------
    @property
    def labels(self) -> list[str]:
        """Labels with at least one valid example."""
        return sorted(self._pos)

    def count(self, label: str) -> int:
        buf = self._pos.get(label)
        return len(buf.texts) if buf else 0

    def counts(self) -> dict[str, int]:
        return {lab: len(buf.texts) for lab, buf in self._pos.items()}

    @property
    def n_examples(self) -> int:
        """Stored valid examples (hard negatives not counted)."""
        return sum(len(b.texts) for b in self._pos.values())

    @property
    def n_negatives(self) -> int:
        return sum(len(b.texts) for b in self._neg.values())

    def arrays(self, valid: bool = True) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """All valid examples (or all hard negatives) as ``(X, labels, texts)``; cached until a change."""
        if valid not in self._cache:
            book = self._pos if valid else self._neg
            labs = sorted(book)
            if labs:
                X = np.concatenate([book[lab].X for lab in labs])
                y = np.repeat(np.array(labs, dtype=object), [len(book[lab].texts) for lab in labs])
                texts = [t for lab in labs for t in book[lab].texts]
            else:
                X, y, texts = np.zeros((0, self.dim), dtype=np.float32), np.zeros(0, dtype=object), []
            _freeze(X, y)
            self._cache[valid] = (X, y, texts)
        return self._cache[valid]

    def representative(self) -> np.ndarray:
        """Which rows of ``arrays()`` (valid examples) are representative (see the class docstring)."""
        labs = sorted(self._pos)
        if not labs:
            return np.zeros(0, dtype=bool)
        return np.concatenate([self._pos[lab].representative for lab in labs])

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``n`` valid examples drawn uniformly without concatenating the store (replay for learning).

        Labels in sorted order, as :meth:`from_state` rebuilds them, not in arrival order: a model loaded
        from a save then draws the same rows as the one that never stopped."""
        labs = sorted(self._pos)
        if n <= 0 or not labs:
            return np.zeros((0, self.dim), dtype=np.float32), np.zeros(0, dtype=object)
        sizes = np.array([len(self._pos[lab].texts) for lab in labs])
        total = int(sizes.sum())
        flat = rng.choice(total, size=min(n, total), replace=False)
        which = np.searchsorted(np.cumsum(sizes), flat, side="right")
        offset = flat - (np.cumsum(sizes) - sizes)[which]
        X = np.empty((len(flat), self.dim), dtype=np.float32)
        for li in np.unique(which).tolist():  # loops over the labels drawn, not the rows
            rows = which == li
            X[rows] = self._pos[labs[li]].X[offset[rows]]
        return X, np.array(labs, dtype=object)[which]

    def label_examples(self, label: str) -> tuple[np.ndarray, list[str]]:
        buf = self._pos.get(label)
        if buf is None:
            return np.zeros((0, self.dim), dtype=np.float32), []
        return buf.X, list(buf.texts)

    def nearest(self, label: str, embedding: np.ndarray, c: int = 6) -> list[str]:
        """The ``c`` distinct known-good texts of ``label`` most similar (cosine) to ``embedding``."""
        buf = self._pos.get(label)
        if buf is None or c <= 0:
            return []
        e = np.asarray(embedding, dtype=np.float32).reshape(-1)
        if e.shape[0] != self.dim:
            raise InvalidDataError(f"embedding must have {self.dim} values, got {e.shape[0]}")
        order = np.argsort(-(buf.X @ e), kind="stable")
        out: list[str] = []
        seen: set[str] = set()
        for i in order.tolist():
            t = buf.texts[i]
            if t not in seen:
                seen.add(t)
                out.append(t)
                if len(out) == c:
                    break
        return out

    # -- persistence ----------------------------------------------------------------------------------
    def state(self) -> dict[str, object]:
        """Flat arrays + texts for saving (valid and negative books)."""
        Xp, yp, tp = self.arrays(True)
        Xn, yn, tn = self.arrays(False)
        return {
            "pos_X": Xp,
            "pos_representative": self.representative(),
            "pos_y": yp.astype(str).tolist(),
            "pos_texts": tp,
            "neg_X": Xn,
            "neg_y": yn.astype(str).tolist(),
            "neg_texts": tn,
        }

    @classmethod
    def from_state(
        cls,
        dim: int,
        max_per_label: int,
        max_negatives_per_label: int,
        pos: tuple[np.ndarray, list[str], list[str]],
        neg: tuple[np.ndarray, list[str], list[str]],
        pos_representative: np.ndarray | None = None,
    ) -> ExampleStore:
        """A store from :meth:`state`'s arrays; without ``pos_representative`` (files written before it
        was recorded) every valid example counts as representative, the calibration those files had."""
        store = cls(dim, max_per_label, max_negatives_per_label)
        if len(pos[1]):
            rep = np.ones(len(pos[1]), dtype=bool) if pos_representative is None else pos_representative
            store.add(pos[0], pos[2], pos[1], representative=rep)
        if len(neg[1]):
            store.add(neg[0], neg[2], neg[1], valid=np.zeros(len(neg[1]), dtype=bool))
        return store


class UnlabelledPool:
    """The newest unlabelled embeddings of the stream (first in, first out, at most ``cap`` rows).

    Self-training's raw material: a re-solve labels them with the weights it starts from and learns them
    at a reduced weight (``ExpertSettings.self_training``), which is how the texts nobody judged still
    move the experts (docs/models.md). A ring buffer, so adding a micro-batch copies only the batch;
    ``cap x dim x 4`` bytes at most (10,000 x 384 -> 15 MB). Rows carry no text: they are never shown to
    the judge and never counted as examples.
    """

    def __init__(self, dim: int, cap: int) -> None:
        self.dim = dim
        self.cap = cap
        self._X = np.zeros((0, dim), dtype=np.float32)
        self._next = 0  # ring position of the next write
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def add(self, X: np.ndarray) -> None:
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.dim:
            raise InvalidDataError(f"embeddings must have shape (n, {self.dim}), got {X.shape}")
        if self.cap == 0 or not len(X):
            return
        X = X[-self.cap :]
        if len(self._X) < self.cap and self._n + len(X) > len(self._X):  # grow up to the cap, then stay
            grown = min(self.cap, max(len(self._X) * 2, self._n + len(X), 1024))
            # oldest first before growing: a full ring may start mid-buffer, and the rows then written
            # from ``_next`` on would overwrite the oldest ones while the new room stayed zeros
            old = self.arrays()
            self._X = np.concatenate([old, np.zeros((grown - len(old), self.dim), np.float32)])
            self._next = self._n
        room = len(self._X)
        idx = (self._next + np.arange(len(X))) % room if self._n + len(X) > room else None
        if idx is None:
            self._X[self._n : self._n + len(X)] = X
            self._n += len(X)
            self._next = self._n % room
        else:
            self._X[idx] = X
            self._n = min(room, self._n + len(X))
            self._next = int(idx[-1] + 1) % room

    def arrays(self) -> np.ndarray:
        """The rows, oldest first, as a fresh array (later adds never change it: a re-solve's snapshot)."""
        if self._n < len(self._X):
            return self._X[: self._n].copy()
        return np.concatenate([self._X[self._next :], self._X[: self._next]])

    def clear(self) -> None:
        self._X = np.zeros((0, self.dim), dtype=np.float32)
        self._next = self._n = 0

    @classmethod
    def from_rows(cls, dim: int, cap: int, X: np.ndarray) -> UnlabelledPool:
        pool = cls(dim, cap)
        if len(X):
            pool.add(X)
        return pool
