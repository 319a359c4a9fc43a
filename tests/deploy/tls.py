"""Test helpers for Kafka TLS and SASL: a throwaway PKI, a Tansu process, and a proxy in front of it.

Tansu 0.6 can serve neither TLS nor a usable SASL login (see test_kafka_security.py), so a proxy on
loopback, which Tansu advertises as its own address, terminates mutual TLS and plays the broker's side of
SASL/PLAIN (the Kafka SaslHandshake and SaslAuthenticate requests), then pipes everything else to Tansu.
Every client connection, metadata included, goes through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import signal
import ssl
import struct
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from driftlabel.streams.broker import find_broker_binary, wait_for_port

__all__ = ["ProxyLog", "Tansu", "TlsProxyThread", "make_pki", "tls_proxy"]


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


@dataclass
class ProxyLog:
    """What the proxy saw: client certificate names, users that logged in, refused logins."""

    peers: list[str] = field(default_factory=list)
    users: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


def _frame(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


def _string(value: str | None) -> bytes:
    if value is None:
        return struct.pack(">h", -1)
    raw = value.encode()
    return struct.pack(">h", len(raw)) + raw


async def _sasl_plain(
    cr: asyncio.StreamReader, cw: asyncio.StreamWriter, br: asyncio.StreamReader, bw: asyncio.StreamWriter,
    users: dict[str, str], log: ProxyLog,
) -> bool:  # fmt: skip
    """Play the broker's side of SASL/PLAIN (Kafka SaslHandshake + SaslAuthenticate, versions 0-1).

    Requests before the handshake (ApiVersions) go to the real broker; True once the client logged in.
    """
    while True:
        size = struct.unpack(">i", await cr.readexactly(4))[0]
        frame = await cr.readexactly(size)
        api_key, api_version, corr = struct.unpack(">hhi", frame[:8])
        n = struct.unpack(">h", frame[8:10])[0]
        body = frame[10 + max(n, 0) :]  # after the client id
        head = struct.pack(">i", corr)
        if api_key == 17:  # SaslHandshake: which mechanism
            m = struct.unpack(">h", body[:2])[0]
            mechanism = body[2 : 2 + m].decode()
            err = 0 if mechanism == "PLAIN" else 33  # UNSUPPORTED_SASL_MECHANISM
            cw.write(_frame(head + struct.pack(">hi", err, 1) + _string("PLAIN")))
            await cw.drain()
            if err:
                log.refused.append(f"mechanism {mechanism}")
                return False
        elif api_key == 36:  # SaslAuthenticate: authzid NUL user NUL password
            length = struct.unpack(">i", body[:4])[0]
            _, user, password = body[4 : 4 + length].split(b"\x00", 2)
            ok = users.get(user.decode()) == password.decode()
            out = head + struct.pack(">h", 0 if ok else 58)  # SASL_AUTHENTICATION_FAILED
            out += _string(None if ok else "Authentication failed: invalid username or password")
            out += struct.pack(">i", 0)  # no auth bytes back
            if api_version >= 1:
                out += struct.pack(">q", 0)
            cw.write(_frame(out))
            await cw.drain()
            (log.users if ok else log.refused).append(user.decode())
            return ok
        else:  # ApiVersions and the like: the real broker answers
            bw.write(_frame(frame))
            await bw.drain()
            rsize = struct.unpack(">i", await br.readexactly(4))[0]
            cw.write(_frame(await br.readexactly(rsize)))
            await cw.drain()


async def tls_proxy(
    pki: dict[str, Path] | None,
    port: int,
    upstream: int,
    log: ProxyLog,
    sasl_users: dict[str, str] | None = None,
) -> asyncio.Server:
    """A proxy to ``upstream`` on ``port``: mutual TLS with ``pki`` (None: plain TCP), SASL/PLAIN with
    ``sasl_users`` (None: no SASL). Everything after the login is piped through unchanged."""
    ctx: ssl.SSLContext | None = None
    if pki is not None:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki["ca"]))
        ctx.load_cert_chain(str(pki["server_crt"]), str(pki["server_key"]))
        ctx.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: the client must show a certificate of our CA

    async def handle(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        sslobj = cw.get_extra_info("ssl_object")
        peer = sslobj.getpeercert() if sslobj else None
        log.peers.append(dict(x[0] for x in peer["subject"])["commonName"] if peer else "?")
        br, bw = await asyncio.open_connection("127.0.0.1", upstream)
        try:
            if sasl_users is not None and not await _sasl_plain(cr, cw, br, bw, sasl_users, log):
                raise ValueError("login refused")
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, ValueError):
            ok = False
        else:
            ok = True
        if not ok or (sasl_users is not None and cw.is_closing()):
            for w in (cw, bw):
                with contextlib.suppress(Exception):
                    w.close()
            return
        await asyncio.gather(_pipe(cr, bw), _pipe(br, cw))

    return await asyncio.start_server(handle, "127.0.0.1", port, ssl=ctx)


class TlsProxyThread:
    """:func:`tls_proxy` served from its own thread and event loop (for clients in other processes)."""

    def __init__(
        self, pki: dict[str, Path] | None, port: int, upstream: int, sasl_users: dict[str, str] | None = None
    ) -> None:
        self.log = ProxyLog()
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._server: asyncio.Server | None = None

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._server = self._loop.run_until_complete(tls_proxy(pki, port, upstream, self.log, sasl_users))
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
