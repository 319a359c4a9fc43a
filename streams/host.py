"""The model host: one ``RedClassifier`` behind one thread (learn, control ops, refit, versions).

Embedding and the experts are CPU-bound and not thread-safe, and faust runs every agent on one asyncio
loop. So every model operation (embed + rank, learn, control ops, save) runs as a job on a single worker
thread: the loop stays free for Kafka heartbeats and judge calls, and the jobs are serialised, so a
checkpoint always matches the offsets of the records applied before it.

The embeddings this worker computed for its own texts are kept in a small LRU cache keyed by text, so
learning an accepted pair does not embed the text a second time.

Versions: the model a worker holds after applying the first ``n`` records of the learning log (in
generation ``g``, see below) is the same on every worker, so :attr:`ModelHost.version` is
``g * GENERATION + n``, not the classifier's own change counter (which counts learn *calls* and so depends
on how the log happened to be batched). Every label carries it; it only grows. :meth:`ModelHost.state`
holds every counter that decides future model changes (position, generation, the refit schedule), and
goes into each checkpoint with the model.

After every ``refit_every`` newly learned *valid* training examples (counted since the last refit or fit,
and kept in the checkpoint; hard negatives do not count) the model thread runs a full
:meth:`RedClassifier.refit` right after the incremental step of that batch. A refit is a function of the
stored examples, so workers that learn the same records in the same batches from the same starting point
reach the same model.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from driftlabel.models import Ranking, RedClassifier
from driftlabel.streams.messages import ControlMessage, TrainingMessage
from driftlabel.streams.ports import Classifier, Embedder
from driftlabel.streams.settings import StreamSettings

__all__ = ["GENERATION", "EmbeddingCache", "ModelHost", "SeedSet", "refit_cuts"]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: version step of one model generation (a swap to a re-formed model): versions stay readable
#: (generation 2, log position 1234 -> 2000001234) and always grow
GENERATION = 1_000_000_000


class EmbeddingCache:
    """LRU map text -> embedding row (float32)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._d: OrderedDict[str, np.ndarray] = OrderedDict()

    def put_many(self, texts: Sequence[str], X: np.ndarray) -> None:
        if self.size <= 0:
            return
        for t, row in zip(texts, X, strict=True):
            self._d[t] = row
            self._d.move_to_end(t)
        while len(self._d) > self.size:
            self._d.popitem(last=False)

    def get(self, text: str) -> np.ndarray | None:
        return self._d.get(text)

    def __len__(self) -> int:
        return len(self._d)


