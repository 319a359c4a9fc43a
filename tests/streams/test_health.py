"""The probes on the metrics port: ``/healthz`` (the event loop runs), ``/readyz`` (model ready and
consumer joined), ``/metrics``; in-process over real HTTP, no broker (the live worker's probes are
checked in test_once.py)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

import numpy as np

from driftlabel.streams.health import Heartbeat
from driftlabel.streams.metrics import ServiceMetrics
from driftlabel.streams.settings import KafkaSettings, MetricsSettings, StreamSettings
from driftlabel.streams.worker import WorkerService


class TinyEmbedder:
    name = "tiny"
    dim = 4

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return np.ones((len(texts), 4), dtype=np.float32) / 2.0

    def warmup(self) -> None:
        return None


def _get(port: int, path: str) -> tuple[int, dict[str, Any] | str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            body = r.read().decode()
            status = r.status
    except urllib.error.HTTPError as exc:
        body, status = exc.read().decode(), exc.code
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


def test_probes_follow_the_loop_and_the_worker_state() -> None:
    service = WorkerService(
        kafka=KafkaSettings(bootstrap_servers="127.0.0.1:1"),
        stream=StreamSettings(),
        metrics=MetricsSettings(port=0, liveness_timeout_s=0.5),
        embedder=TinyEmbedder(),
    )
    port = service.serve_http()
    try:
        status, body = _get(port, "/healthz")
        assert status == 200 and isinstance(body, dict) and body["status"] == "ok"
        status, body = _get(port, "/readyz")  # no model, not joined
        assert status == 503 and isinstance(body, dict)
        assert body["model_ready"] is False and body["consumer_joined"] is False
        service.host.model = object()  # type: ignore[assignment]
        service.ready.set()
        assert _get(port, "/readyz")[0] == 503  # the model alone is not enough
        service.joined = True
        status, body = _get(port, "/readyz")
        assert status == 200 and isinstance(body, dict) and body["model_ready"] is True
        service.heartbeat.last -= 10  # the loop has not run for 10 s: stuck
        status, body = _get(port, "/healthz")
        assert status == 503 and isinstance(body, dict) and body["loop_heartbeat_age_s"] >= 10
        service.heartbeat.beat()
        assert _get(port, "/healthz")[0] == 200
        status, page = _get(port, "/metrics")
        assert status == 200 and isinstance(page, str) and "# TYPE driftlabel_items_total" in page
        assert _get(port, "/nope")[0] == 404
    finally:
        service.metrics.close()
        service.host.close()


def test_a_metrics_server_without_checks_answers_ok() -> None:
    m = ServiceMetrics(MetricsSettings(port=0))
    port = m.serve()
    try:
        assert _get(port, "/healthz")[0] == 200 and _get(port, "/readyz")[0] == 200
    finally:
        m.close()


def test_heartbeat_check() -> None:
    hb = Heartbeat(timeout_s=5)
    assert hb.check()[0]
    hb.last -= 6
    ok, details = hb.check()
    assert not ok and details["timeout_s"] == 5
