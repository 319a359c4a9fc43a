"""The Grafana dashboard's structure (no Grafana runs here, and its JSON schema is not available offline)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def test_ids_unique_and_layout_without_overlaps(dashboard: dict[str, Any]) -> None:
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], int] = {}
    for p in dashboard["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps panel {cells[(x, y)]}"
                cells[(x, y)] = p["id"]


def test_every_panel_queries_the_provisioned_datasource(dashboard: dict[str, Any], deploy_dir: Path) -> None:
    ds = yaml.safe_load((deploy_dir / "grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = ds["datasources"][0]["uid"]
    for p in _panels(dashboard):
        assert p["datasource"]["uid"] == uid, p["title"]
        assert p["targets"] and all(t["expr"].strip() and t["refId"] for t in p["targets"]), p["title"]
    provider = yaml.safe_load((deploy_dir / "grafana/provisioning/dashboards/driftlabel.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    assert dashboard["uid"] == "driftlabel" and dashboard["templating"]["list"][0]["name"] == "instance"


def test_titles_cover_the_issue(dashboard: dict[str, Any]) -> None:
    titles = " | ".join(p["title"].lower() for p in _panels(dashboard))
    words = ("uncertain", "judge throughput", "judge latency", "accept", "labels/s", "lag", "drift")
    for word in (*words, "classes", "model version"):
        assert word in titles, word
