"""The model host: one ``RedClassifier`` behind one thread (learn, control ops, refit, versions).

Embedding and the experts are CPU-bound and not thread-safe, and faust runs every agent on one asyncio
loop. So every model operation (embed + rank, learn, control ops, save) runs as a job on a single worker
thread: the loop stays free for Kafka heartbeats and judge calls, and the jobs are serialised, so a
checkpoint always matches the offsets of the records applied before it.

The embeddings this worker computed for its own texts are kept in a small LRU cache keyed by text, so
learning an accepted pair does not embed the text a second time.

Incremental learning (SGD with replay) moves the experts slowly, so after every ``refit_every`` newly
learned *valid* training examples (counted since the last refit, fit or checkpoint load; hard negatives do
not count) the model thread runs a full :meth:`RedClassifier.refit` right after the incremental step of
that batch. A refit is a function of the stored examples, so workers that learn the same records in the
same batches from the same starting point reach the same model.
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

__all__ = ["EmbeddingCache", "ModelHost", "SeedSet"]

log = logging.getLogger(__name__)
T = TypeVar("T")


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
        self.valid_since_refit = 0  # valid examples learned since the last refit / fit / load
        self.refits = 0  # refits run by this host
        self.refit_seconds = 0.0  # time they took, in all

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

    def _fit(self, seed: SeedSet) -> None:
        texts, labels, descriptions = seed.fit_data()
        model = RedClassifier(embedder=self.embedder, settings=self.expert_settings)
        model.fit(texts, labels, descriptions=descriptions or None)
        self.model = model
        if seed.negatives:
            self._learn(seed.negatives)
        self.valid_since_refit = 0
        self.changes_since_checkpoint += 1

    def _load(self, model_dir: Path) -> None:
        self.model = RedClassifier.load(model_dir, embedder=self.embedder)
        # The count is not in the checkpoint: a loaded model counts from its load (see docs/streaming.md).
        self.valid_since_refit = 0

    def _predict(self, texts: list[str], top_k: int) -> tuple[np.ndarray, Ranking, int, int]:
        t0 = time.perf_counter()
        X = np.asarray(self.embedder.encode(texts), dtype=np.float32)
        self.embed_seconds += time.perf_counter() - t0
        self.cache.put_many(texts, X)
        model = self.live
        ranking = model.rank_embeddings(X, top_k=top_k)
        return X, ranking, int(model.model_version), len(model.labels)

    def _embed_cached(self, texts: Sequence[str]) -> np.ndarray:
        rows: list[np.ndarray | None] = [self.cache.get(t) for t in texts]
        missing = [i for i, r in enumerate(rows) if r is None]
        if missing:
            X_new = np.asarray(self.embedder.encode([texts[i] for i in missing]), dtype=np.float32)
            for j, i in enumerate(missing):
                rows[i] = X_new[j]
        return np.stack([r for r in rows if r is not None]).astype(np.float32, copy=False)

    def _learn(self, records: Sequence[TrainingMessage]) -> None:
        """Learn a batch of training records (the model adds new labels of valid rows, drops "not L" for
        unknown L)."""
        texts = [r.text for r in records]
        X = self._embed_cached(texts)
        self.live.learn_embeddings(X, texts, [r.label for r in records], valid=[r.valid for r in records])
        self.changes_since_checkpoint += len(records)
        self.valid_since_refit += sum(1 for r in records if r.valid)
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

    def _control(self, msg: ControlMessage) -> None:
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
    async def fit(self, seed: SeedSet) -> None:
        await self.run(self._fit, seed)

    async def load(self, model_dir: Path) -> None:
        await self.run(self._load, model_dir)

    async def predict(self, texts: list[str], top_k: int) -> tuple[np.ndarray, Ranking, int, int]:
        """(embeddings, ranking, model version, number of classes) of a batch."""
        return await self.run(self._predict, texts, top_k)

    async def learn(self, records: Sequence[TrainingMessage]) -> None:
        return await self.run(self._learn, records)

    async def control(self, msg: ControlMessage) -> None:
        await self.run(self._control, msg)

    async def judge_candidates(
        self, X: np.ndarray, rows: list[int], cands: list[list[tuple[str, float]]], n: int, c: int
    ) -> list[list[dict[str, Any]]]:
        return await self.run(self._candidates, X, rows, cands, n, c)

    async def describe(self) -> tuple[int, int, int]:
        """(classes, subsets, model_version)."""

        def job() -> tuple[int, int, int]:
            m = self.live
            return len(m.labels), int(m.n_subsets), int(m.model_version)

        return await self.run(job)
