"""Checkpoint and replay: the learning loop every worker runs over the learning log.

The learning log is the ``training`` topic, created with ONE partition so that it has one total order.
Control ops reach it through the worker that owns the ``control`` partition (the sequencer agent in
:mod:`~driftlabel.streams.worker` appends each one as ``{"kind": "control", ..., "from": position}``), so
a control op is ordered against training records exactly, by the log, never by timestamp. The model is
then a function of the log: the same records in the same order give the same model on every worker.
Repeats (a writer that crashed and retried, a control op forwarded twice) are recognised by
:func:`~driftlabel.streams.messages.log_digest` and learned once; the digests are in the checkpoint.

Start-up: load the newest usable checkpoint (model, offsets, the host's counters, the digests), or
fit on the log's leading seed run (seed records and control ops before the first judge or human record,
:func:`seed_run_length`; seed records that extend the run later refit, so a late worker's fit is the
same as an early one's); then replay the log from the checkpoint's offsets to its end; only then is the
worker ready to label. Afterwards: apply every new record as it arrives and checkpoint
now and then. Bad records are dead-lettered by ONE worker, the one that owns ``control`` partition 0
(``has_role``), through the worker's deduplicated dead letters; others keep them pending in case they
take that role before the owner wrote them. Which record does what is decided by the pure
:func:`plan_steps`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from aiokafka import ConsumerRecord

from driftlabel.models.errors import ModelError
from driftlabel.streams.checkpoint import Checkpoint, list_checkpoints, read_checkpoint, write_checkpoint
from driftlabel.streams.errors import CheckpointError, InvalidMessageError
from driftlabel.streams.follower import Follower
from driftlabel.streams.host import ModelHost, SeedSet
from driftlabel.streams.messages import ControlMessage, TrainingMessage, log_digest, parse_log_record
from driftlabel.streams.metrics import ServiceMetrics
from driftlabel.streams.settings import KafkaSettings, StreamSettings
from driftlabel.streams.topics import TopicNames

__all__ = ["Learner", "Step", "plan_steps", "seed_run_length"]

log = logging.getLogger(__name__)

#: dead_letter(raw, error, topic, partition, offset)
DeadLetterFn = Callable[[bytes | None, InvalidMessageError, str, int, int], Awaitable[None]]


@dataclass
class Step:
    """One unit of model work: a batch of training records, or one control op (never both)."""

    training: list[TrainingMessage] = field(default_factory=list)
    control: ControlMessage | None = None
    #: digests of the good records, in order (training rows, or the one control op)
    digests: list[int] = field(default_factory=list)
    #: the records this step consumes (their offsets are marked applied after it)
    records: list[ConsumerRecord] = field(default_factory=list)
    #: records that failed validation, with why
    bad: list[tuple[ConsumerRecord, InvalidMessageError]] = field(default_factory=list)


def plan_steps(
    records: Sequence[ConsumerRecord],
    seen: set[int] | None = None,
    *,
    max_bytes: int,
    max_chars: int,
    max_training: int = 0,
) -> list[Step]:
    """Cut log records (in log order) into steps: runs of training records, each control op on its own,
    so that a control op applies exactly between the records before and after it; a run is cut after
    ``max_training`` training records (0: never), so each step is one short model-thread job. Records
    whose digest is in ``seen`` (repeats) are consumed but not applied; ``seen`` is not changed here.
    ``stream`` records (unlabelled) have no digest and are always applied."""
    seen = seen if seen is not None else set()
    steps: list[Step] = []
    cur = Step()
    batch: set[int] = set()
    for rec in records:
        if max_training and len(cur.training) >= max_training:
            steps.append(cur)
            cur = Step()
        try:
            msg, source = parse_log_record(rec.value, max_bytes=max_bytes, max_chars=max_chars)
        except InvalidMessageError as exc:
            cur.bad.append((rec, exc))
            cur.records.append(rec)
            continue
        if isinstance(msg, TrainingMessage) and msg.source == "stream":
            # unlabelled rows are not deduplicated: a repeat (a writer's retry) adds one more pool row on
            # every worker alike, and keeping a digest per streamed text would grow without bound
            cur.training.append(msg)
            cur.records.append(rec)
            continue
        digest = log_digest(msg, source)
        if digest in seen or digest in batch:
            cur.records.append(rec)
            continue
        batch.add(digest)
        if isinstance(msg, TrainingMessage):
            cur.training.append(msg)
            cur.digests.append(digest)
            cur.records.append(rec)
            continue
        if cur.records:
            steps.append(cur)
            cur = Step()
        steps.append(Step(control=msg, digests=[digest], records=[rec]))
    if cur.records:
        steps.append(cur)
    return steps


def seed_run_length(records: Sequence[ConsumerRecord], *, max_bytes: int, max_chars: int) -> int:
    """How many of ``records`` belong to the seed run: those before the first training record whose
    source is not ``seed`` (all of them if there is none).

    The log's leading run of seed records and control ops is what the first fit covers; judge and human
    records exist only once some worker labels (a human answers the review of a labelled text).
    """
    for i, rec in enumerate(records):
        try:
            msg, _ = parse_log_record(rec.value, max_bytes=max_bytes, max_chars=max_chars)
        except InvalidMessageError:
            continue
        if isinstance(msg, TrainingMessage) and msg.source != "seed":
            return i
    return len(records)


class Learner:
    """Bootstraps the model, replays the log, then follows it; writes checkpoints."""

    def __init__(
        self,
        *,
        kafka: KafkaSettings,
        stream: StreamSettings,
        host: ModelHost,
        metrics: ServiceMetrics,
        dead_letter: DeadLetterFn,
        worker_id: str,
        has_role: Callable[[], bool] = lambda: True,
        pending_limit: int = 10000,
    ) -> None:
        """``dead_letter`` writes one dead letter (deduplicated by the caller); ``has_role()`` says
        whether this worker is the one that dead-letters bad log records now."""
        self.kafka = kafka
        self.stream = stream
        self.names = TopicNames.from_settings(kafka)
        self.host = host
        self.metrics = metrics
        self.dead_letter = dead_letter
        self.has_role = has_role
        self.worker_id = worker_id
        self.follower: Follower | None = None
        self.replaying = True
        self.seen: set[int] = set()  # digests of the records the model includes
        self.seed: SeedSet | None = None  # the seed run, while the model is a fit on it (host.seed_run)
        self.pending: deque[tuple[ConsumerRecord, InvalidMessageError]] = deque(maxlen=pending_limit)
        self._last_checkpoint = time.monotonic()
        # held while records are applied (marked read, then learned) and while a checkpoint is taken, so
        # a checkpoint never saves offsets past records its model lacks (shutdown checkpoints from
        # another task while the learner may be mid-step)
        self._step = asyncio.Lock()

    # -- start-up ----------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Load or fit the model and replay the log to its end (the worker is ready after this)."""
        ckpt = await self._load_newest_checkpoint()
        self.follower = Follower(self.kafka, [self.names.training], ckpt.offsets if ckpt else None)
        await self.follower.start()
        if len(self.follower._tps) > 1:
            log.warning(
                "%s has %d partitions: records of different partitions are merged by timestamp, so "
                "workers may apply them in different orders; create it with ONE partition for an exact "
                "order (driftlabel creates it so)", self.names.training, len(self.follower._tps),
            )  # fmt: skip
        if ckpt is None:
            await self._bootstrap_from_topics()
        await self._catch_up()
        if ckpt is None:  # save the costly first fit at once, so a restart skips it
            await self.checkpoint()
        self.replaying = False
        await self.update_model_metrics()

    def position(self) -> int:
        """Records of the learning log applied so far (the sum over its partitions)."""
        assert self.follower is not None
        return int(sum(sum(parts.values()) for parts in self.follower.offsets.values()))

    async def follow(self) -> None:
        """Apply new records as they arrive, checkpointing now and then (runs until cancelled)."""
        while True:
            await self.follow_once(timeout_ms=200 if self.host.reforming else 500)
            await self.flush_dead_letters()
            await self.maybe_checkpoint()

    async def stop(self) -> None:
        if self.follower is not None:
            await self.follower.stop()

    async def _load_newest_checkpoint(self) -> Checkpoint | None:
        for path in list_checkpoints(self.stream.checkpoint_dir):
            try:
                ckpt = read_checkpoint(path, self.kafka.topic_prefix)
                seen = ckpt.seen()
                await self.host.load(ckpt.model_dir, ckpt.state)
            except Exception as exc:  # corrupt, foreign, or written by an incompatible version
                log.warning("skipping checkpoint %s: %s", path, exc)
                continue
            self.seen = {int(d) for d in seen.tolist()}
            log.info("loaded checkpoint %s (model v%d)", path, self.host.version)
            print(f"driftlabel worker: loaded checkpoint {path.name}", flush=True)
            return ckpt
        return None

    async def _bootstrap_from_topics(self) -> None:
        """No checkpoint: gather the log's leading seed run (seed records and control ops, up to the first
        judge or human record) until there are at least two classes, and fit on it.

        The fit stops at the end of the seed run, wherever this worker's reading happens to be, so that a
        worker started on a long log fits the same seed run as one that was there from the start, and
        learns what follows record by record as that one did: the model is a function of the log.
        """
        assert self.follower is not None
        seed = SeedSet()
        waited = time.monotonic()
        warned = False
        leftover: list[ConsumerRecord] = []
        while True:
            records = await self.follower.poll(timeout_ms=500, max_records=5000)
            cut = seed_run_length(records, **self._limits())
            self._gather(seed, records[:cut])
            if cut < len(records):
                if seed.n_labels >= 2:
                    leftover = records[cut:]
                    break
                # judge/human records before two seed classes: there is no seed run to fit on;
                # fit on those records too
                self._gather(seed, records[cut:])
            if not records and self.follower.caught_up() and seed.n_labels >= 2:
                break
            if not records and not warned and time.monotonic() - waited > 10:
                print(
                    f"driftlabel worker: waiting for seed examples on {self.names.training} "
                    "(at least two classes; `driftlabel produce --training FILE` or `driftlabel add-class`)",
                    flush=True,
                )
                warned = True
            if time.monotonic() - waited > self.stream.seed_wait_s:
                raise CheckpointError(
                    f"no checkpoint in {self.stream.checkpoint_dir} and no seed examples on "
                    f"{self.names.training} after {self.stream.seed_wait_s:.0f}s; send labelled examples "
                    "(`driftlabel produce --training seed.csv`) or point checkpoint_dir at a checkpoint"
                )
        texts, _, _ = seed.fit_data()
        t0 = time.monotonic()
        print(
            f"driftlabel worker: fitting on {len(texts)} seed examples of {seed.n_labels} classes...",
            flush=True,
        )
        await self.host.fit(seed, self.position())
        self.seed = seed
        log.info("fitted in %.1fs", time.monotonic() - t0)
        self.metrics.training.labels(source="seed", valid="true").inc(len(texts))
        if leftover:
            await self._apply_records(leftover)

    def _gather(self, seed: SeedSet, records: Sequence[ConsumerRecord], seen: set[int] | None = None) -> None:
        """Add seed-run records to ``seed`` (repeats once, bad ones to the dead letters); mark them read."""
        seen = self.seen if seen is None else seen
        for step in plan_steps(records, seen, **self._limits()):
            seen.update(step.digests)
            if seen is self.seen:
                self.pending.extend(step.bad)
            seed.add_training(step.training)
            if step.control is not None:
                seed.add_control(step.control)
        if seen is self.seen:
            assert self.follower is not None
            self.follower.mark(records)

    async def _extend_seed_run(self, records: Sequence[ConsumerRecord]) -> None:
        """Seed records (or control ops) that extend the seed run: refit on the whole run.

        A worker that replays the log later fits the run in one go; refitting here, instead of learning
        the new seeds incrementally, keeps the two models identical. The refit runs in the background
        (labelling goes on with the previous fit) while this learner waits, so the records that arrive
        meanwhile are covered together by the next one.
        """
        assert self.follower is not None
        if not any(s.training or s.control for s in plan_steps(records, self.seen, **self._limits())):
            self._gather(SeedSet(), records)  # only repeats or bad records: nothing to refit
            await self.host.advance(self.position())
            return
        if self.seed is None:  # restarted from a checkpoint inside the seed run
            self.seed = await self._read_seed_run()
        if self.seed is None:
            log.warning("could not re-read the seed run; learning the new seed records incrementally")
            self.host.end_seed_run()
            for step in plan_steps(records, self.seen, **self._limits()):
                await self.apply(step)
            return
        before = len(self.seed.texts)
        self._gather(self.seed, records)
        seconds = await self.host.refit_seed_run(self.seed, self.position())
        self.metrics.training.labels(source="seed", valid="true").inc(len(self.seed.texts) - before)
        n = len(self.seed.texts)
        v = self.host.version
        print(
            f"driftlabel worker: seed run grew to {n} examples: refitted in the background in "
            f"{seconds:.1f}s (model v{v})",
            flush=True,
        )

    async def _read_seed_run(self, timeout_s: float = 120.0) -> SeedSet | None:
        """Re-read the log from its start to the current position (all of it seed run) into a SeedSet."""
        assert self.follower is not None
        target = self.follower.snapshot()
        reader = Follower(self.kafka, [self.names.training])
        await reader.start()
        seed, seen = SeedSet(), set[int]()
        deadline = time.monotonic() + timeout_s
        try:
            while any(
                reader.offsets[t].get(p, 0) < off for t, parts in target.items() for p, off in parts.items()
            ):
                if time.monotonic() > deadline:
                    return None
                records = await reader.poll(timeout_ms=500, max_records=5000)
                records = [r for r in records if r.offset < target[r.topic].get(r.partition, 0)]
                self._gather(seed, records, seen)
                reader.mark(records)
        finally:
            await reader.stop()
        return seed

    def _limits(self) -> dict[str, int]:
        return {"max_bytes": self.stream.max_message_bytes, "max_chars": self.stream.max_text_chars}

    async def _catch_up(self) -> None:
        """Replay the log from the loaded position to the current end."""
        assert self.follower is not None
        t0 = time.monotonic()
        n = 0
        while True:
            n += await self.follow_once(timeout_ms=300)
            if self.follower.caught_up():
                break
        if n:
            log.info("replayed %d learning-log records in %.1fs", n, time.monotonic() - t0)
            print(f"driftlabel worker: replayed {n} training/control records", flush=True)

    # -- following ---------------------------------------------------------------------------------------
    async def follow_once(self, timeout_ms: int) -> int:
        """Apply the next records of the log; returns how many were read."""
        assert self.follower is not None
        if await self.host.maybe_swap():
            await self.update_model_metrics()
        records = await self.follower.poll(timeout_ms=timeout_ms, max_records=self.stream.learn_batch)
        if not records:
            return 0
        await self._apply_records(records)
        await self.host.maybe_swap()
        await self.update_model_metrics()
        return len(records)

    async def _apply_records(self, records: Sequence[ConsumerRecord]) -> None:
        """Apply log records in order: seed-run records refit, the first judge/human record ends the run."""
        async with self._step:
            await self._apply_records_unlocked(records)

    async def _apply_records_unlocked(self, records: Sequence[ConsumerRecord]) -> None:
        if self.host.seed_run:
            cut = seed_run_length(records, **self._limits())
            if cut:
                await self._extend_seed_run(records[:cut])
            if cut == len(records):
                return
            self.host.end_seed_run()  # judge or human: from here on the model learns record by record
            self.seed = None
            records = records[cut:]
        for step in plan_steps(records, self.seen, **self._limits(), max_training=self.stream.learn_step):
            if self.host.reforming and step.training and self.host.reform_due(step.training):
                await self.host.settle_reform()  # the next one is due: this one first (labelling goes on)
            await self.apply(step)

    async def apply(self, step: Step) -> None:
        """Apply one step to the model and advance the position past its records."""
        assert self.follower is not None
        self.follower.mark(step.records)
        position = self.position()
        self.pending.extend(step.bad)
        if step.control is not None:
            await self._apply_control(step.records[-1], step.control, position)
        else:
            if not self.replaying:  # live: keep the model thread free for predictions
                await self.host.wait_for_resolves(len(step.training))
            await self.host.learn(step.training, position, live=not self.replaying)
            for t in step.training:
                self.metrics.training.labels(source=t.source, valid=str(t.valid).lower()).inc()
        self.seen.update(step.digests)
        unkeyed = sum(t.source == "stream" for t in step.training)
        duplicates = len(step.records) - len(step.digests) - len(step.bad) - unkeyed
        if duplicates:
            self.metrics.log_repeats.inc(duplicates)

    async def _apply_control(self, rec: ConsumerRecord, msg: ControlMessage, position: int) -> None:
        if not self.replaying and msg.op != "add_class":  # these settle a running re-solve (add_class
            await self.host.wait_for_resolves()  # drops it): wait here, not on the model thread
        try:
            await self.host.control(msg, position)
        except (ModelError, KeyError, ValueError) as exc:
            await self.host.advance(position)
            reason = "unknown_label" if isinstance(exc, KeyError) else "invalid_value"
            self.pending.append((rec, InvalidMessageError(reason, f"{msg.op} {msg.label!r}: {exc}")))
            return
        self.metrics.control_ops.labels(op=msg.op).inc()
        log.info("applied control %s %r", msg.op, msg.label)

    async def flush_dead_letters(self) -> int:
        """Dead-letter the bad records seen so far, while this worker has the role (asked again before each
        one: a rebalance during a slow write may hand it to another worker); returns how many."""
        n = 0
        while self.pending and self.has_role():
            rec, exc = self.pending[0]
            await self.dead_letter(rec.value, exc, rec.topic, rec.partition, rec.offset)
            self.pending.popleft()
            n += 1
        return n

    async def update_model_metrics(self) -> None:
        if self.host.ready:
            n, s, v = await self.host.describe()
            self.metrics.set_model(n, s, v)

    # -- checkpoints -------------------------------------------------------------------------------------
    async def maybe_checkpoint(self, force: bool = False) -> Checkpoint | None:
        due = time.monotonic() - self._last_checkpoint >= self.stream.checkpoint_every_s
        if not self.host.ready or self.follower is None or not (force or due):
            return None
        if self.host.reforming:  # a restart must re-form at the same record: checkpoint after the swap
            return None
        if self.host.changes_since_checkpoint == 0:
            self._last_checkpoint = time.monotonic()
            return None
        return await self.checkpoint()

    async def checkpoint(self) -> Checkpoint:
        """Write a checkpoint now (model, the offsets and counters of everything it includes, digests)."""
        async with self._step:  # between two steps: the offsets and the model agree
            return await self._checkpoint_unlocked()

    async def _checkpoint_unlocked(self) -> Checkpoint:
        assert self.follower is not None
        await self.host.wait_for_resolves()  # save keeps a running re-solve's result: wait here, not there
        offsets = self.follower.snapshot()
        seen = np.fromiter(self.seen, dtype=np.uint64, count=len(self.seen))
        seen.sort()

        def job() -> Checkpoint:
            ckpt = write_checkpoint(
                self.stream.checkpoint_dir,
                self.host.live,
                offsets,
                worker=self.worker_id,
                topic_prefix=self.kafka.topic_prefix,
                keep=self.stream.checkpoint_keep,
                state=self.host.state(),
                seen=seen,
                model_version=self.host.version,
            )
            self.host.changes_since_checkpoint = 0
            return ckpt

        ckpt = await self.host.run(job)
        self._last_checkpoint = time.monotonic()
        self.metrics.checkpoints.inc()
        log.info("checkpoint %s", ckpt.path)
        return ckpt

    async def final_checkpoint(self, wait_s: float = 60.0) -> None:
        """On shutdown: a last checkpoint if anything changed since the previous one.

        It waits up to ``wait_s`` for a step the learner is applying to finish; past that it writes none
        (a restart replays the log from the last checkpoint, which is always consistent)."""
        try:
            await asyncio.wait_for(self._step.acquire(), wait_s)
        except asyncio.TimeoutError:
            log.warning("no final checkpoint: the learner's step did not finish in %.0fs", wait_s)
            return
        try:
            if self.host.reforming:
                log.info(
                    "no final checkpoint: a re-forming is in flight (a restart replays from the last one)"
                )
                return
            if self.host.ready and self.follower is not None and self.host.changes_since_checkpoint:
                await self._checkpoint_unlocked()
        finally:
            self._step.release()

    def refresh_lag(self) -> None:
        if self.follower is not None and self.follower._consumer is not None:
            for tp, lag in self.follower.lag().items():
                self.metrics.lag.labels(topic=tp.topic, partition=str(tp.partition)).set(lag)
