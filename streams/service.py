"""The faust-streaming worker: predict -> judge -> learn.

Agents (thin; the rules live in :mod:`~driftlabel.streams.pipeline`, :mod:`~driftlabel.streams.messages`
and :mod:`~driftlabel.streams.routing`):

- ``texts`` -> micro-batches (``take_events``) -> validate (bad ones to ``dead-letter``) -> embed + rank
  on the model thread -> a label at once to ``labels`` (final unless routed) -> the routed ones, most
  uncertain first within the judge budget, to ``judge-requests``.
- ``judge-requests`` -> :class:`driftlabel.judge.Judge` (bounded concurrency) -> ``judge-verdicts``, the
  final label, accepted and rejected pairs to ``training``, unresolved items to ``review``. While the
  judge is unavailable (circuit open, budget spent) the item waits and is retried: its offset is not
  committed, so nothing is lost and nothing is accepted without a verdict.
- a follower task (aiokafka, see :mod:`~driftlabel.streams.follower`) reads *all* of ``training`` and
  ``control`` on every worker, learns in batches, applies control ops, and writes checkpoints.

Delivery is at-least-once (exactly-once needs a transactional producer, which not every broker offers):
after a crash, records not yet committed are processed again, so a consumer may see a repeated final
label for an id; ``driftlabel consume`` drops such repeats.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faust
import numpy as np
from aiokafka import ConsumerRecord

from driftlabel.streams.checkpoint import Checkpoint, list_checkpoints, read_checkpoint, write_checkpoint
from driftlabel.streams.errors import CheckpointError, InvalidMessageError
from driftlabel.streams.faust_app import DriftlabelApp
from driftlabel.streams.follower import Follower
from driftlabel.streams.messages import (
    JudgeRequestMessage,
    TextMessage,
    TrainingMessage,
    dead_letter_for,
    parse_control,
    parse_text,
    parse_training,
)
from driftlabel.streams.metrics import ServiceMetrics
from driftlabel.streams.pipeline import OUT_OF_SCOPE, judge_result_messages, label_messages
from driftlabel.streams.routing import AdaptiveRouter, uncertainty
from driftlabel.streams.settings import KafkaSettings, MetricsSettings, StreamSettings
from driftlabel.streams.state import ModelHost, SeedSet
from driftlabel.streams.topics import TopicNames

__all__ = ["WorkerService", "faust_broker_options"]

log = logging.getLogger(__name__)


def faust_broker_options(kafka: KafkaSettings) -> dict[str, Any]:
    """faust ``App`` keyword arguments for the cluster connection (SASL/TLS included)."""
    opts: dict[str, Any] = {
        "broker": [f"kafka://{s}" for s in kafka.servers],
        "broker_client_id": kafka.client_id,
        "broker_session_timeout": kafka.session_timeout_ms / 1000.0,
        "broker_heartbeat_interval": kafka.heartbeat_interval_ms / 1000.0,
        "broker_request_timeout": kafka.request_timeout_ms / 1000.0,
    }
    ctx = kafka.ssl_context()
    if kafka.security_protocol.startswith("SASL"):
        opts["broker_credentials"] = faust.SASLCredentials(
            username=kafka.sasl_username,
            password=kafka.sasl_password.get_secret_value() if kafka.sasl_password else None,
            mechanism=kafka.sasl_mechanism,
            ssl_context=ctx,
        )
    elif ctx is not None:
        opts["broker_credentials"] = ctx
    return opts


class WorkerService:
    """One worker: the faust app, its agents, the model host, metrics and the follower."""

    def __init__(
        self,
        *,
        kafka: KafkaSettings,
        stream: StreamSettings,
        metrics: MetricsSettings | None = None,
        judge_settings: Any = None,
        embedder: Any = None,
        expert_settings: Any = None,
        worker_id: str | None = None,
        judge: Any = None,
    ) -> None:
        self.kafka = kafka
        self.stream = stream
        self.names = TopicNames.from_settings(kafka)
        self.metrics = ServiceMetrics(metrics)
        self.judge_settings = judge_settings
        self._judge = judge
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        if embedder is None:
            from driftlabel.models import load_embedder

            embedder = load_embedder()
        self.host = ModelHost(
            embedder,
            expert_settings,
            cache_size=stream.embedding_cache,
            refit_every=stream.refit_every,
            on_refit=self.metrics.observe_refit,
        )
        self.router = AdaptiveRouter(stream.judge_target_share, stream.routing_window, stream.judge_max_burst)
        from driftlabel.models import DriftMonitor

        self.drift = DriftMonitor(signal="uncertainty")
        self.ready = asyncio.Event()
        self.follower: Follower | None = None
        self._positions: dict[tuple[str, int], int] = {}
        self._last_checkpoint = time.monotonic()
        self._replaying = True
        self._stopping = False
        self.app = self._build_app()

    # -- app -------------------------------------------------------------------------------------------
    def _build_app(self) -> faust.App:
        datadir = Path(tempfile.gettempdir()) / f"driftlabel-faust-{self.kafka.group_id}-{os.getpid()}"
        app = DriftlabelApp(
            self.kafka.group_id,
            fetch_max_wait_ms=self.kafka.fetch_max_wait_ms,
            **faust_broker_options(self.kafka),
            datadir=str(datadir),
            store="memory://",
            web_enabled=False,
            topic_partitions=self.kafka.partitions,
            topic_replication_factor=self.kafka.replication_factor,
            topic_allow_declare=False,  # topics are created explicitly (create_topics)
            topic_disable_leader=True,
            consumer_auto_offset_reset="earliest",
            stream_wait_empty=False,
            broker_commit_interval=1.0,
            producer_linger_ms=5,
        )
        n = self.names
        self.t_texts = app.topic(
            n.texts, key_type=bytes, key_serializer="raw", value_type=bytes, value_serializer="raw"
        )
        self.t_judge_requests = app.topic(
            n.judge_requests, key_type=bytes, key_serializer="raw", value_type=bytes, value_serializer="raw"
        )
        self.t_labels = app.topic(n.labels, key_serializer="raw")
        self.t_verdicts = app.topic(n.judge_verdicts, key_serializer="raw")
        self.t_training = app.topic(n.training, key_serializer="raw")
        self.t_review = app.topic(n.review, key_serializer="raw")
        self.t_dead = app.topic(n.dead_letter, key_serializer="raw")

        async def texts(stream: faust.StreamT) -> None:
            await self.ready.wait()
            size, within = self.stream.batch_size, self.stream.batch_within_s
            batches = stream.take_events(size, within=within)  # type: ignore[attr-defined]
            async for events in batches:
                await self.handle_text_events(events)

        async def judge(stream: faust.StreamT) -> None:
            async for event in stream.events():
                await self.handle_judge_event(event)

        app.agent(self.t_texts, name="driftlabel.texts")(texts)
        if self.stream.judge_target_share > 0:
            app.agent(
                self.t_judge_requests, name="driftlabel.judge", concurrency=self.stream.judge_concurrency
            )(judge)

        async def follow() -> None:
            await self.run_follower()

        async def refresh() -> None:
            self.refresh_lag()

        app.task(follow)
        app.timer(2.0)(refresh)

        async def before_shutdown(sender: Any, **kwargs: Any) -> None:
            await self.shutdown()

        app.on_before_shutdown.connect(before_shutdown)
        return app

    # -- texts -----------------------------------------------------------------------------------------
    async def dead_letter(
        self, raw: bytes | None, error: InvalidMessageError | str, topic: str, partition: int, offset: int
    ) -> None:
        msg = dead_letter_for(raw, error, topic=topic, partition=partition, offset=offset)
        await self.t_dead.send(key=f"{topic}:{partition}:{offset}".encode(), value=msg)
        self.metrics.dead_letters.labels(reason=msg.reason, topic=topic).inc()
        log.info("dead-letter %s:%d:%d %s", topic, partition, offset, msg.error)

    async def handle_text_events(self, events: Sequence[Any]) -> None:
        """Validate a micro-batch of raw ``texts`` events and process the good ones. Never raises."""
        received = time.time()
        items: list[TextMessage] = []
        positions: list[tuple[str, int, int, bytes | None]] = []
        for ev in events:
            m = ev.message
            self._positions[(m.topic, m.partition)] = m.offset
            try:
                items.append(
                    parse_text(
                        m.value,
                        topic=m.topic,
                        partition=m.partition,
                        offset=m.offset,
                        max_bytes=self.stream.max_message_bytes,
                        max_chars=self.stream.max_text_chars,
                    )
                )
                positions.append((m.topic, m.partition, m.offset, m.value))
            except InvalidMessageError as exc:
                await self.dead_letter(m.value, exc, m.topic, m.partition, m.offset)
        if not items:
            return
        try:
            await self.process_texts(items, received)
        except Exception as exc:  # a model failure must not kill the agent: the items go to dead-letter
            log.exception("could not label a batch of %d texts", len(items))
            for topic, part, off, raw in positions:
                await self.dead_letter(raw, f"processing_error: {exc!r}", topic, part, off)

    async def process_texts(self, items: Sequence[TextMessage], received: float) -> None:
        """Embed + rank a batch, publish labels at once, route the uncertain ones to the judge."""
        texts = [it.text for it in items]
        ids = [it.id for it in items]
        before = self.host.embed_seconds
        X, ranking, version, n_classes = await self.host.predict(texts, self.stream.top_k)
        self.metrics.embed_seconds.inc(self.host.embed_seconds - before)
        u = uncertainty(ranking.entropy, ranking.margin, self.stream.uncertainty, n_classes)
        routed = self.router.route(u)  # out-of-scope calls are uncertain too: the judge may know better
        now = time.time()
        labels = label_messages(ids, ranking, routed, version, now)
        for msg in labels:
            await self.t_labels.send(key=msg.id.encode(), value=msg)
        self.metrics.count_labels((m.status for m in labels), (m.final for m in labels))
        self.metrics.observe_batch(np.asarray(ranking.entropy), routed, self.router.threshold)
        n_final = int((~routed).sum())
        for _ in range(n_final):
            self.metrics.e2e_latency.labels(path="direct").observe(now - received)
        for _event in self.drift.update_many(u):
            self.metrics.drift_events.inc()
            log.warning("drift: the uncertainty level shifted (now %.3f); the judge share adapts", u.mean())
        rows = np.flatnonzero(routed).tolist()
        if not rows:
            return
        cands = await self.host.judge_candidates(
            X,
            rows,
            [ranking.candidates[i] for i in rows],
            self.stream.judge_depth_candidates,
            self._n_examples(),
        )
        for i, cand in zip(rows, cands, strict=True):
            cand = [c for c in cand if c["label"] != OUT_OF_SCOPE]
            if not cand:
                continue
            req = JudgeRequestMessage(
                id=ids[i],
                text=texts[i],
                candidates=cand,
                label=ranking.labels[i],
                score=float(ranking.scores[i]),
                entropy=float(ranking.entropy[i]),
                model_version=version,
                received_ts=received,
                ts=now,
            )
            await self.t_judge_requests.send(key=ids[i].encode(), value=req.dumps())

    def _n_examples(self) -> int:
        return int(getattr(self.judge_settings, "n_examples", 6)) if self.judge_settings is not None else 6

    # -- judge -----------------------------------------------------------------------------------------
    async def get_judge(self) -> Any:
        if self._judge is None:
            from driftlabel.judge import Judge, JudgeSettings

            self._judge = Judge(self.judge_settings or JudgeSettings())
        return self._judge

    async def handle_judge_event(self, event: Any) -> None:
        m = event.message
        self._positions[(m.topic, m.partition)] = m.offset
        try:
            data = json.loads(m.value)
            req = JudgeRequestMessage.from_data(data)
            if not req.candidates or not req.text:
                raise InvalidMessageError("missing_field", "a judge request needs a text and candidates")
        except (ValueError, TypeError, KeyError) as exc:
            err = (
                exc
                if isinstance(exc, InvalidMessageError)
                else InvalidMessageError("invalid_value", repr(exc))
            )
            await self.dead_letter(m.value, err, m.topic, m.partition, m.offset)
            return
        try:
            await self.judge_item(req)
        except Exception as exc:  # a bug or a broken broker must not kill the agent; keep the item
            log.exception("could not finish judging %s", req.id)
            await self.dead_letter(m.value, f"processing_error: {exc!r}", m.topic, m.partition, m.offset)

    async def judge_item(self, req: JudgeRequestMessage) -> None:
        """Judge one item, waiting out an unavailable judge; then publish everything it produced."""
        from driftlabel.judge import Candidate, JudgeRequest
        from driftlabel.judge.errors import BudgetExceededError, JudgeUnavailableError

        judge = await self.get_judge()
        request = JudgeRequest(
            id=req.id,
            text=req.text,
            candidates=[
                Candidate(
                    label=c["label"],
                    probability=float(c.get("probability", 0.0)),
                    description=c.get("description"),
                    examples=c.get("examples") or (),
                )
                for c in req.candidates
            ],
        )
        delay = self.stream.judge_retry_s
        failures = 0
        outcome: Any = None
        while outcome is None:
            self.metrics.judge_in_flight.inc()
            try:
                outcome = await judge.judge(request)
            except (JudgeUnavailableError, BudgetExceededError) as exc:
                reason = "budget" if isinstance(exc, BudgetExceededError) else "circuit_open"
                self.metrics.judge_unavailable.labels(reason=reason).inc()
                log.warning("judge unavailable (%s); item %s waits %.1fs and is retried", exc, req.id, delay)
            except Exception as exc:  # a broken answer or a bug: retry a few times, then a human decides
                failures += 1
                log.exception("judging %s failed (%d)", req.id, failures)
                if failures >= 3:
                    from driftlabel.judge import JudgeOutcome

                    outcome = JudgeOutcome(
                        id=req.id,
                        status="unresolved",
                        label=None,
                        verdicts=[],
                        reason=f"judge error: {exc!r}",
                    )
            finally:
                self.metrics.judge_in_flight.dec()
            if outcome is None:
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.stream.judge_retry_max_s)
        now = time.time()
        result = judge_result_messages(req, outcome, req.model_version, now)
        key = req.id.encode()
        for v in result.verdicts:
            await self.t_verdicts.send(key=key, value=v)
            self.metrics.judge_requests.labels(verdict="valid" if v.valid else "invalid").inc()
            self.metrics.judge_latency.observe(v.latency_ms / 1000.0)
            self.metrics.judge_tokens.inc(v.tokens)
        for t in result.training:
            await self.t_training.send(key=key, value=t)
        if result.review is not None:
            await self.t_review.send(key=key, value=result.review)
        await self.t_labels.send(key=key, value=result.label)
        self.metrics.judge_outcomes.labels(status=outcome.status).inc()
        self.metrics.count_labels([result.label.status], [True])
        self.metrics.e2e_latency.labels(path="judge").observe(now - req.received_ts)

    # -- learning --------------------------------------------------------------------------------------
    async def run_follower(self) -> None:
        """Bootstrap the model (checkpoint or seed), then learn every training record and control op."""
        try:
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
            self._replaying = False
            await self._update_model_metrics()
            self.ready.set()
            n, s, v = await self.host.describe()
            print(
                f"driftlabel worker {self.worker_id}: ready ({n} classes, {s} subsets, model v{v})",
                flush=True,
            )
            while True:
                await self._follow_once(timeout_ms=500)
                await self._maybe_checkpoint()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self._stopping:  # the follower was closed under us by shutdown(): not an error
                return
            log.exception("the learning loop failed; the worker stops")
            print(f"driftlabel worker: error: {exc}", flush=True)
            await self.app.crash(exc)

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
            n += await self._follow_once(timeout_ms=300)
            if self.follower.caught_up():
                break
        if n:
            log.info("replayed %d training/control records in %.1fs", n, time.monotonic() - t0)
            print(f"driftlabel worker: replayed {n} training/control records", flush=True)

    async def _follow_once(self, timeout_ms: int) -> int:
        """Apply the next records of training/control; returns how many were read."""
        assert self.follower is not None
        records = await self.follower.poll(timeout_ms=timeout_ms, max_records=self.stream.learn_batch)
        if not records:
            return 0
        pending: list[TrainingMessage] = []
        pending_recs: list[ConsumerRecord] = []

        async def flush() -> None:
            if pending:
                await self.host.learn(list(pending))
                for t in pending:
                    self.metrics.training.labels(source=t.source, valid=str(t.valid).lower()).inc()
            assert self.follower is not None
            self.follower.mark(pending_recs)
            pending.clear()
            pending_recs.clear()

        for rec in records:
            if rec.topic == self.names.training:
                try:
                    pending.append(
                        parse_training(
                            rec.value,
                            max_bytes=self.stream.max_message_bytes,
                            max_chars=self.stream.max_text_chars,
                        )
                    )
                except InvalidMessageError as exc:
                    await self._bad_broadcast(rec, exc)
                pending_recs.append(rec)
                continue
            await flush()  # control ops apply in order with the training before them
            await self._apply_control(rec)
            self.follower.mark([rec])
        await flush()
        await self._update_model_metrics()
        return len(records)

    async def _apply_control(self, rec: ConsumerRecord) -> None:
        from driftlabel.models.errors import ModelError

        try:
            msg = parse_control(rec.value, max_chars=self.stream.max_text_chars)
        except InvalidMessageError as exc:
            await self._bad_broadcast(rec, exc)
            return
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
        if self._replaying:
            log.warning(
                "skipping bad record %s:%d:%d on replay: %s", rec.topic, rec.partition, rec.offset, exc
            )
            return
        await self.dead_letter(rec.value, exc, rec.topic, rec.partition, rec.offset)

    async def _update_model_metrics(self) -> None:
        if self.host.ready:
            n, s, v = await self.host.describe()
            self.metrics.set_model(n, s, v)

    async def _maybe_checkpoint(self, force: bool = False) -> Checkpoint | None:
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
                self.host.model,
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

    # -- housekeeping ----------------------------------------------------------------------------------
    def refresh_lag(self) -> None:
        """Consumer lag from the fetch high-water marks (group topics and the follower)."""
        try:
            consumer = self.app.consumer
            judge_queue = 0
            for tp in consumer.assignment():
                hw = consumer.highwater(tp)
                pos = self._positions.get((tp.topic, tp.partition))
                if hw is None:
                    continue
                lag = max(0, int(hw) - (pos + 1 if pos is not None else 0))
                self.metrics.lag.labels(topic=tp.topic, partition=str(tp.partition)).set(lag)
                if tp.topic == self.names.judge_requests:
                    judge_queue += lag
            self.metrics.judge_queue.set(judge_queue)
        except Exception:  # the consumer is not started yet or is rebalancing
            pass
        if self.follower is not None and self.follower._consumer is not None:
            for tp, lag in self.follower.lag().items():
                self.metrics.lag.labels(topic=tp.topic, partition=str(tp.partition)).set(lag)

    async def shutdown(self) -> None:
        """Final checkpoint and cleanup (called by faust before it stops)."""
        self._stopping = True
        try:
            if self.host.ready and self.follower is not None and self.host.changes_since_checkpoint:
                await self.checkpoint()
        except Exception:
            log.exception("final checkpoint failed")
        if self.follower is not None:
            await self.follower.stop()
        if self._judge is not None and hasattr(self._judge, "aclose"):
            try:
                await self._judge.aclose()
            except Exception:
                log.exception("closing the judge failed")
        self.metrics.close()
