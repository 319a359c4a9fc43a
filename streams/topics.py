"""Topic names (with the configured prefix) and their explicit creation.

Topics are always created explicitly with the configured partition count: brokers that auto-create
topics pick their own partition count, and faust would then disagree with the other workers. The
learning log (``training``) is the exception: it has ONE partition, so that every worker applies its
records, and the control ops sequenced into it, in the same total order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, fields

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from driftlabel.streams.errors import TopicError
from driftlabel.streams.settings import KafkaSettings

__all__ = [
    "SINGLE_PARTITION",
    "TopicNames",
    "create_topics",
    "deletion_horizon_ms",
    "ensure_topics",
    "partitions_of",
    "topic_configs",
]

#: topics (field names of :class:`TopicNames`) created with one partition: the learning log
SINGLE_PARTITION = ("training",)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TopicNames:
    """Full names of the eight topics of PRODUCT.md, plus ``proposals`` (emerging classes, issue 9)."""

    texts: str
    labels: str
    judge_requests: str
    judge_verdicts: str
    training: str
    control: str
    review: str
    dead_letter: str
    proposals: str

    @classmethod
    def from_prefix(cls, prefix: str = "driftlabel.") -> TopicNames:
        return cls(**{f.name: prefix + f.name.replace("_", "-") for f in fields(cls)})

    @classmethod
    def from_settings(cls, kafka: KafkaSettings) -> TopicNames:
        return cls.from_prefix(kafka.topic_prefix)

    def all(self) -> list[str]:
        return [getattr(self, f.name) for f in fields(self)]

    def partitions_for(self, topic: str, default: int) -> int:
        """How many partitions driftlabel creates ``topic`` with."""
        single = {getattr(self, name) for name in SINGLE_PARTITION}
        return 1 if topic in single else default


async def create_topics(
    kafka: KafkaSettings, names: list[str] | None = None, timeout: float = 30.0
) -> list[str]:
    """Create the missing topics; return the names created. Existing topics are left alone."""
    topic_names = TopicNames.from_settings(kafka)
    wanted = names if names is not None else topic_names.all()
    admin = AIOKafkaAdminClient(**kafka.client_kwargs())
    try:
        await asyncio.wait_for(admin.start(), timeout)
        existing = set(await asyncio.wait_for(admin.list_topics(), timeout))
        missing = [t for t in wanted if t not in existing]
        if missing:
            new = [
                NewTopic(t, topic_names.partitions_for(t, kafka.partitions), kafka.replication_factor)
                for t in missing
            ]
            with contextlib.suppress(TopicAlreadyExistsError):  # another worker won the race: fine
                await asyncio.wait_for(admin.create_topics(new), timeout)
            log.info("created topics %s with %d partitions", missing, kafka.partitions)
        return missing
    except (KafkaError, OSError, asyncio.TimeoutError) as exc:
        raise TopicError(
            f"could not create topics on {kafka.bootstrap_servers}: {exc!r}; is the broker running "
            "(`driftlabel broker`) and DRIFTLABEL_KAFKA_BOOTSTRAP_SERVERS right?"
        ) from exc
    finally:
        await admin.close()


def ensure_topics(kafka: KafkaSettings, names: list[str] | None = None) -> list[str]:
    """Synchronous wrapper of :func:`create_topics` for the CLI."""
    return asyncio.run(create_topics(kafka, names))


async def partitions_of(kafka: KafkaSettings, topics: list[str], timeout: float = 30.0) -> dict[str, int]:
    """Partition counts of existing topics (from metadata); a missing topic raises :class:`TopicError`."""
    c = AIOKafkaConsumer(**kafka.client_kwargs(), group_id=None, enable_auto_commit=False)
    try:
        await asyncio.wait_for(c.start(), timeout)
        out: dict[str, int] = {}
        deadline = asyncio.get_running_loop().time() + timeout
        for t in topics:
            while not (parts := c.partitions_for_topic(t)):
                if asyncio.get_running_loop().time() > deadline:
                    raise TopicError(f"topic {t} does not exist; create it (`driftlabel worker` does)")
                await c.topics()
                await asyncio.sleep(0.2)
            out[t] = len(parts)
        return out
    except (KafkaError, OSError, asyncio.TimeoutError) as exc:
        raise TopicError(f"could not read topic metadata from {kafka.bootstrap_servers}: {exc!r}") from exc
    finally:
        await c.stop()


async def topic_configs(kafka: KafkaSettings, topic: str, timeout: float = 10.0) -> dict[str, str] | None:
    """The broker's configuration entries of ``topic`` (DescribeConfigs), or None if it cannot say
    (the broker does not implement it, or the request fails)."""
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    admin = AIOKafkaAdminClient(**kafka.client_kwargs())
    try:
        await asyncio.wait_for(admin.start(), timeout)
        responses = await asyncio.wait_for(
            admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)]), timeout
        )
        out: dict[str, str] = {}
        for resp in responses:
            for res in resp.resources:
                if res[0] != 0:  # error code
                    return None
                for entry in res[4]:
                    if entry[1] is not None:
                        out[str(entry[0])] = str(entry[1])
        return out or None
    except Exception as exc:  # not every Kafka-protocol broker answers DescribeConfigs
        log.info("no topic configuration for %s (%r)", topic, exc)
        return None
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


def deletion_horizon_ms(configs: dict[str, str] | None, margin_ms: int = 3_600_000) -> int | None:
    """How long after its timestamp a record is surely gone from a topic with these configs, or None
    when records are kept for ever (no ``delete`` cleanup policy, ``retention.ms`` -1 or unknown).

    Kafka deletes whole segments once their newest record is older than ``retention.ms``, and a segment
    spans up to ``segment.ms``; the check runs every few minutes (``margin_ms`` covers it)."""
    if not configs or "delete" not in configs.get("cleanup.policy", "delete"):
        return None
    try:
        retention = int(configs.get("retention.ms", "-1"))
        segment = int(configs.get("segment.ms", str(7 * 24 * 3_600_000)))
    except ValueError:
        return None
    if retention < 0:
        return None
    return retention + max(segment, 0) + margin_ms
