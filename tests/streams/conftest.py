"""Fixtures of the streaming tests: a real Tansu broker (session), a real worker process (module), the
real simulated expert judge over loopback HTTP, and helpers to produce to / read from the topics.

The broker is started on a free loopback port and stopped by its pid; every module uses its own topic
prefix and consumer group, so modules do not see each other's records.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from driftlabel.streams.broker import LocalBroker, free_port
from driftlabel.streams.client import TopicReader, produce
from driftlabel.streams.settings import KafkaSettings
from driftlabel.streams.topics import TopicNames, ensure_topics

#: CLINC150 classes used by the service tests (small, so the worker fits in seconds)
TEST_CLASSES = (
    "balance", "bill_due", "book_flight", "book_hotel", "calories", "change_language", "weather",
    "timer", "translate", "transfer", "alarm", "restaurant_reservation",
)  # fmt: skip


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    """A real Tansu broker on 127.0.0.1 and a free port, for the whole session."""
    b = LocalBroker(log_path=tmp_path_factory.mktemp("broker") / "broker.log")
    b.start()
    try:
        yield b
    finally:
        b.stop()


def kafka_for(broker: LocalBroker, prefix: str, partitions: int = 2) -> KafkaSettings:
    return KafkaSettings(
        bootstrap_servers=broker.bootstrap, topic_prefix=prefix, partitions=partitions, group_id=f"{prefix}g"
    )


@pytest.fixture(scope="session")
def clinc(data_dir: Path) -> dict[str, list[tuple[str, str]]]:
    from driftlabel.streams.demo import load_clinc150_file

    data = load_clinc150_file(data_dir / "clinc150" / "data_full.json")
    keep = set(TEST_CLASSES)
    return {k: [(t, lab) for t, lab in rows if lab in keep] for k, rows in data.items()}


@dataclass
class WorkerProcess:
    """One ``driftlabel worker`` child process and what it needs; restartable."""

    kafka: KafkaSettings
    env: dict[str, str]
    log_path: Path
    metrics_port: int
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    _log_offset: int = field(default=0)

    @property
    def names(self) -> TopicNames:
        return TopicNames.from_settings(self.kafka)

    def start(self, timeout: float = 240.0) -> None:
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        out = self.log_path.open("ab")
        env = {**os.environ, **self.env}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "driftlabel.streams.cli", "worker"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
        )  # fmt: skip
        out.close()
        self.starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ": ready (" in self.log():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            time.sleep(0.3)
        self.kill()
        raise AssertionError(f"worker not ready in {timeout}s:\n{self.log()[-4000:]}")

    def log(self) -> str:
        if not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as f:
            f.seek(self._log_offset)
            return f.read().decode(errors="replace")

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (graceful: final checkpoint), SIGKILL if it hangs; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def kill(self) -> None:
        """SIGKILL: no final checkpoint (a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return str(r.read().decode())


def send(kafka: KafkaSettings, topic: str, values: list[Any]) -> None:
    asyncio.run(produce(kafka, topic, values))


def read_until(
    kafka: KafkaSettings, topics: list[str], done: Any, timeout: float = 60.0
) -> list[tuple[str, dict[str, Any] | bytes]]:
    """Read ``topics`` from the beginning until ``done(records)`` is true; records as (topic, value)."""

    async def run() -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []
        async with TopicReader(kafka, topics) as r:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                for rec in await r.poll(200):
                    try:
                        out.append((rec.topic, json.loads(rec.value)))
                    except ValueError:
                        out.append((rec.topic, rec.value))
                if done(out):
                    return out
        raise AssertionError(f"timed out after {timeout}s; got {len(out)} records: {out[-5:]}")

    return asyncio.run(run())


@pytest.fixture(scope="module")
def judge_server(data_dir: Path) -> Iterator[Any]:
    """The real simulated expert (OpenAI-compatible HTTP on loopback) answering from CLINC150."""
    from driftlabel.judge import SimulatedExpert

    sim = SimulatedExpert(str(data_dir / "clinc150" / "data_full.json"))
    sim.start_in_thread()
    try:
        yield sim
    finally:
        sim.stop()


def make_worker(
    broker: LocalBroker,
    prefix: str,
    tmp: Path,
    judge_url: str,
    judge_env: dict[str, str] | None = None,
    **stream_env: str,
) -> WorkerProcess:
    kafka = kafka_for(broker, prefix)
    ensure_topics(kafka)
    port = free_port()
    env = {
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "DRIFTLABEL_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "DRIFTLABEL_KAFKA_TOPIC_PREFIX": prefix,
        "DRIFTLABEL_KAFKA_PARTITIONS": str(kafka.partitions),
        "DRIFTLABEL_KAFKA_GROUP_ID": kafka.group_id,
        "DRIFTLABEL_JUDGE_BASE_URL": judge_url,
        "DRIFTLABEL_STREAM_CHECKPOINT_DIR": str(tmp / "checkpoints"),
        "DRIFTLABEL_METRICS_PORT": str(port),
        **{f"DRIFTLABEL_STREAM_{k.upper()}": v for k, v in stream_env.items()},
        **{f"DRIFTLABEL_JUDGE_{k.upper()}": v for k, v in (judge_env or {}).items()},
    }
    return WorkerProcess(kafka=kafka, env=env, log_path=tmp / "worker.log", metrics_port=port)


def seed_records(clinc: dict[str, list[tuple[str, str]]], per_class: int = 10) -> list[dict[str, Any]]:
    from driftlabel.streams.demo import split_demo

    seeds, _ = split_demo({"train": clinc["train"], "val": [], "test": []}, per_class, 0)
    return [
        {"id": f"seed-{i}", "text": t, "label": lab, "source": "seed", "valid": True}
        for i, (t, lab) in enumerate(seeds)
    ]


class Helpers:
    """The helper functions above, handed to tests as a fixture (conftest is not importable by tests)."""

    send = staticmethod(send)
    read_until = staticmethod(read_until)
    seed_records = staticmethod(seed_records)
    make_worker = staticmethod(make_worker)
    kafka_for = staticmethod(kafka_for)


@pytest.fixture(scope="session")
def h() -> Helpers:
    return Helpers()


@pytest.fixture(scope="module")
def service(
    broker: LocalBroker,
    judge_server: Any,
    clinc: dict[str, list[tuple[str, str]]],
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[WorkerProcess]:
    """A running worker on its own topics, seeded with 10 examples of each TEST_CLASSES class."""
    prefix = f"t{int(time.time() * 1000) % 10**8}{request.module.__name__.rsplit('.', 1)[-1]}."
    tmp = tmp_path_factory.mktemp("service")
    # a quick breaker and short retries, so the outage test takes seconds
    judge_env = {"max_retries": "0", "breaker_failures": "2", "breaker_reset_s": "0.5", "timeout_s": "5"}
    worker = make_worker(
        broker, prefix, tmp, judge_server.base_url, judge_env,
        judge_target_share="1.0", batch_within_s="0.05", checkpoint_every_s="3600",
        judge_retry_s="0.3", judge_retry_max_s="1.0",
    )  # fmt: skip
    send(worker.kafka, worker.names.training, seed_records(clinc))
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()
