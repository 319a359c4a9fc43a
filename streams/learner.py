"""Checkpoint and replay: the learning loop every worker runs over ``training`` + ``control``.

Start-up: load the newest usable checkpoint (model + the log offsets it includes), or gather seed
examples from the topics and fit; then replay the log from the checkpoint's offsets to its end; only
then is the worker ready to label. Afterwards: apply every new record as it arrives (learn batches,
control ops in log order) and checkpoint now and then. The reading is done by
:class:`~driftlabel.streams.follower.Follower` (every partition, no group); the model work by
:class:`~driftlabel.streams.host.ModelHost` (one thread). Which record does what is decided by the pure
:func:`plan_steps`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from aiokafka import ConsumerRecord

from driftlabel.models.errors import ModelError
from driftlabel.streams.checkpoint import Checkpoint, list_checkpoints, read_checkpoint, write_checkpoint
from driftlabel.streams.errors import CheckpointError, InvalidMessageError
from driftlabel.streams.follower import Follower
from driftlabel.streams.host import ModelHost, SeedSet
from driftlabel.streams.messages import ControlMessage, TrainingMessage, parse_control, parse_training
from driftlabel.streams.metrics import ServiceMetrics
from driftlabel.streams.settings import KafkaSettings, StreamSettings
from driftlabel.streams.topics import TopicNames

__all__ = ["Learner", "Step", "plan_steps"]

log = logging.getLogger(__name__)

#: dead_letter(raw, error, topic, partition, offset)
DeadLetterFn = Callable[[bytes | None, InvalidMessageError, str, int, int], Awaitable[None]]


@dataclass
class Step:
    """One unit of model work: a batch of training records, or one control op (never both)."""

    training: list[TrainingMessage] = field(default_factory=list)
    control: ControlMessage | None = None
    #: the records this step consumes (their offsets are marked applied after it)
    records: list[ConsumerRecord] = field(default_factory=list)
    #: records that failed validation, with why
    bad: list[tuple[ConsumerRecord, InvalidMessageError]] = field(default_factory=list)


def plan_steps(
    records: Sequence[ConsumerRecord], training_topic: str, *, max_bytes: int, max_chars: int
) -> list[Step]:
    """Cut records (in log order) into steps: runs of training records, each control op on its own, so
    a control op applies exactly between the training records before and after it."""
    steps: list[Step] = []
    cur = Step()
    for rec in records:
        if rec.topic == training_topic:
            try:
                cur.training.append(parse_training(rec.value, max_bytes=max_bytes, max_chars=max_chars))
            except InvalidMessageError as exc:
                cur.bad.append((rec, exc))
            cur.records.append(rec)
            continue
        if cur.records:
            steps.append(cur)
            cur = Step()
        op = Step(records=[rec])
        try:
            op.control = parse_control(rec.value, max_chars=max_chars)
        except InvalidMessageError as exc:
            op.bad.append((rec, exc))
        steps.append(op)
    if cur.records:
        steps.append(cur)
    return steps


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
    ) -> None:
        self.kafka = kafka
        self.stream = stream
        self.names = TopicNames.from_settings(kafka)
        self.host = host
        self.metrics = metrics
        self.dead_letter = dead_letter
        self.worker_id = worker_id
        self.follower: Follower | None = None
        self.replaying = True
        self._last_checkpoint = time.monotonic()

    # -- start-up ----------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Load or fit the model and replay the log to its end (the worker is ready after this)."""
        ckpt = await self._load_newest_checkpoint()
        self.follower = Follower(
            self.kafka, [self.names.training, self.names.control], ckpt.offsets if ckpt else None
        )
        await self.follower.start()
        if ckpt is None:
            await self._bootstrap_from_topics()
        await self._catch_up()
        if ckpt is None:  # save the costly first fit at once, so a restart skips it
            await self.checkpoint()
        self.replaying = False
        await self.update_model_metrics()

    async def follow(self) -> None:
        """Apply new records as they arrive, checkpointing now and then (runs until cancelled)."""
        while True:
            await self.follow_once(timeout_ms=500)
            await self.maybe_checkpoint()

    async def stop(self) -> None:
        if self.follower is not None:
            await self.follower.stop()

    async def _load_newest_checkpoint(self) -> Checkpoint | None:
        for path in list_checkpoints(self.stream.checkpoint_dir):
            try:
                ckpt = read_checkpoint(path, self.kafka.topic_prefix)
                await self.host.load(ckpt.model_dir)
            except Exception as exc:  # corrupt, foreign, or written by an incompatible version
                log.warning("skipping checkpoint %s: %s", path, exc)
                continue
            log.info("loaded checkpoint %s (model v%d)", path, ckpt.model_version)
            print(f"driftlabel worker: loaded checkpoint {path.name}", flush=True)
            return ckpt
        return None

    async def _bootstrap_from_topics(self) -> None:
        """No checkpoint: gather seed records from the topics until there are at least two classes."""
        assert self.follower is not None
        seed = SeedSet()
        waited = time.monotonic()
        warned = False
        while True:
            records = await self.follower.poll(timeout_ms=500, max_records=5000)
            for rec in records:
                self._seed_record(seed, rec)
            self.follower.mark(records)
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
        await self.host.fit(seed)
        log.info("fitted in %.1fs", time.monotonic() - t0)
        self.metrics.training.labels(source="seed", valid="true").inc(len(texts))

    def _seed_record(self, seed: SeedSet, rec: ConsumerRecord) -> None:
        try:
            if rec.topic == self.names.training:
                seed.add_training(
                    [
                        parse_training(
                            rec.value,
                            max_bytes=self.stream.max_message_bytes,
                            max_chars=self.stream.max_text_chars,
                        )
                    ]
                )
            else:
                seed.add_control(parse_control(rec.value, max_chars=self.stream.max_text_chars))
        except InvalidMessageError as exc:
            log.warning("skipping bad seed record %s:%d:%d: %s", rec.topic, rec.partition, rec.offset, exc)

    async def _catch_up(self) -> None:
        """Replay training/control from the loaded position to the current end."""
        assert self.follower is not None
        t0 = time.monotonic()
        n = 0
        while True:
            n += await self.follow_once(timeout_ms=300)
            if self.follower.caught_up():
                break
        if n:
            log.info("replayed %d training/control records in %.1fs", n, time.monotonic() - t0)
            print(f"driftlabel worker: replayed {n} training/control records", flush=True)

    # -- following ---------------------------------------------------------------------------------------
    async def follow_once(self, timeout_ms: int) -> int:
        """Apply the next records of training/control; returns how many were read."""
        assert self.follower is not None
        records = await self.follower.poll(timeout_ms=timeout_ms, max_records=self.stream.learn_batch)
        if not records:
            return 0
        steps = plan_steps(
            records,
            self.names.training,
            max_bytes=self.stream.max_message_bytes,
            max_chars=self.stream.max_text_chars,
        )
        for step in steps:
            await self.apply(step)
            self.follower.mark(step.records)
        await self.update_model_metrics()
        return len(records)

    async def apply(self, step: Step) -> None:
        """Apply one step to the model; bad records go to dead-letter (when seen live)."""
        for rec, exc in step.bad:
            await self._bad_broadcast(rec, exc)
        if step.training:
            await self.host.learn(step.training)
            for t in step.training:
                self.metrics.training.labels(source=t.source, valid=str(t.valid).lower()).inc()
        if step.control is not None:
            await self._apply_control(step.records[0], step.control)

    async def _apply_control(self, rec: ConsumerRecord, msg: ControlMessage) -> None:
        try:
            await self.host.control(msg)
        except (ModelError, KeyError, ValueError) as exc:
            reason = "unknown_label" if isinstance(exc, KeyError) else "invalid_value"
            await self._bad_broadcast(rec, InvalidMessageError(reason, f"{msg.op} {msg.label!r}: {exc}"))
            return
        self.metrics.control_ops.labels(op=msg.op).inc()
        log.info("applied control %s %r", msg.op, msg.label)

    async def _bad_broadcast(self, rec: ConsumerRecord, exc: InvalidMessageError) -> None:
        """A bad training/control record: dead-lettered once, when first seen live (not again on replay)."""
        if self.replaying:
            log.warning(
                "skipping bad record %s:%d:%d on replay: %s", rec.topic, rec.partition, rec.offset, exc
            )
            return
        await self.dead_letter(rec.value, exc, rec.topic, rec.partition, rec.offset)

    async def update_model_metrics(self) -> None:
        if self.host.ready:
            n, s, v = await self.host.describe()
            self.metrics.set_model(n, s, v)

    # -- checkpoints -------------------------------------------------------------------------------------
    async def maybe_checkpoint(self, force: bool = False) -> Checkpoint | None:
        due = time.monotonic() - self._last_checkpoint >= self.stream.checkpoint_every_s
        if not self.host.ready or self.follower is None or not (force or due):
            return None
        if self.host.changes_since_checkpoint == 0:
            self._last_checkpoint = time.monotonic()
            return None
        return await self.checkpoint()

    async def checkpoint(self) -> Checkpoint:
        """Write a checkpoint now (model + the offsets of everything it has learned)."""
        assert self.follower is not None
        offsets = self.follower.snapshot()

        def job() -> Checkpoint:
            ckpt = write_checkpoint(
                self.stream.checkpoint_dir,
                self.host.live,
                offsets,
                worker=self.worker_id,
                topic_prefix=self.kafka.topic_prefix,
                keep=self.stream.checkpoint_keep,
            )
            self.host.changes_since_checkpoint = 0
            return ckpt

        ckpt = await self.host.run(job)
        self._last_checkpoint = time.monotonic()
        self.metrics.checkpoints.inc()
        log.info("checkpoint %s", ckpt.path)
        return ckpt

    async def final_checkpoint(self) -> None:
        """On shutdown: a last checkpoint if anything changed since the previous one."""
        if self.host.ready and self.follower is not None and self.host.changes_since_checkpoint:
            await self.checkpoint()

    def refresh_lag(self) -> None:
        if self.follower is not None and self.follower._consumer is not None:
            for tp, lag in self.follower.lag().items():
                self.metrics.lag.labels(topic=tp.topic, partition=str(tp.partition)).set(lag)
