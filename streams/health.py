"""The worker's HTTP port: ``/metrics`` (Prometheus), ``/healthz`` (liveness), ``/readyz`` (readiness).

Orchestrators need two different answers. *Liveness* ("restart me?") must stay true while a worker is
busy loading the model or replaying the log for minutes, and turn false only when the process is stuck:
the asyncio loop that runs Kafka and every agent stamps a heartbeat; ``/healthz`` is 200 while the stamp is
fresh (``metrics.liveness_timeout_s``). *Readiness* ("send me work / count me in?") is true once the
model is loaded and the log replayed and the consumer has joined its group: ``/readyz``. Both answer with a
small JSON body saying why. The server is a stdlib threading HTTP server, so it answers even while the
loop is blocked (which is exactly what liveness must detect).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ["Heartbeat", "StatusServer"]

#: readiness check: (ready, details)
Check = Callable[[], tuple[bool, dict[str, Any]]]


class Heartbeat:
    """The last time the event loop proved it runs (thread-safe: a float assignment)."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.last = time.monotonic()
        self.started = self.last

    def beat(self) -> None:
        self.last = time.monotonic()

    def check(self) -> tuple[bool, dict[str, Any]]:
        age = time.monotonic() - self.last
        return age <= self.timeout_s, {"loop_heartbeat_age_s": round(age, 3), "timeout_s": self.timeout_s}


class StatusServer:
    """Serves the three paths on one port in a daemon thread."""

    def __init__(
        self, registry: CollectorRegistry, liveness: Check, readiness: Check, host: str, port: int
    ) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(server.registry), CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/readyz"):
                    ok, details = (server.liveness if path == "/healthz" else server.readiness)()
                    body = json.dumps({"status": "ok" if ok else "unavailable", **details}).encode()
                    self._send(200 if ok else 503, body, "application/json")
                else:
                    self._send(404, b"not found: try /metrics, /healthz or /readyz\n", "text/plain")

            def _send(self, status: int, body: bytes, ctype: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # probes every few seconds: quiet
                return

        self.registry = registry
        self.liveness = liveness
        self.readiness = readiness
        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="driftlabel-http", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
