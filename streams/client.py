"""The users' side of the topics: produce texts / training records / control ops, read final labels.

Thin async helpers over aiokafka used by the CLI, the demo, the tests and the benchmark.
"""

from __future__ import annotations

import asyncio
import csv
import itertools
import json
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from driftlabel.streams.errors import InvalidMessageError, TopicError
from driftlabel.streams.messages import CONTROL_OPS, TRAINING_SOURCES
from driftlabel.streams.settings import KafkaSettings

__all__ = [
    "LabelReader",
    "TopicReader",
    "control_record",
    "iter_input_records",
    "produce",
    "read_text_lines",
]


def _key(value: dict[str, Any]) -> bytes | None:
    k = value.get("id") or value.get("label")
    return str(k).encode() if k is not None else None


async def produce(
    kafka: KafkaSettings,
    topic: str,
    values: Iterable[dict[str, Any] | str | bytes],
    *,
    rate: float = 0.0,
    on_sent: Any = None,
) -> int:
    """Send values (dicts as JSON, str/bytes as they are) to ``topic``; ``rate`` > 0 paces them per second.

    ``on_sent(i, value, ts)`` is called after each send is queued (used for latency measurements).
    """
    producer = AIOKafkaProducer(**kafka.client_kwargs(), acks="all", linger_ms=kafka.linger_ms)
    try:
        await producer.start()
    except (KafkaError, OSError) as exc:
        await producer.stop()
        raise TopicError(
            f"cannot reach the broker at {kafka.bootstrap_servers}: {exc!r}; start one with "
            "`driftlabel broker` or set DRIFTLABEL_KAFKA_BOOTSTRAP_SERVERS"
        ) from exc
    n = 0
    t0 = time.monotonic()
    try:
        for value in values:
            if isinstance(value, dict):
                key, raw = _key(value), json.dumps(value, ensure_ascii=False).encode()
            elif isinstance(value, str):
                key, raw = None, value.encode()
            else:
                key, raw = None, value
            if rate > 0:
                wait = t0 + n / rate - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            await producer.send(topic, raw, key=key)
            if on_sent is not None:
                on_sent(n, value, time.time())
            n += 1
        await producer.flush()
    finally:
        await producer.stop()
    return n


def read_text_lines(stream: Iterable[str]) -> Iterator[str]:
    for line in stream:
        line = line.rstrip("\n")
        if line.strip():
            yield line


def iter_input_records(
    path: Path | None, stream: TextIO, kind: str, *, fmt: str = "auto", source: str = "human"
) -> Iterator[dict[str, Any] | str]:
    """Records from a file (or stdin) for ``texts`` or ``training``.

    Formats: ``jsonl`` (objects, passed on as they are), ``csv`` (columns ``text`` [+ ``id``, ``label``]),
    ``text`` (one text per line; texts only). ``auto`` picks by file suffix, else sniffs the first line.
    """
    if kind not in ("texts", "training"):
        raise ValueError(kind)
    if source not in TRAINING_SOURCES:
        raise InvalidMessageError("invalid_value", f"source must be one of {TRAINING_SOURCES}")
    handle = path.open(encoding="utf-8") if path is not None else stream
    try:
        first = handle.readline()
        if fmt == "auto":
            suffix = path.suffix.lower() if path is not None else ""
            if suffix in (".jsonl", ".ndjson") or first.lstrip().startswith("{"):
                fmt = "jsonl"
            elif suffix == ".csv" or first.strip().lower().startswith(("text,", "id,", "label,")):
                fmt = "csv"
            else:
                fmt = "text"
        yield from _records(itertools.chain([first], handle), fmt, kind, source)
    finally:
        if path is not None:
            handle.close()


def _records(stream: Iterable[str], fmt: str, kind: str, source: str) -> Iterator[dict[str, Any] | str]:
    if fmt == "jsonl":
        for n, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidMessageError(
                    "invalid_json", f"line {n}: {exc.msg}; fix the line or drop it"
                ) from exc
            if kind == "training" and isinstance(obj, dict):
                obj.setdefault("source", source)
                obj.setdefault("valid", True)
                obj.setdefault("id", f"train-{n}")
            yield obj
    elif fmt == "csv":
        reader = csv.DictReader(stream)
        if not reader.fieldnames or "text" not in reader.fieldnames:
            raise InvalidMessageError("missing_field", "the CSV needs a header with a 'text' column")
        if kind == "training" and "label" not in reader.fieldnames:
            raise InvalidMessageError("missing_field", "training CSV needs 'text' and 'label' columns")
        for n, row in enumerate(reader, 1):
            if kind == "training":
                yield {
                    "id": row.get("id") or f"train-{n}",
                    "text": row["text"],
                    "label": row["label"],
                    "source": source,
                    "valid": True,
                }
            else:
                rec: dict[str, Any] = {"id": row.get("id") or f"text-{n}", "text": row["text"]}
                yield rec
    elif fmt == "text":
        if kind == "training":
            raise InvalidMessageError("wrong_type", "training records need labels: use CSV or JSONL")
        yield from read_text_lines(stream)
    else:
        raise InvalidMessageError("invalid_value", f"unknown format {fmt!r}; use jsonl, csv or text")


