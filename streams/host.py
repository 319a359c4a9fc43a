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

Re-forming the label subsets (``RedClassifier.refit(resubset=True)``, seconds to tens of seconds) never
pauses labelling: after every ``reform_every`` valid examples the model thread takes a copy of the
model, a background child process re-forms the copy (``reform_in="thread"``: a thread), and
meanwhile the live model keeps labelling and learning;
every change made to the live model since the copy was taken is kept and replayed onto the copy, which is
then swapped in on the model thread (atomically: a prediction sees the old model or the new one, never a
half-built one) with the next generation, so its versions are higher than any before. A checkpoint is
not written while a re-forming is in flight (a restart replays the log from before it, and re-forms at
the same record), so the generation at a given log position is the same on every worker once swapped.

After every ``refit_every`` newly learned *valid* training examples (counted since the last refit or fit,
and kept in the checkpoint; hard negatives do not count) a full :meth:`RedClassifier.refit` runs right
after the incremental step of that record: on the copy the live learner's step is applied to (labels
meanwhile come from the model before it), or on the model thread while the log is replayed at start-up.
A refit is a function of the stored examples, so workers that learn the same records from the same
starting point reach the same model.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from driftlabel.models import ModelError, Ranking, RedClassifier
from driftlabel.streams.builds import (
    SeedData,
    background_pool,
    build_seed_model,
    fit_seed_model,
)
from driftlabel.streams.messages import ControlMessage, TrainingMessage, decode_vector
from driftlabel.streams.ports import Classifier, Embedder
from driftlabel.streams.reforming import Reform, Reforming
from driftlabel.streams.schedule import Op, plan_step
from driftlabel.streams.seed import SeedSet
from driftlabel.streams.settings import StreamSettings

__all__ = ["GENERATION", "EmbeddingCache", "ModelHost", "SeedSet"]

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


EMBED_CHUNK = 8
"""Texts the model thread embeds in one job for learning (training records, seed runs), so a
labelling batch queued meanwhile waits for at most one such job: 64 O*NET texts take ~0.7 s here, and an
O*NET seed run that grew by 240 texts held first labels up to 1.8 s (p99) when embedded 64 at a time."""

SLOW_JOB_S = 0.2
"""A model-thread job longer than this is logged (INFO, ``driftlabel worker -v``)."""

PLACE_CHUNK = 2
"""A new label's examples and description are embedded 2 at a time (~9 ms a job; 10 % more per text
than 8 at a time): each job is no longer than a labelling batch, so 50 O*NET labels added at once hold
first labels to 1.5x their idle p99 (2.2-2.5x at 8 at a time, the description a job of its own)."""


def _apply(model: Classifier, op: Op, args: tuple[Any, ...]) -> None:
    """Apply an observe or learn op of a step to ``model`` (the live one, or a copy)."""
    if op.kind == "observe":
        model.observe_embeddings(*args)
    else:
        model.learn_embeddings(*args)


