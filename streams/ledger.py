"""Effectively-once writes without transactions: an output topic as its own dedupe log.

The problem: a worker writes a final label (or a dead letter) and crashes before its input offset is
committed; the record is processed again, by it or by whichever worker takes the partition, and the
output would appear twice. Transactions (Kafka/Redpanda, ``kafka.transactions``) make the write and the
commit atomic; brokers without them (the local Tansu) need another way, and the dedupe must hold either
way.

The way here: the output record itself is the dedupe record. A :class:`TopicLedger` knows, per partition
of an output topic, which keys were already written there, by reading that partition (from where it last
read to the fetch high-water mark) before the first write after every rebalance. Writers make sure each
key has one *home* partition and that the home's input is owned by one worker at a time (the consumer
group does that): final labels of an item go to the labels partition of its home (see
:func:`home_partition`), dead letters of an input record to the dead-letter partition of the input's
partition number. Then "already written?" is exact: a write and its dedupe entry are one record, so no
crash can separate them, which a separate changelog (a faust table) could not promise without
transactions. A worker that crashed mid-write is gone before the group moves its partitions (its
session must time out first), so its last write is either in the topic or never will be.

What it does not cover: a *zombie* (a worker alive but expelled from the group, still writing) needs
fencing, which only transactions give. Memory: one Python string per key written (about 100 bytes; a
million final labels ~ 100 MB per worker for the partitions it has owned).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.partitioner import murmur2

from driftlabel.streams.settings import KafkaSettings

__all__ = ["TopicLedger", "dead_letter_key", "final_label_key", "home_partition"]

log = logging.getLogger(__name__)


def home_partition(item_id: str, source_partition: int, n_partitions: int, bare: bool) -> int:
    """The one partition that owns an item id: Kafka's default partitioner (murmur2) of the id, which is
    where any client with the default partitioner puts a record keyed by it; a bare-string text's id is
    its own position, so it stays where it was read."""
    if bare:
        return source_partition
    return (murmur2(item_id.encode("utf-8")) & 0x7FFFFFFF) % n_partitions


def final_label_key(rec: ConsumerRecord) -> str | None:
    """The id of a ``labels`` record if it is a final label, else None."""
    try:
        value = orjson.loads(rec.value) if rec.value is not None else None
    except orjson.JSONDecodeError:
        return None
    if isinstance(value, dict) and value.get("final") is True and isinstance(value.get("id"), str):
        return value["id"]
    return None


def dead_letter_key(rec: ConsumerRecord) -> str | None:
    """The key of a ``dead-letter`` record: the input's ``topic:partition:offset``."""
    return rec.key.decode("utf-8", errors="replace") if rec.key is not None else None


class TopicLedger:
    """Which keys each partition of ``topic`` already holds, kept up to date from the topic itself."""

    def __init__(
        self,
        kafka: KafkaSettings,
        topic: str,
        key_of: Callable[[ConsumerRecord], str | None],
        *,
        timeout_s: float = 60.0,
    ) -> None:
        self.kafka = kafka
        self.topic = topic
        self.key_of = key_of
        self.timeout_s = timeout_s
        self._keys: dict[int, set[str]] = {}
        self._next: dict[int, int] = {}  # next offset to read, per partition
        self._fresh: dict[int, int] = {}  # generation each partition was last caught up in
        self._generation = 0
        self._consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()
        self.records_read = 0

    def invalidate(self) -> None:
        """Another worker may have written since: catch up again before the next check (on rebalance)."""
        self._generation += 1

    def has(self, partition: int, key: str) -> bool:
        return key in self._keys.get(partition, ())

    def add(self, partition: int, key: str) -> None:
        """Record a write this worker just made (the topic will show it too)."""
        self._keys.setdefault(partition, set()).add(key)

    def __len__(self) -> int:
        return sum(len(k) for k in self._keys.values())

    async def ensure(self, partitions: Iterable[int]) -> None:
        """Catch the given partitions up to their high-water marks, if not done since the last rebalance."""
        todo = sorted({p for p in partitions if self._fresh.get(p) != self._generation})
        if not todo:
            return
        async with self._lock:
            gen = self._generation
            todo = [p for p in todo if self._fresh.get(p) != gen]
            for p in todo:
                await self._catch_up(p)
                self._fresh[p] = gen

    async def _start(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            c = AIOKafkaConsumer(
                **self.kafka.client_kwargs(),
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                fetch_max_wait_ms=min(self.kafka.fetch_max_wait_ms, 100),
                max_poll_records=5000,
            )
            await asyncio.wait_for(c.start(), self.timeout_s)
            self._consumer = c
        return self._consumer

    async def _catch_up(self, partition: int) -> None:
        c = await self._start()
        tp = TopicPartition(self.topic, partition)
        c.assign([tp])
        start = self._next.get(partition)
        if start is None:
            await c.seek_to_beginning(tp)
        else:
            c.seek(tp, start)
        t0 = time.monotonic()
        since_ms = time.time() * 1000.0
        keys = self._keys.setdefault(partition, set())
        n = 0
        while True:
            got = await c.getmany(tp, timeout_ms=200, max_records=5000)
            for rec in got.get(tp, ()):
                k = self.key_of(rec)
                if k is not None:
                    keys.add(k)
                n += 1
            pos = await c.position(tp)
            self._next[partition] = pos
            hw = c.highwater(tp)
            polled = c.last_poll_timestamp(tp)
            if hw is not None and polled is not None and polled >= since_ms and pos >= hw:
                break
            if time.monotonic() - t0 > self.timeout_s:
                raise TimeoutError(
                    f"could not read {self.topic}[{partition}] to its end in {self.timeout_s:.0f}s; "
                    "is the broker reachable?"
                )
        self.records_read += n
        if n:
            log.info("ledger %s[%d]: read %d records, %d keys", self.topic, partition, n, len(keys))

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
