"""Prometheus configuration and alert rules, checked by the real ``promtool`` (skipped when not installed)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml


def _run(promtool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_promtool_checks_config_and_rules(promtool: str, deploy_dir: Path) -> None:
    for args in (("check", "config", "prometheus.yml"), ("check", "rules", "alerts.yml")):
        proc = _run(promtool, *args, cwd=deploy_dir)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "SUCCESS" in proc.stdout + proc.stderr


def test_alert_rules_fire_as_their_unit_tests_say(promtool: str, deploy_dir: Path) -> None:
    proc = _run(promtool, "test", "rules", "alerts.test.yml", cwd=deploy_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_rejects_a_broken_rule(promtool: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [{"alert": "A", "expr": "sum(("}]}]}))
    assert _run(promtool, "check", "rules", str(bad), cwd=tmp_path).returncode != 0


def test_every_rule_has_a_summary_and_a_severity(deploy_dir: Path) -> None:
    rules = [r for g in yaml.safe_load((deploy_dir / "alerts.yml").read_text())["groups"] for r in g["rules"]]
    assert len(rules) >= 6
    for r in rules:
        assert r["annotations"]["summary"] and r["labels"]["severity"] in {"info", "warning", "critical"}