def control_record(
    op: str, label: str, description: str | None = None, examples: Sequence[str] = ()
) -> dict[str, Any]:
    """A checked ``control`` value (the worker checks again; this catches mistakes before sending)."""
    if op not in CONTROL_OPS:
        raise InvalidMessageError("unknown_op", f"op must be one of {CONTROL_OPS}")
    if not label.strip():
        raise InvalidMessageError("invalid_value", "the label is empty")
    if op == "describe_class" and not (description and description.strip()):
        raise InvalidMessageError("missing_field", "describe_class needs a description")
    if op == "add_class" and not examples and not description:
        raise InvalidMessageError("missing_field", "add_class needs examples or a description to learn from")
    rec: dict[str, Any] = {"op": op, "label": label}
    if description:
        rec["description"] = description
    if examples:
        rec["examples"] = [e for e in examples if e.strip()]
    return rec


class TopicReader:
    """Reads all partitions of some topics from the beginning, outside any group (no commits).

    ``idle`` tells when every partition is at its fetch high-water mark, so a batch reader can stop
    without relying on ListOffsets.
    """

    def __init__(self, kafka: KafkaSettings, topics: Sequence[str]) -> None:
        self.kafka = kafka
        self.topics = list(topics)
        self._c: AIOKafkaConsumer | None = None
        self._tps: list[TopicPartition] = []
        self._next: dict[TopicPartition, int] = {}

    async def __aenter__(self) -> TopicReader:
        c = AIOKafkaConsumer(
            **self.kafka.client_kwargs(),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=self.kafka.fetch_max_wait_ms,
        )
        try:
            await c.start()
        except (KafkaError, OSError) as exc:
            await c.stop()
            raise TopicError(f"cannot reach the broker at {self.kafka.bootstrap_servers}: {exc!r}") from exc
        self._c = c
        for t in self.topics:
            for _ in range(50):
                parts = c.partitions_for_topic(t)
                if parts:
                    break
                await c.topics()
                await asyncio.sleep(0.1)
            else:
                await c.stop()
                raise TopicError(f"topic {t} does not exist; is a worker running with this topic prefix?")
            self._tps += [TopicPartition(t, p) for p in sorted(parts)]
        c.assign(self._tps)
        await c.seek_to_beginning(*self._tps)
        for tp in self._tps:
            self._next[tp] = await c.position(tp)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._c is not None:
            await self._c.stop()

    async def poll(self, timeout_ms: int = 200) -> list[Any]:
        assert self._c is not None
        got = await self._c.getmany(timeout_ms=timeout_ms)
        out = []
        for tp, recs in got.items():
            out.extend(recs)
            if recs:
                self._next[tp] = recs[-1].offset + 1
        return out

    @property
    def idle(self) -> bool:
        assert self._c is not None
        for tp in self._tps:
            hw = self._c.highwater(tp)
            if hw is None or self._next[tp] < hw:
                return False
        return True


class LabelReader:
    """Final labels, each id once (a repeat after a crash-and-retry is dropped)."""

    def __init__(self, kafka: KafkaSettings, topic: str) -> None:
        self.reader = TopicReader(kafka, [topic])
        self.seen: set[str] = set()

    async def finals(
        self, *, follow: bool, idle_s: float = 2.0, limit: int = 0
    ) -> AsyncIterator[dict[str, Any]]:
        async with self.reader as r:
            idle_since: float | None = None
            n = 0
            while True:
                recs = await r.poll()
                for rec in recs:
                    try:
                        value = json.loads(rec.value)
                    except (TypeError, ValueError):
                        continue
                    if not isinstance(value, dict) or not value.get("final") or value.get("id") in self.seen:
                        continue
                    self.seen.add(value["id"])
                    yield value
                    n += 1
                    if limit and n >= limit:
                        return
                if recs or follow or not r.idle:
                    idle_since = None
                    continue
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since >= idle_s:
                    return
