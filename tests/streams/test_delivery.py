"""Broker failures under an agent: retried while nothing is out, the process stops once outputs are.

faust acknowledges (and later commits) a batch whose agent raised, so an escaping exception would lose
its records; these tests check that none escapes from the texts agent, in-process, with no broker.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, NoReturn

import pytest
from aiokafka.errors import MessageSizeTooLargeError

from driftlabel.streams.delivery import retry_until
from driftlabel.streams.settings import KafkaSettings, MetricsSettings, StreamSettings
from driftlabel.streams.worker import WorkerService, _NotLabelled

from .test_health import TinyEmbedder


class Fatal(Exception):
    """What the tests' ``on_fatal`` raises instead of ending the process."""


def _fatal(what: str, exc: BaseException) -> NoReturn:
    raise Fatal(what) from exc


def _flaky(failures: int, value: Any = "done") -> tuple[Any, list[int]]:
    calls: list[int] = []

    async def step() -> Any:
        calls.append(1)
        if len(calls) <= failures:
            raise ConnectionError("broker unreachable")
        return value

    return step, calls


def test_retry_until_waits_out_failures_and_returns() -> None:
    step, calls = _flaky(2)
    out = asyncio.run(retry_until("x", step, stopping=lambda: False, on_fatal=_fatal, first_wait_s=0.01))
    assert out == "done" and len(calls) == 3


def test_retry_until_raises_what_repeating_cannot_mend() -> None:
    async def step() -> None:
        raise MessageSizeTooLargeError()

    with pytest.raises(MessageSizeTooLargeError):
        asyncio.run(retry_until("x", step, stopping=lambda: False, on_fatal=_fatal, first_wait_s=0.01))


def test_retry_until_stops_the_process_when_the_worker_stops_meanwhile() -> None:
    step, calls = _flaky(10)
    with pytest.raises(Fatal):
        asyncio.run(retry_until("x", step, stopping=lambda: True, on_fatal=_fatal, first_wait_s=0.01))
    assert len(calls) == 1


@pytest.fixture
def service() -> Any:
    s = WorkerService(
        kafka=KafkaSettings(bootstrap_servers="127.0.0.1:1"),
        stream=StreamSettings(),
        metrics=MetricsSettings(enabled=False),
        embedder=TinyEmbedder(),
    )
    s.on_fatal = _fatal
    dead: list[tuple[str, int]] = []

    async def dead_letter(raw: Any, error: Any, topic: str, partition: int, offset: int) -> None:
        dead.append((topic, offset))

    s.dead_letter = dead_letter  # type: ignore[method-assign]
    s.dead = dead  # type: ignore[attr-defined]
    try:
        yield s
    finally:
        s.metrics.close()
        s.host.close()


def _records(n: int) -> list[SimpleNamespace]:
    return [
        SimpleNamespace(
            value=f'{{"id": "t{i}", "text": "hello {i}"}}'.encode(), topic="p.texts", partition=0, offset=i
        )
        for i in range(n)
    ]


def test_the_texts_agent_retries_reading_the_ledger_instead_of_dropping_the_batch(service: Any) -> None:
    records = _records(3)
    attempts: list[int] = []
    labelled: list[list[str]] = []

    async def own_items(items: Any, sources: Any) -> tuple[list[Any], list[int], list[Any]]:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("broker unreachable")
        return list(items), [0] * len(items), list(sources)

    async def label_texts(items: Any, homes: Any, received: float) -> None:
        labelled.append([it.id for it in items])

    service.own_items = own_items
    service.label_texts = label_texts
    asyncio.run(service.on_texts(records))  # never raises
    assert len(attempts) == 3 and labelled == [["t0", "t1", "t2"]] and service.dead == []


def test_a_model_failure_before_any_output_dead_letters_the_batch(service: Any) -> None:
    records = _records(2)

    async def own_items(items: Any, sources: Any) -> tuple[list[Any], list[int], list[Any]]:
        return list(items), [0] * len(items), list(sources)

    async def label_texts(items: Any, homes: Any, received: float) -> None:
        raise _NotLabelled from RuntimeError("the model broke")

    service.own_items = own_items
    service.label_texts = label_texts
    asyncio.run(service.on_texts(records))
    assert service.dead == [("p.texts", 0), ("p.texts", 1)]


def test_a_failure_after_outputs_stops_the_worker_instead_of_dropping_the_rest(service: Any) -> None:
    records = _records(2)

    async def own_items(items: Any, sources: Any) -> tuple[list[Any], list[int], list[Any]]:
        return list(items), [0] * len(items), list(sources)

    async def label_texts(items: Any, homes: Any, received: float) -> None:
        raise ConnectionError("the labels' acknowledgement failed")

    service.own_items = own_items
    service.label_texts = label_texts
    with pytest.raises(Fatal, match="publishing the labels of 2 texts"):
        asyncio.run(service.on_texts(records))
    assert service.dead == []  # not dead-lettered: a restart labels them (their offsets stay uncommitted)


def test_the_real_label_texts_turns_a_model_failure_into_dead_letters(service: Any) -> None:
    """Through the worker's own ``label_texts``: the model raises before anything is published."""
    records = _records(2)

    async def own_items(items: Any, sources: Any) -> tuple[list[Any], list[int], list[Any]]:
        return list(items), [0] * len(items), list(sources)

    async def predict(texts: Any, top_k: int) -> Any:
        raise RuntimeError("the model broke")

    service.own_items = own_items
    service.host.predict = predict
    asyncio.run(service.on_texts(records))
    assert service.dead == [("p.texts", 0), ("p.texts", 1)]