class ModelHost(Reforming):
    """Owns the classifier and the single model thread; every method that touches the model is async."""

    def __init__(
        self,
        embedder: Embedder,
        expert_settings: Any = None,
        cache_size: int = 20000,
        refit_every: int | None = None,
        on_refit: Callable[[float], None] | None = None,
        reform_every: int = 0,
        on_reform: Callable[[float, float], None] | None = None,
        reform_in: str = "process",
    ) -> None:
        """``refit_every``: full refit after this many newly learned valid examples (0 disables; None
        takes the :class:`StreamSettings` default). ``on_refit(seconds)`` is called on the model thread
        after each refit (e.g. ``ServiceMetrics.observe_refit``). ``reform_every``: re-form the subsets
        in the background after this many valid examples (0 disables); ``on_reform(background_s,
        swap_s)`` after each swap."""
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
        #: True while the model is a fit on the log's leading run of seed records (no judge or human yet):
        #: a seed record that extends the run refits, so the model is the same however the run arrived
        self.seed_run = False
        #: the seed run's embeddings by text, kept while it lasts, so that a refit on a grown run embeds
        #: only the new texts (on the model thread, a chunk at a time)
        self._seed_vectors: dict[str, np.ndarray] = {}
        self.generation = 0  # swaps to a re-formed model
        if reform_every < 0:
            raise ValueError(f"reform_every must be >= 0, got {reform_every}")
        self.reform_every = reform_every
        self.on_reform = on_reform
        self.valid_since_reform = 0
        self.reform: Reform | None = None
        if reform_in not in ("process", "thread"):
            raise ValueError(f"reform_in must be 'process' or 'thread', got {reform_in!r}")
        self.reform_in = reform_in
        self._bg = ThreadPoolExecutor(max_workers=1, thread_name_prefix="driftlabel-reform")
        # builds the learner waits for (a grown seed run's fit, a new label's placement): not queued
        # behind a re-forming, which may hold the reform thread for minutes
        self._side = ThreadPoolExecutor(max_workers=1, thread_name_prefix="driftlabel-build")
        self._proc: ProcessPoolExecutor | None = None

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
            "valid_since_reform": self.valid_since_reform,
            "seed_run": self.seed_run,
        }

    def restore(self, state: dict[str, Any] | None) -> None:
        """Counters from a checkpoint (a format-1 checkpoint has none: they start at 0)."""
        st = state or {}
        self.position = int(st.get("position", 0))
        self.generation = int(st.get("generation", 0))
        self.valid_since_refit = int(st.get("valid_since_refit", 0))
        self.refits = int(st.get("refits", 0))
        self.valid_since_reform = int(st.get("valid_since_reform", 0))
        self.seed_run = bool(st.get("seed_run", False))

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the model thread."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._timed, fn, args)

    @staticmethod
    def _timed(fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        """``fn(*args)``, logged (INFO) when it held the model thread, i.e. labelling, past
        ``SLOW_JOB_S``: what to look at when first-label latency jumps."""
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            held = time.perf_counter() - t0
            if held > SLOW_JOB_S:
                log.info("model thread: %s ran %.2fs (labels waited)", getattr(fn, "__name__", fn), held)

    def close(self) -> None:
        self._bg.shutdown(wait=False, cancel_futures=True)
        self._side.shutdown(wait=False, cancel_futures=True)
        if self._proc is not None:
            self._proc.shutdown(wait=False, cancel_futures=True)
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
        """Model thread: embed and fit in one go (the first fit: there is nothing to label with yet)."""
        self._embed_seed(seed.texts_to_embed())
        self._install(self._build(self._seed_data(seed)), position, len(seed.negatives))

    def _embed_seed(self, texts: Sequence[str]) -> int:
        """Model thread: embed the seed-run texts not embedded yet; returns how many."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._seed_vectors))
        if missing:
            X = np.asarray(self.embedder.encode(missing), dtype=np.float32)
            if X.shape != (len(missing), self.embedder.dim):
                raise ModelError(f"embedder returned shape {X.shape} for {len(missing)} texts")
            self._seed_vectors.update(zip(missing, X, strict=True))
        return len(missing)

    def _seed_data(self, seed: SeedSet) -> SeedData:
        """What :meth:`_build` needs, as arrays taken now (the build may run on another thread)."""
        texts, labels, descriptions = seed.fit_data()
        vec = self._seed_vectors
        negs = seed.negatives
        return SeedData(
            X=np.stack([vec[t] for t in texts]) if texts else np.zeros((0, self.embedder.dim), np.float32),
            texts=texts,
            labels=labels,
            descriptions=descriptions,
            description_vectors={k: vec[d] for k, d in descriptions.items()},
            negatives_X=np.stack([vec[r.text] for r in negs]) if negs else None,
            negatives=[(r.text, r.label) for r in negs],
        )

    def _build(self, data: SeedData) -> Classifier:
        """A model fitted on a seed run, in this process (any thread: no state of the host is touched)."""
        return build_seed_model(data, self.expert_settings, self.embedder)

    def _build_in_process(self, data: SeedData) -> Classifier:
        """:meth:`_build` in the background child process (lowest priority, one BLAS thread), so the
        fit takes idle CPU rather than the embedder's; the model comes back through a saved copy."""
        if self._proc is None:
            self._proc = background_pool()
        with tempfile.TemporaryDirectory(prefix="driftlabel-seedfit-") as tmp:
            dst = Path(tmp) / "model"
            self._proc.submit(fit_seed_model, data, self.expert_settings, str(dst)).result()
            return RedClassifier.load(dst, embedder=self.embedder)

    def _install(self, model: Classifier, position: int | None, n_negatives: int) -> None:
        """Model thread: make a fit on the seed run the live model, at log ``position``."""
        self._retire(self.model)
        self.model = model
        self.restore({"position": position or 0, "seed_run": True})
        self.changes_since_checkpoint += 1 + n_negatives

    @staticmethod
    def _retire(old: Classifier | None) -> None:
        """A replaced live model lets go of its pending re-solve, which then stops unless the new model
        (a copy of it) still holds it."""
        release = getattr(old, "release_resolve", None)
        if release is not None:
            release()

    def end_seed_run(self) -> None:
        """A judge or human record arrived: from here on the model learns record by record."""
        self.seed_run = False
        self._seed_vectors = {}

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

    def _cache_missing(self, texts: Sequence[str]) -> int:
        """Embed the texts not in the cache yet and keep them there; returns how many."""
        missing = list(dict.fromkeys(t for t in texts if self.cache.get(t) is None))
        if missing:
            self.cache.put_many(missing, np.asarray(self.embedder.encode(missing), dtype=np.float32))
        return len(missing)

    async def prepare(self, records: Sequence[TrainingMessage], chunk: int = EMBED_CHUNK) -> None:
        """Embed the training texts this worker has not seen, a few per model-thread job, so that
        predictions queued meanwhile run between them (a batch of human records would otherwise hold
        the model thread for one long embedding)."""
        texts = [r.text for r in records if not self._carries_vector(r) and self.cache.get(r.text) is None]
        await self.run_chunked(self._cache_missing, texts, chunk)

    async def run_chunked(
        self, fn: Callable[[Sequence[str]], T], texts: Sequence[str], chunk: int = EMBED_CHUNK
    ) -> list[T]:
        """``fn`` on ``chunk`` texts at a time, each call its own model-thread job, so that predictions
        queued meanwhile run between them; the results in order."""
        return [await self.run(fn, texts[i : i + chunk]) for i in range(0, len(texts), chunk)]

    def _carries_vector(self, record: TrainingMessage) -> bool:
        """Does the record carry an embedding made by this worker's embedder?"""
        return record.embedding is not None and record.embedder == self.embedder.name

    def _vector(self, record: TrainingMessage) -> np.ndarray | None:
        """The embedding a ``stream`` record carries, if this worker's embedder made it (else None)."""
        if not self._carries_vector(record):
            return None
        assert record.embedding is not None
        x = decode_vector(record.embedding)
        return x if len(x) == self.embedder.dim else None

    def _learn(self, records: Sequence[TrainingMessage], position: int | None = None) -> None:
        """Learn a batch of training records in log order on the model thread (the model adds new labels
        of valid rows, drops "not L" for unknown L; ``stream`` records go to its unlabelled pool), with
        the refits and the re-forming they make due (:meth:`_plan`); ``position``: the log position the
        model includes afterwards."""
        if position is not None:
            self.position = position
        if not records:  # advance(): the position moves, the model does not
            return
        rows = self._stream_vectors(records)
        todo = [i for i, v in enumerate(rows) if v is None]
        X = self._stack(rows, todo, self._embed_cached([records[i].text for i in todo]))
        for op in self._plan(records):
            if op.kind == "refit":
                self._refit()
            elif op.kind == "reform":
                self._begin_reform()
            else:
                args = self._op_args(op, records, X)
                _apply(self.live, op, args)
                self._count(op, args)

    def _plan(self, records: Sequence[TrainingMessage]) -> list[Op]:
        """What learning ``records`` does to the model, in order (:func:`plan_step`)."""
        unlabelled = np.array([r.source == "stream" for r in records], dtype=bool)
        valid = np.array([bool(r.valid) for r in records], dtype=bool)
        return plan_step(
            unlabelled, valid, self.valid_since_refit, self.refit_every, self.valid_since_reform,
            self.reform_every,
        )  # fmt: skip

    def _stream_vectors(self, records: Sequence[TrainingMessage]) -> list[np.ndarray | None]:
        """The embedding each ``stream`` record carries (when this worker's embedder made it); None where
        the text must be embedded (every labelled record: its text, as every worker embeds it)."""
        return [self._vector(r) if r.source == "stream" else None for r in records]

    @staticmethod
    def _stack(rows: list[np.ndarray | None], todo: Sequence[int], X_todo: np.ndarray) -> np.ndarray:
        """A step's embeddings: ``rows`` with the ``todo`` ones filled from ``X_todo``."""
        for j, i in enumerate(todo):
            rows[i] = X_todo[j]
        return np.stack([r for r in rows if r is not None]).astype(np.float32, copy=False)

    @staticmethod
    def _op_args(op: Op, records: Sequence[TrainingMessage], X: np.ndarray) -> tuple[Any, ...]:
        """The arguments of ``observe_embeddings`` / ``learn_embeddings`` for an op of a step."""
        if op.kind == "observe":
            return (X[op.lo : op.hi],)
        part = records[op.lo : op.hi]
        return (
            X[op.lo : op.hi],
            [r.text for r in part],
            [r.label for r in part],
            [bool(r.valid) for r in part],
        )

    def _count(self, op: Op, args: tuple[Any, ...]) -> None:
        """Count an applied observe or learn op (:meth:`_learned`)."""
        if op.kind == "observe":
            self._remember("observe", args)
            self.changes_since_checkpoint += len(args[0])
        else:
            self._learned(args)

    def _learned(self, args: tuple[Any, ...]) -> None:
        """Count a learned ``learn_embeddings(*args)`` (the refit and re-forming schedules, the
        checkpoint's change count) and keep it for a re-forming in flight."""
        self._remember("learn", args)
        n_valid = sum(bool(v) for v in args[3])
        self.changes_since_checkpoint += len(args[1])
        self.valid_since_refit += n_valid
        self.valid_since_reform += n_valid

    def copy_model(self, model: Classifier | None = None) -> Classifier:
        """An independent copy of ``model`` (default: the live one) sharing the embedder
        (``RedClassifier.copy`` when it has one)."""
        model = self.live if model is None else model
        if hasattr(model, "copy"):
            return model.copy()
        return copy.deepcopy(model, {id(self.embedder): self.embedder})

    def _refit(self) -> None:
        """Full refit of the experts from the stored examples (model thread; blocks predictions)."""
        t0 = time.perf_counter()
        self.live.refit()
        self._refitted(time.perf_counter() - t0)

    def _refitted(self, dt: float) -> None:
        """Count a refit of the live model that took ``dt`` seconds (here or on a copy)."""
        n = self.valid_since_refit
        model = self.live
        self._remember("refit", ())
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
        self._apply_control(self.live, msg)
        self._remember("control", (msg,))
        self.changes_since_checkpoint += 1

    @staticmethod
    def _apply_control(model: Classifier, msg: ControlMessage) -> None:
        if msg.op == "add_class":
            model.add_class(
                msg.label,
                description=msg.description,
                examples=list(msg.examples or ()),
                synthetic=bool(getattr(msg, "synthetic", False)),
            )
        elif msg.op == "remove_class":
            model.remove_class(msg.label)
        elif msg.op == "describe_class" and msg.description is not None:
            model.describe_class(msg.label, msg.description)

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

    async def refit_seed_run(self, seed: SeedSet, position: int, chunk: int = EMBED_CHUNK) -> float:
        """Refit on a seed run that grew, without a labelling pause; returns the seconds it took.

        The new texts are embedded on the model thread ``chunk`` at a time (predictions queued meanwhile
        run between the chunks; every embedder call stays on that thread), the fit runs on the
        background thread, and the finished model is swapped in by one model-thread job: until then,
        labels come from the previous fit and carry its version. The fit runs where re-formings do
        (``reform_in``: the niced child process, or a thread). The result is the model :meth:`fit`
        builds from the same run (same code, same embeddings), so a worker that fits the run in one go
        later agrees with this one. (Until 6 December this refit ran on the model thread: labelling
        stopped for the whole fit, for every ``add_class`` before the first judge or human record.)"""
        t0 = time.perf_counter()
        todo = [t for t in dict.fromkeys(seed.texts_to_embed()) if t not in self._seed_vectors]
        await self.run_chunked(self._embed_seed, todo, chunk)
        data = self._seed_data(seed)
        build = self._build_in_process if self.reform_in == "process" else self._build
        model = await asyncio.get_running_loop().run_in_executor(self._side, build, data)
        await self.run(self._install, model, position, len(data.negatives))
        return time.perf_counter() - t0

    async def load(self, model_dir: Path, state: dict[str, Any] | None = None) -> None:
        await self.run(self._load, model_dir, state)

    async def predict(self, texts: list[str], top_k: int) -> tuple[np.ndarray, Ranking, int, int]:
        """(embeddings, ranking, model version, number of classes) of a batch."""
        return await self.run(self._predict, texts, top_k)

    async def wait_for_resolves(self, within: int | None = None) -> int:
        """Wait here, off the model thread, for the background re-solves the next call could otherwise wait
        for on it: those that learning ``within`` more rows would swap in (None: any, before a save or a
        settle). Labelling goes on meanwhile; the model is the same either way (the swap point is a log
        position). At O*NET a re-solve runs ~20 s: a checkpoint (``save`` keeps its result) or a step that
        reached its swap point while it ran held labelling that long. Returns how many it waited for."""
        model = self.model
        unfinished = getattr(model, "unfinished_resolves", None)
        futures = unfinished(within) if unfinished is not None else []
        if futures:  # a failed solve raises where its result is used, not here; our own cancel does
            await asyncio.wait([asyncio.wrap_future(f) for f in futures])
        return len(futures)

    async def learn(
        self, records: Sequence[TrainingMessage], position: int | None = None, *, live: bool = False
    ) -> None:
        """Learn ``records``; the model then includes the log up to ``position``.

        ``live`` (the learner, once it has caught up) keeps the model thread free for predictions: the
        step (labelled and ``stream`` records, and a refit or a re-forming it makes due) is applied to a
        copy of the model on the build thread and the copy is swapped in, as a new label is placed
        (:meth:`control`). Learning is cheap until a young label reaches a milestone and its column is
        re-solved against every stored row: ~0.15 s at O*NET's 923 labels, 0.3-0.5 s in a busy worker, a
        hold of labelling that 300 human records arriving at once turned into a first-label p99 of ~1 s;
        a refit held it for the whole refit (O*NET: p99 19.4 s; on the copy 104 ms). The model thread now
        embeds (a chunk at a time), copies (3-4 ms at O*NET) and swaps; the copy makes the same calls, so
        every worker gets the same model. A re-forming due at one of the records starts from a copy
        taken there, on the build thread, as :meth:`_learn` would take it; a refit due (``refit_every``)
        runs on the copy too, labels coming from the model before it meanwhile. A step that makes two
        re-formings due (or one while one is in flight) is embedded a chunk at a time (:meth:`prepare`)
        and learned on the model thread."""
        plan = self._copy_plan(records) if live else None
        if plan is None:
            if live:
                await self.prepare(records)
            return await self.run(self._learn, records, position)
        rows = self._stream_vectors(records)
        todo = [i for i, v in enumerate(rows) if v is None]
        X = self._stack(rows, todo, await self._embed_chunked([records[i].text for i in todo]))
        steps = [(op, self._op_args(op, records, X)) for op in plan]
        base, clone = await self.run(lambda: (self.live, self.copy_model()))

        def build() -> list[Any]:
            """The step on the copy, op by op: a refit's seconds, a re-forming's starting copy."""
            done: list[Any] = []
            for op, args in steps:
                if op.kind == "refit":
                    t0 = time.perf_counter()
                    clone.refit()
                    done.append(time.perf_counter() - t0)
                elif op.kind == "reform":
                    done.append(self.copy_model(clone))
                else:
                    _apply(clone, op, args)
                    done.append(None)
            return done

        done = await asyncio.get_running_loop().run_in_executor(self._side, build)
        await self.run(self._install_learned, base, clone, steps, done, position)

    def _copy_plan(self, records: Sequence[TrainingMessage]) -> list[Op] | None:
        """The plan of ``records`` (:meth:`_plan`) if :meth:`learn` can apply it to a copy, else None: a
        model that copies itself, and at most one re-forming due, none in flight (a second one would
        first wait for the one before and swap it in, on the model thread)."""
        if not records or not self.ready or not hasattr(self.live, "copy"):
            return None
        plan = self._plan(records)
        reforms = sum(op.kind == "reform" for op in plan)
        return plan if reforms == 0 or (reforms == 1 and self.reform is None) else None

    def _install_learned(
        self,
        base: Classifier,
        clone: Classifier,
        steps: Sequence[tuple[Op, tuple[Any, ...]]],
        done: Sequence[Any],
        position: int | None,
    ) -> None:
        """Model thread: swap in the copy that applied ``steps`` and count them as :meth:`_learn` does,
        a re-forming starting from the copy taken at its point of the step (``done``)."""
        if self.live is not base:  # only the learner changes the model, one step at a time
            self._retire(clone)
            raise RuntimeError("the live model changed while a copy of it learned: the step is not applied")
        self._retire(base)
        self.model = clone
        if position is not None:
            self.position = position
        for (op, args), result in zip(steps, done, strict=True):
            if op.kind == "refit":
                self._refitted(result)
            elif op.kind == "reform":
                self._begin_reform(result)
            else:
                self._count(op, args)

    async def control(self, msg: ControlMessage, position: int | None = None) -> None:
        """Apply a control op at log ``position``.

        A new label (``add_class``) is placed on a copy of the model on a background thread and swapped
        in whole: the placement re-solves the new label's column against every stored row (~0.14 s at
        O*NET's 923 labels on this machine, ~0.65 s through a busy worker) and 50 classes added at once
        held the model thread for 33 s, first-label p50 ~1 s. Now the model thread only embeds the
        examples (a chunk at a time), copies the model (3-4 ms at O*NET) and swaps; labels come from the
        previous model, with its version, until the swap. The copy applies the same call the live model
        would have (same embeddings, same RNG state), so every worker gets the same model. An
        ``add_class`` of a label that exists already learns its examples, the same way on a copy (a
        proposal named after a known class held a CLINC150 worker's model thread 2.96 s inline).
        ``remove_class`` and ``describe_class`` are cheap and run on the model thread."""
        if msg.op != "add_class":
            await self.run(self._control, msg, position)
            return
        texts = list(msg.examples or ())
        # the description with the examples: one model-thread job for a handful of texts, not two
        E = await self._embed_chunked(texts + ([msg.description] if msg.description else []), PLACE_CHUNK)
        X, D = E[: len(texts)], (E[len(texts)] if msg.description else None)
        clone = await self.run(self.copy_model)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._side, self._add_class_embedded, clone, msg, X, D)
        await self.run(self._install_control, clone, msg, position)

    async def _embed_chunked(self, texts: Sequence[str], chunk: int = EMBED_CHUNK) -> np.ndarray:
        """Embeddings of ``texts`` computed on the model thread ``chunk`` at a time (predictions queued
        meanwhile run between the chunks)."""
        parts = await self.run_chunked(self._embed_cached, texts, chunk)
        return np.concatenate(parts) if parts else np.zeros((0, self.embedder.dim), dtype=np.float32)

    @staticmethod
    def _add_class_embedded(
        model: Classifier, msg: ControlMessage, X: np.ndarray, description: np.ndarray | None
    ) -> None:
        """``add_class`` with its embeddings given (any thread: ``model`` is a copy)."""
        model.add_class_embeddings(
            msg.label,
            X,
            list(msg.examples or ()),
            description=msg.description,
            description_embedding=description,
            synthetic=bool(getattr(msg, "synthetic", False)),
        )

    def _install_control(self, model: Classifier, msg: ControlMessage, position: int | None) -> None:
        """Model thread: the copy with the control op applied becomes the live model."""
        self._retire(self.model)
        self.model = model
        if position is not None:
            self.position = position
        self._remember("control", (msg,))
        self.changes_since_checkpoint += 1

    async def advance(self, position: int) -> None:
        """The model includes the log up to ``position`` without a change (bad or repeated records)."""
        await self.run(self._learn, [], position)

    async def labels(self) -> list[str]:
        """The live model's labels."""
        return await self.run(lambda: list(self.live.labels))

    async def embed(self, texts: list[str]) -> np.ndarray:
        """Embeddings of ``texts`` on the model thread (cached ones are not computed again)."""
        return await self.run(self._embed_cached, texts)

    async def judge_candidates(
        self, X: np.ndarray, rows: list[int], cands: list[list[tuple[str, float]]], n: int, c: int
    ) -> list[list[dict[str, Any]]]:
        return await self.run(self._candidates, X, rows, cands, n, c)

    async def far_from_store(self, X: np.ndarray, quantile: float | None = None) -> np.ndarray:
        """Which embeddings sit farther from every stored example than the calibrated similarity
        (``nearest_similarity`` below ``oos_similarity_threshold(quantile)``; default: the out-of-scope
        one): texts no known class may cover, whatever the experts' ranking says; candidates for a new
        class."""

        def job() -> np.ndarray:
            m = self.live
            return np.asarray(m.nearest_similarity(X) < m.oos_similarity_threshold(quantile), dtype=bool)

        return await self.run(job)

    async def near_known_class(self, centroid: np.ndarray, quantile: float) -> tuple[float, float]:
        """The live model's :meth:`RedClassifier.known_class_edge`: is a group the edge of a known class?"""
        return await self.run(lambda: self.live.known_class_edge(centroid, quantile))

    async def top_labels(self, X: np.ndarray) -> list[str]:
        """The live model's first label for each embedding."""
        return await self.run(lambda: list(self.live.predict_embeddings(X)))

    async def nearest_similarity(self, X: np.ndarray) -> np.ndarray:
        """Each embedding's cosine similarity to its nearest stored example (the live model's store)."""
        return await self.run(lambda: np.asarray(self.live.nearest_similarity(X), dtype=np.float32))

    async def describe(self) -> tuple[int, int, int]:
        """(classes, subsets, model_version)."""

        def job() -> tuple[int, int, int]:
            m = self.live
            return len(m.labels), int(m.n_subsets), self.version

        return await self.run(job)
