"""Agent wiring: the faust app of one worker, its topics, its thin agents, and where results go.

- ``texts`` -> micro-batches (``take_events``: size or deadline) -> :func:`pipeline.parse_text_batch`
  (bad ones to ``dead-letter``) -> embed + rank on the model thread (:class:`~driftlabel.streams.host.
  ModelHost`) -> :func:`pipeline.label_messages` to ``labels`` at once (final unless routed) -> the
  routed ones (:class:`~driftlabel.streams.routing.AdaptiveRouter`) to ``judge-requests``.
- ``judge-requests`` -> :class:`~driftlabel.streams.judging.JudgeCaller` (waits out outages) ->
  :func:`pipeline.judge_result_messages` -> verdicts, training pairs, review item, the final label.
- ``control`` -> the sequencer: validate, append to the learning log (``training``, one partition), so
  every worker applies control ops in one order with the training records.
- ``judge-verdicts`` -> the audit: :func:`messages.parse_verdict` (bad ones to ``dead-letter``, once) ->
  the ``driftlabel_verdict_log_*`` metrics per judge model (:class:`pipeline.VerdictAudit`); each
  partition is read by one worker of the group, so the sum over workers counts every verdict once.
- a task runs the :class:`~driftlabel.streams.learner.Learner` (bootstrap, replay, follow, checkpoints);
  the texts agent waits until it is ready.

Effectively once (docs/streaming.md): every item id has a *home* partition
(:func:`~driftlabel.streams.ledger.home_partition`; a text read elsewhere is moved there first); its
judge request and all its labels go to that partition number, so one worker at a time decides its final
label, and a :class:`~driftlabel.streams.ledger.TopicLedger` over ``labels`` (and one over
``dead-letter``) tells it whether that output was already written, by it before a crash or by the
previous owner. Sends of a batch are awaited (acknowledged) before the batch's offsets can be committed,
so a committed input always has its outputs in the topics.

The rules live in the pure functions and the classes named above; this module only moves records.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import faust
import numpy as np
import orjson

from driftlabel.judge import JudgeSettings
from driftlabel.models import ExpertSettings, load_embedder
from driftlabel.models.drift import JudgeRateController
from driftlabel.streams.delivery import PERMANENT_ERRORS, fail_stop, retry_until
from driftlabel.streams.diagnostics import memory_probe
from driftlabel.streams.errors import InvalidMessageError, TopicError
from driftlabel.streams.faust_app import DriftlabelApp, faust_broker_options
from driftlabel.streams.health import Heartbeat
from driftlabel.streams.host import ModelHost
from driftlabel.streams.judging import JudgeCaller, parse_judge_request
from driftlabel.streams.learner import Learner
from driftlabel.streams.ledger import TopicLedger, dead_letter_key, final_label_key, home_partition
from driftlabel.streams.messages import (
    JudgeRequestMessage,
    TextMessage,
    TrainingMessage,
    dead_letter_for,
    parse_control,
    parse_verdict,
    position_id,
    sequenced_control,
)
from driftlabel.streams.metrics import ServiceMetrics
from driftlabel.streams.pipeline import (
    VerdictAudit,
    judge_request_messages,
    judge_result_messages,
    judgeable,
    label_values,
    new_pairs,
    parse_text_batch,
    unlabelled_values,
)
from driftlabel.streams.ports import Embedder, JudgeClient
from driftlabel.streams.proposals import NewClassProposals, Publish
from driftlabel.streams.routing import AdaptiveRouter, judged_share, uncertainty
from driftlabel.streams.settings import KafkaSettings, MetricsSettings, StreamSettings
from driftlabel.streams.topics import TopicNames, partitions_of

__all__ = ["WorkerService", "faust_broker_options"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class _NotLabelled(Exception):
    """The model or the judge failed before any output of the record was published (the cause)."""


def _at(m: Any) -> tuple[str, int, int]:
    """Where a consumed record sits: (topic, partition, offset)."""
    return m.topic, m.partition, m.offset


class WorkerService:
    """One worker: the faust app and its agents over the model host, the learner, the judge caller."""

    def __init__(
        self,
        *,
        kafka: KafkaSettings,
        stream: StreamSettings,
        metrics: MetricsSettings | None = None,
        judge_settings: JudgeSettings | None = None,
        embedder: Embedder | None = None,
        expert_settings: ExpertSettings | None = None,
        worker_id: str | None = None,
        judge: JudgeClient | None = None,
    ) -> None:
        self.kafka = kafka
        self.stream = stream
        self.names = TopicNames.from_settings(kafka)
        self.metrics = ServiceMetrics(metrics)
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.host = ModelHost(
            embedder if embedder is not None else load_embedder(),
            expert_settings,
            cache_size=stream.embedding_cache,
            refit_every=stream.refit_every,
            on_refit=self.metrics.observe_refit,
            reform_every=stream.reform_every,
            on_reform=self.metrics.observe_reform,
            reform_in=stream.reform_in,
        )
        self.judge = JudgeCaller(
            judge_settings,
            judge,
            retry_s=stream.judge_retry_s,
            retry_max_s=stream.judge_retry_max_s,
            on_unavailable=lambda reason: self.metrics.judge_unavailable.labels(reason=reason).inc(),
            in_flight=self.metrics.judge_in_flight.inc,
        )
        self.learner = Learner(
            kafka=kafka,
            stream=stream,
            host=self.host,
            metrics=self.metrics,
            dead_letter=self.dead_letter,
            worker_id=self.worker_id,
            has_role=self.has_log_role,
        )
        self.router = AdaptiveRouter(stream.judge_target_share, stream.routing_window, stream.judge_max_burst)
        # learning / maintenance / drift. With a calls budget the controller's rates are judge calls per
        # text and its target_share turns them into a routed share; without one they are shares of texts.
        budget = stream.judge_calls_per_text or stream.judge_target_share
        self.rate = JudgeRateController(
            calls_per_item=budget, maintenance=min(stream.judge_maintenance_share, budget)
        )
        self.audit = VerdictAudit()
        self.ready = asyncio.Event()
        self.finals = TopicLedger(kafka, self.names.labels, final_label_key)
        self.dead_letters = TopicLedger(kafka, self.names.dead_letter, dead_letter_key)
        self._judging: set[str] = set()  # ids being judged on this worker now
        self._tokens_counted = 0  # the judge's tally already in driftlabel_judge_tokens_total
        self._partitions: dict[str, int] = {}
        self._topology_lock = asyncio.Lock()
        self._positions: dict[tuple[str, int], int] = {}
        self._stopping = False
        #: what a failure after outputs began does (streams/delivery.py); a test may raise instead
        self.on_fatal: Callable[[str, BaseException], NoReturn] = fail_stop
        self.heartbeat = Heartbeat(self.metrics.settings.liveness_timeout_s)
        self.joined = False  # the consumer got its first assignment
        self.app = self._build_app()
        self.proposals = NewClassProposals(
            stream,
            self.host,
            self.judge,
            self.metrics,
            self.worker_id,
            self._publisher(self.t_proposals),
            self._publisher(self.t_control),
            self.charge_judge_call,
            self.publish_training,
        )

    # -- wiring ------------------------------------------------------------------------------------------
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
            broker_commit_interval=self.stream.commit_interval_s,
            producer_linger_ms=self.kafka.linger_ms,
            processing_guarantee="exactly_once" if self.kafka.transactions else "at_least_once",
        )
        n = self.names
        raw = {"key_type": bytes, "key_serializer": "raw", "value_type": bytes, "value_serializer": "raw"}
        self.t_texts = app.topic(n.texts, **raw)
        self.t_judge_requests = app.topic(n.judge_requests, **raw)
        self.t_control = app.topic(n.control, **raw)
        self.t_labels = app.topic(n.labels, key_serializer="raw")
        self.t_verdicts = app.topic(n.judge_verdicts, key_serializer="raw")
        self.t_verdicts_in = app.topic(n.judge_verdicts, **raw)  # the same topic, read raw (audit)
        self.t_training = app.topic(n.training, key_serializer="raw")
        self.t_review = app.topic(n.review, key_serializer="raw")
        self.t_dead = app.topic(n.dead_letter, key_serializer="raw")
        self.t_proposals = app.topic(n.proposals, **raw)

        # Acknowledged by hand, after the handler returned: faust acknowledges an event also when its agent
        # is cancelled mid-way (a SIGTERM, a scale-in) and commits it on stop, which lost the item being
        # judged or labelled then (tests/chaos/test_rebalance.py). A handler never raises (delivery.py).
        async def texts(stream: faust.StreamT) -> None:
            await self.ready.wait()
            size, within = self.stream.batch_size, self.stream.batch_within_s
            async for events in stream.noack_take(size, within=within):  # type: ignore[attr-defined]
                await self.on_texts([ev.message for ev in events])
                for ev in events:
                    await stream.ack(ev)

        async def judge(stream: faust.StreamT) -> None:
            await self.ready.wait()  # the log replayed: pairs a crashed judging wrote are known (new_pairs)
            manual = stream.noack()  # type: ignore[attr-defined]
            async for event in manual.events():
                await self.on_judge_request(event.message)
                await manual.ack(event)

        async def sequence(stream: faust.StreamT) -> None:
            manual = stream.noack()  # type: ignore[attr-defined]
            async for event in manual.events():
                await self.on_control(event.message)
                await manual.ack(event)

        async def audit(stream: faust.StreamT) -> None:
            manual = stream.noack()  # type: ignore[attr-defined]
            async for event in manual.events():
                await self.on_verdict(event.message)
                await manual.ack(event)

        app.agent(self.t_texts, name="driftlabel.texts")(texts)
        app.agent(self.t_verdicts_in, name="driftlabel.verdicts")(audit)
        app.agent(self.t_control, name="driftlabel.sequencer")(sequence)
        if self.stream.judge_target_share > 0:
            app.agent(self.t_judge_requests, name="driftlabel.judge", concurrency=self.judge_slots)(judge)

        async def learn() -> None:
            await self.run_learner()

        async def refresh() -> None:
            self.refresh_lag()
            self.count_judge_tokens()  # calls for no text (naming, generating) between judged items

        async def beat() -> None:
            while True:
                self.heartbeat.beat()
                await asyncio.sleep(1.0)

        app.task(learn)
        app.task(beat)
        probe_path = os.environ.get("DRIFTLABEL_DEBUG_MEMORY")
        if probe_path:  # a diagnostic, off unless asked for: tracemalloc slows the worker down

            async def probe() -> None:
                every_s = float(os.environ.get("DRIFTLABEL_DEBUG_MEMORY_EVERY_S", "60"))
                await memory_probe(Path(probe_path), every_s, self.ready, self.memory_sizes)

            app.task(probe)
        app.timer(2.0)(refresh)

        async def before_shutdown(sender: Any, **kwargs: Any) -> None:
            await self.shutdown()

        async def assigned(sender: Any, assigned: Any = None, **kwargs: Any) -> None:
            self.joined = True
            self.finals.invalidate()  # the previous owners may have written meanwhile
            self.dead_letters.invalidate()

        app.on_before_shutdown.connect(before_shutdown)
        app.on_partitions_assigned.connect(assigned)
        return app

    @staticmethod
    def _publisher(topic: Any) -> Publish:
        """An awaitable send of one raw record to ``topic`` (acknowledged before it returns)."""

        async def publish(key: bytes, value: bytes) -> None:
            await (await topic.send(key=key, value=value))

        return publish

    async def topology(self) -> dict[str, int]:
        """Partition counts of the topics whose partition numbers must agree (checked once)."""
        if self._partitions:
            return self._partitions
        async with self._topology_lock:
            if not self._partitions:
                n = self.names
                counts = await partitions_of(self.kafka, [n.texts, n.judge_requests, n.labels, n.dead_letter])
                same = {counts[n.texts], counts[n.judge_requests], counts[n.labels]}
                if len(same) != 1:
                    raise TopicError(
                        f"{n.texts}, {n.judge_requests} and {n.labels} must have the same number of "
                        f"partitions (an item's records share one partition number); got {counts}. "
                        "Recreate them, or add partitions to match"
                    )
                self._partitions = counts
        return self._partitions

    # -- probes ------------------------------------------------------------------------------------------
    def serve_http(self) -> int:
        """Start ``/metrics``, ``/healthz`` (the loop runs) and ``/readyz`` (model ready, consumer joined)."""
        return self.metrics.serve(self.heartbeat.check, self.readiness)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready = the model is loaded and the log replayed, and the consumer has joined its group."""
        model = self.ready.is_set() and self.host.ready
        try:
            partitions = len(self.app.consumer.assignment()) if self.joined else 0
        except Exception:  # not started yet
            partitions = 0
        ok = model and self.joined and not self._stopping
        return ok, {"model_ready": model, "consumer_joined": self.joined, "partitions": partitions,
                    "model_version": self.host.version, "stopping": self._stopping}  # fmt: skip

    def has_log_role(self) -> bool:
        """Whether this worker owns ``control`` partition 0, and so dead-letters bad learning-log records."""
        try:
            return any(
                tp.topic == self.names.control and tp.partition == 0 for tp in self.app.consumer.assignment()
            )
        except Exception:  # not started / rebalancing
            return False

    async def send_raw(
        self, channel: Any, topic: str, key: bytes, value: bytes, partition: int | None
    ) -> Awaitable[Any]:
        """Queue one serialised record; returns the future of its acknowledgement. Straight to the
        producer (faust's per-message channel layer costs more than the rest of a label), except with
        transactions, where faust's topic send joins the transaction."""
        if self.kafka.transactions:
            return await channel.send(key=key, value=value, partition=partition, value_serializer="raw")
        return await self.app.producer.send(topic, key, value, partition, None, None)

    async def _send_pairs(self, records: Sequence[TrainingMessage]) -> list[Awaitable[Any]]:
        """Queue the judge pairs the learning log does not hold yet (an item judged again after a crash
        wrote its pairs before: counted as duplicates, not written); returns their acknowledgements."""
        pairs = new_pairs(records, self.learner.seen)
        if len(pairs) < len(records):
            self.metrics.duplicates.labels(what="training_pair").inc(len(records) - len(pairs))
        return [await self.t_training.send(key=t.id.encode(), value=t, partition=0) for t in pairs]

    async def publish_training(self, records: list[TrainingMessage]) -> None:
        """Write judge pairs found outside a judge request (a proposal named after a known class) to the
        learning log, as the judge agent writes its pairs, and wait until they are written."""
        await asyncio.gather(*await self._send_pairs(records))

    # -- dead letters ------------------------------------------------------------------------------------
    async def dead_letter(
        self, raw: bytes | None, error: InvalidMessageError | str, topic: str, partition: int, offset: int
    ) -> None:
        """One dead letter per bad input record: skipped if the topic already holds it (a retry after a
        crash, or the previous owner of the input's partition wrote it). Waits until it is written,
        retrying while the broker fails (the ledger keeps a repeat from writing it twice)."""
        await self.retrying(
            f"the dead letter of {topic}:{partition}:{offset}",
            lambda: self._dead_letter_once(raw, error, topic, partition, offset),
        )

    async def _dead_letter_once(
        self, raw: bytes | None, error: InvalidMessageError | str, topic: str, partition: int, offset: int
    ) -> None:
        key = f"{topic}:{partition}:{offset}"
        home = partition % (await self.topology())[self.names.dead_letter]
        await self.dead_letters.ensure([home])
        if self.dead_letters.has(home, key):
            self.metrics.duplicates.labels(what="dead_letter").inc()
            return
        msg = dead_letter_for(raw, error, topic=topic, partition=partition, offset=offset)
        fut = await self.t_dead.send(key=key.encode(), value=msg, partition=home)
        await fut
        self.dead_letters.add(home, key)
        self.metrics.dead_letters.labels(reason=msg.reason, topic=topic).inc()
        log.info("dead-letter %s %s", key, msg.error)

    async def retrying(self, what: str, step: Callable[[], Awaitable[T]]) -> T:
        """``step()`` until it works (:func:`~driftlabel.streams.delivery.retry_until`)."""
        return await retry_until(what, step, stopping=lambda: self._stopping, on_fatal=self.on_fatal)

    # -- control -> the learning log ---------------------------------------------------------------------
    async def on_control(self, m: Any) -> None:
        """Validate one ``control`` record and append it to the learning log (or dead-letter it)."""
        try:
            msg = parse_control(m.value, max_chars=self.stream.max_text_chars)
        except InvalidMessageError as exc:
            await self.dead_letter(m.value, exc, m.topic, m.partition, m.offset)
            return
        source = position_id(m.topic, m.partition, m.offset)
        if msg.op == "add_class" and not msg.examples and msg.description and self.stream.generate_examples:
            msg = await self.with_generated_examples(msg)

        async def forward() -> None:  # a repeat is harmless: the learner applies one record per source
            fut = await self.t_training.send(
                key=msg.label.encode(), value=sequenced_control(msg, source), partition=0
            )
            await fut  # acknowledged before this offset can be committed

        try:
            await self.retrying(f"forwarding control {source}", forward)
        except PERMANENT_ERRORS as exc:
            await self.dead_letter(m.value, InvalidMessageError("too_large", repr(exc)), *_at(m))
            return
        self.metrics.forwarded.labels(what="control").inc()

    # -- judge-verdicts -> the audit ---------------------------------------------------------------------
    async def on_verdict(self, m: Any) -> None:
        """Validate one ``judge-verdicts`` record and count it in the audit metrics (or dead-letter it)."""
        self._positions[(m.topic, m.partition)] = m.offset
        try:
            verdict = parse_verdict(m.value)
        except InvalidMessageError as exc:
            await self.dead_letter(m.value, exc, m.topic, m.partition, m.offset)
            return
        except Exception as exc:  # a parser bug must not stop the agent: the record is kept, with why
            log.exception("could not read the verdict at %s:%d:%d", m.topic, m.partition, m.offset)
            await self.dead_letter(m.value, f"processing_error: {exc!r}", m.topic, m.partition, m.offset)
            return
        self.metrics.observe_verdict_log(*self.audit.labels(verdict))

    # -- texts -------------------------------------------------------------------------------------------
    async def with_generated_examples(self, msg: Any) -> Any:
        """A description-only class gets a few synthetic examples from the judge endpoint, once, here on
        the sequencer, so that every worker learns the same ones from the log. They are marked synthetic:
        the model drops them once real accepted examples of the class arrive. Without a usable answer the
        class is added from its description alone."""
        try:
            gen = getattr(self.judge.judge, "generate_examples", None)
            if gen is None:
                return msg
            self.charge_judge_call()
            examples = await gen(msg.label, msg.description, self.stream.generated_examples)
        except Exception as exc:  # the endpoint is down or answered garbage: the description still works
            log.warning(
                "add_class %s: no generated examples (%s); learning from the description", msg.label, exc
            )
            return msg
        self.metrics.training.labels(source="synthetic", valid="true").inc(len(examples))
        return type(msg)(
            op=msg.op, label=msg.label, description=msg.description, examples=list(examples), synthetic=True
        )

    def count_judge_tokens(self, fallback: int = 0) -> None:
        """``driftlabel_judge_tokens_total`` follows the judge's tally of every reply (unusable ones, naming
        and generating calls too); a judge without one (a fake) adds ``fallback``."""
        spent = self.judge.tokens_spent()
        if spent is None:
            self.metrics.judge_tokens.inc(fallback)
        elif spent > self._tokens_counted:
            self.metrics.judge_tokens.inc(spent - self._tokens_counted)
            self._tokens_counted = spent

    def charge_judge_call(self, calls: float = 1.0) -> None:
        """A judge call for no streamed text (naming a proposal, generating examples) is paid from the
        calls budget, when there is one (without, the budget is a share of texts: nothing to charge)."""
        if self.stream.judge_calls_per_text > 0:
            self.rate.charge(calls)

    async def on_texts(self, records: Sequence[Any]) -> None:
        """Validate a micro-batch of raw ``texts`` records and label the good ones. Never raises."""
        received = time.time()
        for m in records:
            self._positions[(m.topic, m.partition)] = m.offset
        batch = parse_text_batch(
            records, max_bytes=self.stream.max_message_bytes, max_chars=self.stream.max_text_chars
        )
        for m, exc in batch.bad:
            await self.dead_letter(m.value, exc, m.topic, m.partition, m.offset)
        # nothing is published yet, so a failure (the broker unreachable) is retried, not raised: faust
        # would acknowledge and commit the batch's records unlabelled (streams/delivery.py)
        items, homes, sources = await self.retrying(
            f"checking {len(records)} texts against the labels topic",
            lambda: self.own_items(batch.items, batch.sources),
        )
        if not items:
            return
        try:
            await self.label_texts(items, homes, received)
        except _NotLabelled as exc:  # the model failed before any output: the items go to dead-letter
            log.exception("could not label a batch of %d texts", len(items))
            for m in sources:
                await self.dead_letter(m.value, f"processing_error: {exc.__cause__!r}", *_at(m))
        except Exception as exc:  # outputs are out: repeating could double them, dropping loses the rest
            self.on_fatal(f"publishing the labels of {len(items)} texts", exc)

    async def own_items(
        self, items: Sequence[TextMessage], sources: Sequence[Any]
    ) -> tuple[list[TextMessage], list[int], list[Any]]:
        """The items this worker labels now, with their home partitions and source records: an item read
        away from its home is moved there (the home's owner labels it); an id that already has its final
        label is dropped."""
        n = (await self.topology())[self.names.texts]
        homes = [
            home_partition(it.id, m.partition, n, it.id == position_id(m.topic, m.partition, m.offset))
            for it, m in zip(items, sources, strict=True)
        ]
        moved = []
        for it, m, home in zip(items, sources, homes, strict=True):
            if home != m.partition:
                moved.append(await self.t_texts.send(key=it.id.encode(), value=m.value, partition=home))
        if moved:
            await asyncio.gather(*moved)
            self.metrics.forwarded.labels(what="text").inc(len(moved))
        await self.finals.ensure({h for h, m in zip(homes, sources, strict=True) if h == m.partition})
        keep: list[TextMessage] = []
        keep_homes: list[int] = []
        keep_sources: list[Any] = []
        batch_ids: set[str] = set()
        for it, m, home in zip(items, sources, homes, strict=True):
            if home != m.partition:
                continue
            if it.id in batch_ids or self.finals.has(home, it.id):
                self.metrics.duplicates.labels(what="final_label").inc()
                continue
            batch_ids.add(it.id)
            keep.append(it)
            keep_homes.append(home)
            keep_sources.append(m)
        return keep, keep_homes, keep_sources

    def _route(
        self, items: Sequence[TextMessage], homes: Sequence[int], ranking: Any, n_classes: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Which texts of a ranked batch go to the judge, and which need no label from this worker."""
        kind = self.stream.uncertainty
        ids = [it.id for it in items] if kind == "random" else None  # the control routes by id
        u = uncertainty(ranking.entropy, ranking.margin, kind, n_classes, ids=ids)
        st = self.stream
        self.router.target = judged_share(
            st.judge_target_share, st.judge_calls_per_text, st.judge_rate_control, self.rate
        )
        self.metrics.judge_target.set(self.router.target)
        routed = self.router.route(u)  # out-of-scope calls are uncertain too: the judge may know better
        routed = judgeable(ranking, routed, self.stream.judge_depth_candidates)
        # The judge agent may have finalised one of these ids while the batch was embedded (after a
        # restart both agents re-read it): a final label is written only by the agent that claims it.
        done = np.array([self.finals.has(h, it.id) for it, h in zip(items, homes, strict=True)], dtype=bool)
        if done.any():
            self.metrics.duplicates.labels(what="final_label").inc(int(done.sum()))
        return routed & ~done, done

    async def label_texts(self, items: Sequence[TextMessage], homes: Sequence[int], received: float) -> None:
        """Embed + rank a batch, publish labels at once, route the uncertain ones to the judge."""
        texts = [it.text for it in items]
        before = self.host.embed_seconds
        try:  # nothing is published until the claims below: a failure here dead-letters the batch
            X, ranking, version, n_classes = await self.host.predict(texts, self.stream.top_k)
            self.metrics.embed_seconds.inc(self.host.embed_seconds - before)
            routed, done = self._route(items, homes, ranking, n_classes)
            now = time.time()
            batch = label_values([it.id for it in items], ranking, routed, version, now)
        except Exception as exc:
            raise _NotLabelled from exc
        st = self.stream
        # every claim before the first await below, so the judge agent cannot slip in between
        out = [
            (v, h)
            for v, h, d in zip(batch, homes, done.tolist(), strict=True)
            if not d and (not v["final"] or self.finals.claim(h, v["id"]))
        ]
        sent = []
        topic = self.names.labels
        for value, home in out:
            key = value["id"].encode()
            sent.append(await self.send_raw(self.t_labels, topic, key, orjson.dumps(value), home))
        labels = [v for v, _ in out]
        if self.stream.unlabelled_share > 0:  # the texts nobody judged, for self-training (models/)
            sent_ids = {v["id"] for v in labels}
            keep = [i for i, v in enumerate(batch) if v["id"] in sent_ids]
            training = unlabelled_values(
                [batch[i] for i in keep],
                [texts[i] for i in keep],
                X[keep],
                self.host.embedder.name,
                self.stream.unlabelled_share,
            )
            t_topic = self.names.training
            for value in training:
                raw = orjson.dumps(value)
                sent.append(await self.send_raw(self.t_training, t_topic, value["id"].encode(), raw, 0))
        self.metrics.count_labels((v["status"] for v in labels), (v["final"] for v in labels))
        self.metrics.observe_batch(np.asarray(ranking.entropy), routed, self.router.threshold)
        n_final = int((~routed & ~done).sum())
        for _ in range(n_final):
            self.metrics.e2e_latency.labels(path="direct").observe(now - received)
        entropy = np.asarray(ranking.entropy, dtype=np.float64) / np.log(max(n_classes, 2))
        top1 = [c[0][0] if c else "" for c in ranking.candidates]
        for event in self.rate.observe(entropy, top1):
            self.metrics.drift_events.labels(signal=event.signal).inc()
            log.warning(
                "drift on %s (%.3f -> %.3f); the judge goes back to its full rate",
                event.signal,
                event.before,
                event.after,
            )
        rows = np.flatnonzero(routed).tolist()
        if rows:
            try:
                cands = await self.host.judge_candidates(
                    X,
                    rows,
                    [ranking.candidates[i] for i in rows],
                    self.stream.judge_depth_candidates,
                    self.judge.n_examples,
                )
            except Exception:  # their first labels are out: the judge is skipped, not the final label
                log.exception("could not build the judge requests of %d texts; their labels stay", len(rows))
                cands = [[] for _ in rows]
            requests = judge_request_messages(items, ranking, rows, cands, version, received, now)
            for i, req in requests:
                sent.append(
                    await self.t_judge_requests.send(
                        key=req.id.encode(), value=req.dumps(), partition=homes[i]
                    )
                )
            unjudged = sorted(set(rows) - {i for i, _ in requests})
            if unjudged:  # a routed text left with no candidate (its classes removed meanwhile): final as is
                final = label_values(
                    [it.id for it in items], ranking, np.zeros(len(items), bool), version, now
                )
                for i in unjudged:
                    if self.finals.claim(homes[i], final[i]["id"]):
                        raw = orjson.dumps(final[i])
                        key = final[i]["id"].encode()
                        sent.append(await self.send_raw(self.t_labels, topic, key, raw, homes[i]))
                        self.metrics.count_labels([final[i]["status"]], [True])
        await asyncio.gather(*sent)  # acknowledged before the batch's offsets can be committed
        if st.proposals and st.proposal_far_texts:
            try:  # the labels are out; pooling far texts for proposals is best effort
                await self.proposals.gather_far([it.id for it in items], texts, X, ~routed & ~done)
            except Exception:
                log.exception("could not pool the far texts of a batch for proposals")

    # -- judge -------------------------------------------------------------------------------------------
    @property
    def judge_slots(self) -> int:
        """Items the judge agent holds at once: ``judge_concurrency`` calls, each carrying up to
        ``judge.batch_size`` items (a batch only fills when its items are in flight together)."""
        batch = self.judge.settings.batch_size if self.judge.settings is not None else 1
        return self.stream.judge_concurrency * batch

    async def on_judge_request(self, m: Any) -> None:
        """Judge one ``judge-requests`` record and publish what it produced. Never raises."""
        self._positions[(m.topic, m.partition)] = m.offset
        try:
            req = parse_judge_request(m.value)
        except InvalidMessageError as exc:
            await self.dead_letter(m.value, exc, m.topic, m.partition, m.offset)
            return
        await self.retrying(
            f"reading the labels of partition {m.partition}", lambda: self.finals.ensure([m.partition])
        )
        if req.id in self._judging or self.finals.has(m.partition, req.id):
            self.metrics.duplicates.labels(what="final_label").inc()
            return
        self._judging.add(req.id)
        try:
            await self.judge_item(req, m.partition)
        except _NotLabelled as exc:  # the judge path failed before any output: keep the item, with why
            log.exception("could not judge %s", req.id)
            await self.dead_letter(m.value, f"processing_error: {exc.__cause__!r}", *_at(m))
        except Exception as exc:  # outputs are out: repeating could double them, dropping loses the rest
            self.on_fatal(f"publishing the judgement of {req.id}", exc)
        finally:
            self._judging.discard(req.id)

    async def judge_item(self, req: JudgeRequestMessage, home: int) -> None:
        """Judge one item, waiting out an unavailable judge; then publish everything it produced, the
        learning first and the final label last (a crash in between judges again, and writes only the
        pairs the log does not hold yet)."""
        try:  # nothing is published until the sends below: a failure here dead-letters the request
            outcome = await self.judge(req)
            top1 = req.candidates[0].get("label") if req.candidates else None
            for event in self.rate.observe_judged([outcome.n_calls], [outcome.label != top1]):
                self.metrics.drift_events.labels(signal=event.signal).inc()
                log.warning("drift on %s: the judge rejects more top-1 labels; full judge rate", event.signal)
            now = time.time()
            result = judge_result_messages(req, outcome, req.model_version, now)
        except Exception as exc:
            raise _NotLabelled from exc
        key = req.id.encode()
        sent = []
        for v in result.verdicts:
            sent.append(await self.t_verdicts.send(key=key, value=v, partition=home))
        for accepted, latency_ms, _tokens in outcome.answers:
            self.metrics.judge_requests.labels(verdict="valid" if accepted else "invalid").inc()
            self.metrics.judge_latency.observe(latency_ms / 1000.0)
        self.count_judge_tokens(outcome.tokens)
        sent += await self._send_pairs(result.training)
        if result.review is not None:
            sent.append(await self.t_review.send(key=key, value=result.review))
        await asyncio.gather(*sent)
        # a rebalance while it was judged may have given its partition to a worker that finalised it
        # meanwhile: read the labels again (a no-op unless a rebalance invalidated the ledger). Skipping
        # it instead, because the partition moved, is not known to be safe: faust may commit a record
        # acknowledged after its partition moved past the new owner's position (docs/streaming.md)
        await self.retrying(f"reading the labels of partition {home}", lambda: self.finals.ensure([home]))
        if not self.finals.claim(home, req.id):  # the texts agent finalised it while the judge was asked
            self.metrics.duplicates.labels(what="final_label").inc()
            return
        fut = await self.t_labels.send(key=key, value=result.label, partition=home)
        await fut
        self.metrics.judge_outcomes.labels(status=outcome.status).inc()
        if outcome.status == "unresolved" and self.stream.proposals:
            try:  # the item is done; pooling it for proposals is best effort
                await self.proposals.gather_unresolved(req.id, req.text)
            except Exception:
                log.exception("could not pool the unresolved item %s for proposals", req.id)
        self.metrics.count_labels([result.label.status], [True])
        self.metrics.e2e_latency.labels(path="judge").observe(now - req.received_ts)

    # -- learning ----------------------------------------------------------------------------------------
    async def run_learner(self) -> None:
        """Start the learner (model ready), open the texts agent, then follow the log."""
        try:
            await self.topology()
            await self.learner.start()
            gc.collect()
            gc.freeze()  # the model, torch and faust stay: later full collections skip them (fewer pauses)
            self.ready.set()
            n, s, v = await self.host.describe()
            print(
                f"driftlabel worker {self.worker_id}: ready ({n} classes, {s} subsets, model v{v})",
                flush=True,
            )
            await self.learner.follow()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self._stopping:  # the follower was closed under us by shutdown(): not an error
                return
            log.exception("the learning loop failed; the worker stops")
            print(f"driftlabel worker: error: {exc}", flush=True)
            await self.app.crash(exc)

    # -- housekeeping ------------------------------------------------------------------------------------
    def memory_sizes(self) -> dict[str, int]:
        """Entries of this worker's long-lived structures (what a memory leak would show in)."""
        judge = self.judge._judge
        cache = getattr(judge, "cache", None)
        model = self.host.model
        return {
            "ledger_final_keys": len(self.finals),
            "ledger_dead_letter_keys": len(self.dead_letters),
            "learner_seen_digests": len(self.learner.seen),
            "learner_pending": len(self.learner.pending),
            "embedding_cache": len(self.host.cache),
            "embedder_cache": len(getattr(self.host.embedder, "_cache", ())),
            "judge_verdict_cache": len(cache) if cache is not None else 0,
            "model_examples": int(getattr(model, "n_examples", 0) or 0),
            "novelty_pool": len(self.proposals.pool),
            "drift_events": len(self.rate.events),
            "judging": len(self._judging),
        }

    def refresh_lag(self) -> None:
        """Consumer lag from the fetch high-water marks (group topics and the learner's follower)."""
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
        self.learner.refresh_lag()

    async def shutdown(self) -> None:
        """Final checkpoint and cleanup (called by faust before it stops)."""
        self._stopping = True
        self.proposals.cancel()
        try:
            await self.learner.final_checkpoint()
        except Exception:
            log.exception("final checkpoint failed")
        await self.learner.stop()
        await self.finals.stop()
        await self.dead_letters.stop()
        await self.judge.aclose()
        self.metrics.close()
