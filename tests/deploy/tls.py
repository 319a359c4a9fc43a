"""Test helpers for Kafka over TLS: a throwaway PKI, a Tansu process, and a TLS proxy in front of it.

Tansu 0.6 cannot serve TLS itself (see test_kafka_security.py), so a TLS-terminating proxy on loopback,
which Tansu advertises as its own address, puts every client connection (metadata included) on TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import signal
import ssl
import subprocess
import threading
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from driftlabel.streams.broker import find_broker_binary, wait_for_port

__all__ = ["Tansu", "TlsProxyThread", "make_pki", "tls_proxy"]


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


def make_pki(tmp: Path) -> dict[str, Path]:
    """A CA, a broker certificate for 127.0.0.1, a client certificate, and an unrelated CA (PEM files)."""
    ca, ca_key, ca_crt = _ca(tmp, "driftlabel-test-ca")
    _, _, other_ca = _ca(tmp, "some-other-ca")
    server_crt, server_key = _leaf(tmp, "broker", ca, ca_key, server=True)
    client_crt, client_key = _leaf(tmp, "worker", ca, ca_key, server=False)
    return {
        "ca": ca_crt, "other_ca": other_ca, "server_crt": server_crt, "server_key": server_key,
        "client_crt": client_crt, "client_key": client_key,
    }  # fmt: skip


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, asyncio.CancelledError, ssl.SSLError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(Exception):
        writer.close()


async def tls_proxy(pki: dict[str, Path], port: int, upstream: int, seen: list[str]) -> asyncio.Server:
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


class TlsProxyThread:
    """:func:`tls_proxy` served from its own thread and event loop (for clients in other processes)."""

    def __init__(self, pki: dict[str, Path], port: int, upstream: int) -> None:
        self.seen: list[str] = []
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._server: asyncio.Server | None = None

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._server = self._loop.run_until_complete(tls_proxy(pki, port, upstream, self.seen))
            ready.set()
            self._loop.run_forever()
            self._server.close()
            with contextlib.suppress(Exception):
                self._loop.run_until_complete(asyncio.wait_for(self._server.wait_closed(), 5))
            self._loop.close()

        self._thread = threading.Thread(target=run, name="tls-proxy", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise AssertionError("the TLS proxy did not start")

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