class SeedSet:
    """What a fresh worker collects from ``training`` and ``control`` before its first fit."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.labels: list[str] = []
        self.negatives: list[TrainingMessage] = []
        self.descriptions: dict[str, str] = {}
        self.removed: set[str] = set()

    def add_training(self, records: Sequence[TrainingMessage]) -> None:
        for r in records:
            if r.valid:
                self.texts.append(r.text)
                self.labels.append(r.label)
                self.removed.discard(r.label)
            else:
                self.negatives.append(r)

    def add_control(self, msg: ControlMessage) -> None:
        if msg.op == "add_class":
            self.removed.discard(msg.label)
            for e in msg.examples or ():
                self.texts.append(e)
                self.labels.append(msg.label)
            if msg.description:
                self.descriptions[msg.label] = msg.description
        elif msg.op == "describe_class" and msg.description:
            self.descriptions[msg.label] = msg.description
        elif msg.op == "remove_class":
            self.removed.add(msg.label)

    def fit_data(self) -> tuple[list[str], list[str], dict[str, str]]:
        keep = [i for i, lab in enumerate(self.labels) if lab not in self.removed]
        texts = [self.texts[i] for i in keep]
        labels = [self.labels[i] for i in keep]
        known = set(labels)
        return texts, labels, {k: v for k, v in self.descriptions.items() if k in known}

    @property
    def n_labels(self) -> int:
        return len(set(self.labels) - self.removed)


def refit_cuts(valid: np.ndarray, counted: int, every: int) -> list[tuple[int, int]]:
    """Cut a batch into pieces so that a refit falls right after the record that makes the count of
    valid examples reach ``every``: the refit points are then positions in the log, the same however
    the log happens to be batched."""
    n = len(valid)
    if not every or n == 0:
        return [(0, n)]
    cum = counted + np.cumsum(valid.astype(np.int64))
    ends = [int(i) + 1 for i in np.flatnonzero((cum % every == 0) & valid & (cum > 0))]
    cuts, lo = [], 0
    for hi in ends:
        cuts.append((lo, hi))
        lo = hi
    if lo < n:
        cuts.append((lo, n))
    return cuts


class ModelHost:
    """Owns the classifier and the single model thread; every method that touches the model is async."""

    def __init__(
        self,
        embedder: Embedder,
        expert_settings: Any = None,
        cache_size: int = 20000,
        refit_every: int | None = None,
        on_refit: Callable[[float], None] | None = None,
    ) -> None:
        """``refit_every``: full refit after this many newly learned valid examples (0 disables; None
        takes the :class:`StreamSettings` default). ``on_refit(seconds)`` is called on the model thread
        after each refit (e.g. ``ServiceMetrics.observe_refit``)."""
        self.embedder = embedder
        self.expert_settings = expert_settings
        self.model: Classifier | None = None
        self.cache = EmbeddingCache(cache_size)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="driftlabel-model")
        self.changes_since_checkpoint = 0
        self.embed_seconds = 0.0  # time spent in embedder.encode for predictions (the hot path's cost)
        if refit_every is None:
            refit_every = int(StreamSettings.model_fields["refit_every"].default)
        if refit_every < 0:
            raise ValueError(f"refit_every must be >= 0, got {refit_every}")
        self.refit_every = refit_every
        self.on_refit = on_refit
        self.valid_since_refit = 0  # valid examples learned since the last refit / fit
        self.refits = 0  # refits in this model's history (checkpointed)
        self.refit_seconds = 0.0  # time this host spent in them
        self.position = 0  # learning-log records the model includes
        self.generation = 0  # swaps to a re-formed model

    @property
    def version(self) -> int:
        """The model version labels carry: a function of the log position and the generation."""
        return self.generation * GENERATION + self.position

    def state(self) -> dict[str, Any]:
        """The counters that, with the model, decide every future change (for the checkpoint)."""
        return {
            "position": self.position,
            "generation": self.generation,
            "valid_since_refit": self.valid_since_refit,
            "refits": self.refits,
        }

    def restore(self, state: dict[str, Any] | None) -> None:
        """Counters from a checkpoint (a format-1 checkpoint has none: they start at 0)."""
        st = state or {}
        self.position = int(st.get("position", 0))
        self.generation = int(st.get("generation", 0))
        self.valid_since_refit = int(st.get("valid_since_refit", 0))
        self.refits = int(st.get("refits", 0))

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the model thread."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    @property
    def ready(self) -> bool:
        return self.model is not None

    # -- jobs (run on the model thread) ------------------------------------------------------------------
    @property
    def live(self) -> Classifier:
        """The current model (raises if none is loaded yet: call :meth:`fit` or :meth:`load` first)."""
        if self.model is None:
            raise RuntimeError("no model yet: the worker fits or loads one before it labels")
        return self.model

    def _fit(self, seed: SeedSet, position: int | None = None) -> None:
        texts, labels, descriptions = seed.fit_data()
        model = RedClassifier(embedder=self.embedder, settings=self.expert_settings)
        model.fit(texts, labels, descriptions=descriptions or None)
        self.model = model
        self.restore({"position": position or 0})
        if seed.negatives:
            self._learn(seed.negatives)
        self.valid_since_refit = 0
        self.changes_since_checkpoint += 1

    def _load(self, model_dir: Path, state: dict[str, Any] | None = None) -> None:
        self.model = RedClassifier.load(model_dir, embedder=self.embedder)
        self.restore(state)

    def _predict(self, texts: list[str], top_k: int) -> tuple[np.ndarray, Ranking, int, int]:
        t0 = time.perf_counter()
        X = np.asarray(self.embedder.encode(texts), dtype=np.float32)
        self.embed_seconds += time.perf_counter() - t0
        self.cache.put_many(texts, X)
        model = self.live
        ranking = model.rank_embeddings(X, top_k=top_k)
        return X, ranking, self.version, len(model.labels)

    def _embed_cached(self, texts: Sequence[str]) -> np.ndarray:
        rows: list[np.ndarray | None] = [self.cache.get(t) for t in texts]
        missing = [i for i, r in enumerate(rows) if r is None]
        if missing:
            X_new = np.asarray(self.embedder.encode([texts[i] for i in missing]), dtype=np.float32)
            for j, i in enumerate(missing):
                rows[i] = X_new[j]
        return np.stack([r for r in rows if r is not None]).astype(np.float32, copy=False)

    def _learn(self, records: Sequence[TrainingMessage], position: int | None = None) -> None:
        """Learn a batch of training records (the model adds new labels of valid rows, drops "not L" for
        unknown L); ``position``: the log position the model includes afterwards."""
        if position is not None:
            self.position = position
        if not records:
            return
        texts = [r.text for r in records]
        X = self._embed_cached(texts)
        valid = np.array([r.valid for r in records], dtype=bool)
        for lo, hi in refit_cuts(valid, self.valid_since_refit, self.refit_every):
            part = records[lo:hi]
            self.live.learn_embeddings(
                X[lo:hi], texts[lo:hi], [r.label for r in part], valid=valid[lo:hi].tolist()
            )
            self.changes_since_checkpoint += len(part)
            self.valid_since_refit += int(valid[lo:hi].sum())
            if self.refit_every and self.valid_since_refit >= self.refit_every:
                self._refit()

    def _refit(self) -> None:
        """Full refit of the experts from the stored examples (model thread; blocks predictions)."""
        n = self.valid_since_refit
        t0 = time.perf_counter()
        model = self.live
        model.refit()
        dt = time.perf_counter() - t0
        self.valid_since_refit = 0
        self.refits += 1
        self.refit_seconds += dt
        log.info(
            "refit after %d new valid examples: %d stored, model version %d, %.1fs",
            n,
            int(model.n_examples),
            int(model.model_version),
            dt,
        )
        if self.on_refit is not None:
            self.on_refit(dt)

    def _control(self, msg: ControlMessage, position: int | None = None) -> None:
        if position is not None:
            self.position = position
        model = self.live
        if msg.op == "add_class":
            model.add_class(msg.label, description=msg.description, examples=list(msg.examples or ()))
        elif msg.op == "remove_class":
            model.remove_class(msg.label)
        elif msg.op == "describe_class" and msg.description is not None:
            model.describe_class(msg.label, msg.description)
        self.changes_since_checkpoint += 1

    def _candidates(
        self, X: np.ndarray, rows: list[int], cands: list[list[tuple[str, float]]], n: int, c: int
    ) -> list[list[dict[str, Any]]]:
        """Judge candidates (description + nearest known-good examples) for the routed rows."""
        model = self.live
        descriptions = model.descriptions
        known = set(model.labels)
        return [
            [
                {
                    "label": lab,
                    "probability": float(p),
                    "description": descriptions.get(lab),
                    "examples": list(model.nearest_examples(lab, X[i], c=c)) if c > 0 else [],
                }
                for lab, p in row[:n]
                if lab in known
            ]
            for i, row in zip(rows, cands, strict=True)
        ]

    # -- async API ---------------------------------------------------------------------------------------
    async def fit(self, seed: SeedSet, position: int | None = None) -> None:
        """First fit on the seed records; the model then includes the log up to ``position``."""
        await self.run(self._fit, seed, position)

    async def load(self, model_dir: Path, state: dict[str, Any] | None = None) -> None:
        await self.run(self._load, model_dir, state)

    async def predict(self, texts: list[str], top_k: int) -> tuple[np.ndarray, Ranking, int, int]:
        """(embeddings, ranking, model version, number of classes) of a batch."""
        return await self.run(self._predict, texts, top_k)

    async def learn(self, records: Sequence[TrainingMessage], position: int | None = None) -> None:
        """Learn ``records``; the model then includes the log up to ``position``."""
        return await self.run(self._learn, records, position)

    async def control(self, msg: ControlMessage, position: int | None = None) -> None:
        await self.run(self._control, msg, position)

    async def advance(self, position: int) -> None:
        """The model includes the log up to ``position`` without a change (bad or repeated records)."""
        await self.run(self._learn, [], position)

    async def judge_candidates(
        self, X: np.ndarray, rows: list[int], cands: list[list[tuple[str, float]]], n: int, c: int
    ) -> list[list[dict[str, Any]]]:
        return await self.run(self._candidates, X, rows, cands, n, c)

    async def describe(self) -> tuple[int, int, int]:
        """(classes, subsets, model_version)."""

        def job() -> tuple[int, int, int]:
            m = self.live
            return len(m.labels), int(m.n_subsets), self.version

        return await self.run(job)
