"""A consumer that reads *every* partition of ``training`` and ``control``, outside any consumer group.

Why not faust: a faust app has one consumer, in one group (the app id), for all its topics, so the
partitions of ``training`` would be split across workers; but every worker must learn every training
record and apply every control op to stay consistent. faust has no per-topic "broadcast" consumer, so
this piece uses aiokafka (which faust itself runs on) with manual partition assignment and no commits:
the position lives in the checkpoint instead.

Caught-up detection uses the high-water mark returned by fetches, not ListOffsets (which some brokers
answer wrongly for batched writes).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from driftlabel.streams.errors import TopicError
from driftlabel.streams.settings import KafkaSettings

__all__ = ["Follower"]

log = logging.getLogger(__name__)

Offsets = dict[str, dict[int, int]]


class Follower:
    """Reads all partitions of some topics from given offsets (or the beginning)."""

    def __init__(self, kafka: KafkaSettings, topics: Sequence[str], start: Offsets | None = None) -> None:
        self.kafka = kafka
        self.topics = list(topics)
        self.start_offsets = start or {}
        self.offsets: Offsets = {t: {} for t in self.topics}  # next offset to read, per partition
        self._consumer: AIOKafkaConsumer | None = None
        self._tps: list[TopicPartition] = []

    async def start(self, timeout: float = 30.0) -> None:
        consumer = AIOKafkaConsumer(
            **self.kafka.client_kwargs(),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=self.kafka.fetch_max_wait_ms,
            max_poll_records=1000,
        )
        await asyncio.wait_for(consumer.start(), timeout)
        self._consumer = consumer
        deadline = asyncio.get_running_loop().time() + timeout
        tps: list[TopicPartition] = []
        for topic in self.topics:
            while True:
                parts = consumer.partitions_for_topic(topic)
                if parts:
                    break
                if asyncio.get_running_loop().time() > deadline:
                    raise TopicError(
                        f"topic {topic} does not exist; run `driftlabel worker` once or create it"
                    )
                await consumer.topics()  # refreshes metadata
                await asyncio.sleep(0.2)
            tps.extend(TopicPartition(topic, p) for p in sorted(parts))
        consumer.assign(tps)
        self._tps = tps
        for tp in tps:
            off = self.start_offsets.get(tp.topic, {}).get(tp.partition)
            if off is None:
                await consumer.seek_to_beginning(tp)
                off = await consumer.position(tp)
            else:
                consumer.seek(tp, off)
            self.offsets[tp.topic][tp.partition] = int(off)

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def poll(self, timeout_ms: int = 500, max_records: int | None = None) -> list[ConsumerRecord]:
        """Next records, merged across partitions and topics by timestamp (then position), so that a
        replay applies training records and control ops in about the order they were written. Not yet
        marked as applied: call :meth:`mark`."""
        assert self._consumer is not None, "call start() first"
        batches = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        out: list[ConsumerRecord] = [r for tp in self._tps for r in batches.get(tp, ())]
        out.sort(key=lambda r: (r.timestamp, r.topic, r.partition, r.offset))
        return out

    def mark(self, records: Sequence[ConsumerRecord]) -> None:
        """Record that ``records`` are applied to the model (their offsets go into the next checkpoint)."""
        for r in records:
            cur = self.offsets[r.topic].get(r.partition, 0)
            self.offsets[r.topic][r.partition] = max(cur, r.offset + 1)

    def highwater(self, tp: TopicPartition) -> int | None:
        assert self._consumer is not None
        hw = self._consumer.highwater(tp)
        return None if hw is None else int(hw)

    def lag(self) -> dict[TopicPartition, int]:
        """Records behind the last fetched high-water mark, per partition (unknown ones left out)."""
        out = {}
        for tp in self._tps:
            hw = self.highwater(tp)
            if hw is not None:
                out[tp] = max(0, hw - self.offsets[tp.topic].get(tp.partition, 0))
        return out

    def caught_up(self) -> bool:
        """True when every partition's fetch high-water mark is known and reached."""
        lag = self.lag()
        return len(lag) == len(self._tps) and all(v == 0 for v in lag.values())

    def snapshot(self) -> Offsets:
        return {t: dict(parts) for t, parts in self.offsets.items()}
