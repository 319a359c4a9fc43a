"""The learner's steps against its checkpoints: offsets never run ahead of the model they are saved with.

A fake follower stands in for the ``training`` consumer (the learner only marks, snapshots and polls it);
the model host is the real one on the cluster embedder of ``test_refit``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import orjson
from aiokafka import ConsumerRecord

from driftlabel.models import RedClassifier
from driftlabel.streams.checkpoint import list_checkpoints, read_checkpoint
from driftlabel.streams.learner import Learner
from driftlabel.streams.messages import TrainingMessage
from driftlabel.streams.metrics import ServiceMetrics
from driftlabel.streams.settings import KafkaSettings, MetricsSettings, StreamSettings

from .test_refit import _host, _records

TOPIC = "p.training"


class FakeFollower:
    """Offsets of one ``training`` partition, as :class:`driftlabel.streams.follower.Follower` keeps them."""

    def __init__(self) -> None:
        self.offsets: dict[str, dict[int, int]] = {TOPIC: {0: 0}}
        self._consumer = None

    def mark(self, records: list[ConsumerRecord]) -> None:
        for r in records:
            self.offsets[r.topic][r.partition] = max(self.offsets[r.topic][r.partition], r.offset + 1)

    def snapshot(self) -> dict[str, dict[int, int]]:
        return {t: dict(p) for t, p in self.offsets.items()}


def _record(offset: int, t: TrainingMessage) -> ConsumerRecord:
    raw = orjson.dumps({"id": t.id, "text": t.text, "label": t.label, "source": t.source, "valid": t.valid})
    return ConsumerRecord(
        TOPIC, 0, offset, int(time.time() * 1000), 0, t.id.encode(), raw, None, 0, len(raw), []
    )


def _learner(tmp_path: Path) -> Learner:
    host = _host(refit_every=0)
    host.seed_run = False
    learner = Learner(
        kafka=KafkaSettings(topic_prefix="p."), stream=StreamSettings(checkpoint_dir=tmp_path), host=host,
        metrics=ServiceMetrics(MetricsSettings(enabled=False)), dead_letter=None, worker_id="w",  # type: ignore[arg-type]
    )  # fmt: skip
    learner.follower = FakeFollower()  # type: ignore[assignment]
    learner.replaying = False
    return learner


def test_a_reserved_label_is_a_dead_letter_and_the_rest_of_its_step_is_learned(tmp_path: Path) -> None:
    learner = _learner(tmp_path)
    before = learner.host.live.n_examples
    bad = TrainingMessage(id="r1", text="alpha 77", label="out_of_scope", source="human")
    records = [_record(i, t) for i, t in enumerate([*_records(100, 3), bad])]
    try:
        asyncio.run(learner._apply_records(records))
        assert learner.host.live.n_examples == before + 3
        assert [exc.reason for _, exc in learner.pending] == ["invalid_value"]
        assert learner.follower.snapshot() == {TOPIC: {0: 4}}  # type: ignore[union-attr]
    finally:
        learner.host.close()


def test_a_shutdown_checkpoint_waits_for_the_step_in_flight(tmp_path: Path) -> None:
    """The final checkpoint (from faust's shutdown, another task) saves the step's offsets with its model."""
    learner = _learner(tmp_path)
    host = learner.host
    before = host.live.n_examples
    records = [_record(i, t) for i, t in enumerate(_records(100, 5))]
    gate = threading.Event()

    async def scenario() -> None:
        host._side.submit(gate.wait)  # the build thread busy a moment, as while a copy learns
        step = asyncio.create_task(learner._apply_records(records))
        await asyncio.sleep(0.3)  # the step has marked its records and waits for the build thread
        threading.Timer(0.5, gate.set).start()
        await learner.final_checkpoint()
        await step

    try:
        asyncio.run(scenario())
        ckpt = read_checkpoint(list_checkpoints(tmp_path)[0], "p.")
        assert ckpt.offsets == {TOPIC: {0: 5}}
        assert ckpt.state["position"] == 5 and len(ckpt.seen()) == 5
        saved = RedClassifier.load(ckpt.model_dir, embedder=host.embedder)
        assert saved.n_examples == before + 5 == host.live.n_examples
    finally:
        host.close()


def test_dead_letters_stop_when_the_role_moves_to_another_worker(tmp_path: Path) -> None:
    """The role is asked for before each dead letter: a rebalance during a slow write hands it on."""
    learner = _learner(tmp_path)
    role = [True, True, False]  # the role moves away after the second write
    written: list[int] = []

    async def dead_letter(raw: object, exc: object, topic: str, partition: int, offset: int) -> None:
        written.append(offset)

    learner.dead_letter = dead_letter  # type: ignore[assignment]
    learner.has_role = lambda: role.pop(0) if role else False  # type: ignore[method-assign]
    bad = [
        _record(i, TrainingMessage(id=f"r{i}", text="x", label="out_of_scope", source="human"))
        for i in range(3)
    ]
    try:
        asyncio.run(learner._apply_records(bad))
        assert len(learner.pending) == 3
        assert asyncio.run(learner.flush_dead_letters()) == 2
        assert written == [0, 1] and len(learner.pending) == 1  # the third waits for whoever holds the role
    finally:
        learner.host.close()
