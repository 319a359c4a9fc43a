"""Topic names (with the configured prefix) and their explicit creation.

Topics are always created explicitly with the configured partition count: brokers that auto-create
topics pick their own partition count, and faust would then disagree with the other workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, fields

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from driftlabel.streams.errors import TopicError
from driftlabel.streams.settings import KafkaSettings

__all__ = ["TopicNames", "create_topics", "ensure_topics"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TopicNames:
    """Full names of the eight topics of PRODUCT.md."""

    texts: str
    labels: str
    judge_requests: str
    judge_verdicts: str
    training: str
    control: str
    review: str
    dead_letter: str

    @classmethod
    def from_prefix(cls, prefix: str = "driftlabel.") -> TopicNames:
        return cls(**{f.name: prefix + f.name.replace("_", "-") for f in fields(cls)})

    @classmethod
    def from_settings(cls, kafka: KafkaSettings) -> TopicNames:
        return cls.from_prefix(kafka.topic_prefix)

    def all(self) -> list[str]:
        return [getattr(self, f.name) for f in fields(self)]


async def create_topics(
    kafka: KafkaSettings, names: list[str] | None = None, timeout: float = 30.0
) -> list[str]:
    """Create the missing topics; return the names created. Existing topics are left alone."""
    wanted = names if names is not None else TopicNames.from_settings(kafka).all()
    admin = AIOKafkaAdminClient(**kafka.client_kwargs())
    try:
        await asyncio.wait_for(admin.start(), timeout)
        existing = set(await asyncio.wait_for(admin.list_topics(), timeout))
        missing = [t for t in wanted if t not in existing]
        if missing:
            new = [NewTopic(t, kafka.partitions, kafka.replication_factor) for t in missing]
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
