"""Fixtures of the deployment tests: the deploy/ folder, its YAML/JSON files, the worker's metric names."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    """Every non-empty YAML document of a file."""
    with path.open(encoding="utf-8") as fh:
        return [d for d in yaml.safe_load_all(fh) if d]


@pytest.fixture(scope="session")
def deploy_dir() -> Path:
    return DEPLOY


@pytest.fixture(scope="session")
def compose() -> dict[str, Any]:
    docs = load_yaml_docs(DEPLOY / "docker-compose.yml")
    assert len(docs) == 1
    return docs[0]


@pytest.fixture(scope="session")
def k8s_docs() -> list[dict[str, Any]]:
    return [d for p in sorted((DEPLOY / "k8s").glob("*.yaml")) for d in load_yaml_docs(p)]


@pytest.fixture(scope="session")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DEPLOY / "grafana" / "dashboards" / "driftlabel.json").read_text())
    return data


@pytest.fixture(scope="session")
def promtool() -> Iterator[str]:
    """The promtool binary (Debian package ``prometheus``); the test is skipped when it is not installed."""
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("no promtool (Debian package prometheus ships it): Prometheus files unchecked")
    yield found


def exported_samples() -> dict[str, set[str]]:
    """Sample name -> label names, as a worker's /metrics page shows them once every metric has a child.

    Built from the worker's own registry (``driftlabel.streams.metrics.ServiceMetrics``): one child per
    labelled metric is created so that labelled families show their samples (``_total``, ``_bucket``,
    ``_count``, ``_sum``, ``_created``) and label names.
    """
    from prometheus_client.metrics import MetricWrapperBase

    from driftlabel.streams.metrics import ServiceMetrics

    m = ServiceMetrics()
    for value in vars(m).values():
        if isinstance(value, MetricWrapperBase):
            names = getattr(value, "_labelnames", ())
            if names:
                value.labels(*["x"] * len(names))
    out: dict[str, set[str]] = {}
    for family in m.registry.collect():
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return out


_SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


def metrics_in(expr: str) -> dict[str, set[str]]:
    """Metric names (``driftlabel_*``, ``up``) a PromQL expression selects, with the labels it matches on."""
    out: dict[str, set[str]] = {}
    for name, matchers in _SELECTOR.findall(expr):
        if name.startswith("driftlabel_") or name == "up":
            out.setdefault(name, set()).update(_MATCHER.findall(matchers or ""))
    return out


def grouping_labels(expr: str) -> set[str]:
    """Label names of ``by (...)`` / ``on (...)`` clauses in an expression."""
    return {lab.strip() for group in _GROUPING.findall(expr) for lab in group.split(",") if lab.strip()}
