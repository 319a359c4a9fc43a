"""The local broker launcher and ``driftlabel broker``: start on loopback, explicit topics, clean stop."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from driftlabel.streams.broker import LocalBroker, wait_for_port
from driftlabel.streams.errors import TopicError
from driftlabel.streams.settings import KafkaSettings
from driftlabel.streams.topics import TopicNames, create_topics


async def _partitions(kafka: KafkaSettings, topic: str) -> int:
    admin = AIOKafkaAdminClient(**kafka.client_kwargs())
    await admin.start()
    try:
        desc = await admin.describe_topics([topic])
        return len(desc[0]["partitions"])
    finally:
        await admin.close()


def test_topics_are_created_explicitly_with_the_configured_partitions(broker: LocalBroker) -> None:
    kafka = KafkaSettings(bootstrap_servers=broker.bootstrap, topic_prefix="explicit.", partitions=3)
    created = asyncio.run(create_topics(kafka))
    assert sorted(created) == sorted(TopicNames.from_prefix("explicit.").all())
    assert asyncio.run(create_topics(kafka)) == []  # idempotent
    assert asyncio.run(_partitions(kafka, "explicit.dead-letter")) == 3


def test_unreachable_broker_is_a_clear_error() -> None:
    kafka = KafkaSettings(bootstrap_servers="127.0.0.1:9", request_timeout_ms=2000)
    with pytest.raises(TopicError, match="driftlabel broker"):
        asyncio.run(create_topics(kafka, timeout=3))


@pytest.mark.slow
def test_broker_command_prints_bootstrap_and_stops_cleanly() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "driftlabel.streams.cli", "broker", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        bootstrap = None
        deadline = time.monotonic() + 60
        lines = []
        while bootstrap is None and time.monotonic() < deadline:
            line = proc.stdout.readline() if proc.stdout else ""
            lines.append(line)
            if line.startswith("bootstrap: "):
                bootstrap = line.split()[1]
        assert bootstrap, lines
        host, port = bootstrap.split(":")
        assert host == "127.0.0.1" and wait_for_port(host, int(port), 5)
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0 and "stopped" in rest
        assert not wait_for_port(host, int(port), 1)  # the broker process is gone too
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
