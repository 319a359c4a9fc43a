"""A real worker started the way the compose file starts it, with secrets set: SASL_SSL, probes, logs.

One ``driftlabel -vv worker --config deploy/driftlabel.compose.toml --worker-id worker-1`` child process
(the compose command; debug logging of every library: faust, aiokafka, openai, httpx) against the real
Tansu broker over SASL_SSL (mutual TLS + SASL/PLAIN, through the proxy of ``tls.py``: Tansu can serve
neither itself), and the real simulated expert, which here *requires* the API key: logins at the proxy
and verdicts on the metrics page prove both secrets were used, and then neither may appear in the log,
on ``/metrics``, in ``--print-config`` or in the settings' repr. The liveness and readiness endpoints the
Kubernetes probes and compose healthchecks call (``/healthz``, ``/readyz`` on the metrics port) are
polled on the same process.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from driftlabel.judge import JudgeSettings, SimulatedExpert
from driftlabel.streams.broker import free_port
from driftlabel.streams.client import produce
from driftlabel.streams.settings import KafkaSettings
from driftlabel.streams.topics import TopicNames, ensure_topics

from .conftest import DEPLOY, REPO, load_yaml_docs
from .tls import Tansu, TlsProxyThread, make_pki

API_KEY = "sk-live-DO-NOT-LEAK-7f3a9c2e41"
SASL_PASSWORD = "sasl-DO-NOT-LEAK-b8e05d"
SECRETS = (API_KEY, SASL_PASSWORD)
CLASSES = ("weather", "transfer", "alarm", "translate", "balance", "timer")

pytestmark = pytest.mark.slow


@dataclass
class LiveWorker:
    proc: subprocess.Popen[bytes]
    log_path: Path
    port: int
    kafka: KafkaSettings
    sim: SimulatedExpert
    proxy: TlsProxyThread

    def log(self) -> str:
        return self.log_path.read_bytes().decode(errors="replace") if self.log_path.exists() else ""

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return int(r.status), r.read().decode()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode(errors="replace")


def _clinc(data_dir: Path) -> dict[str, list[tuple[str, str]]]:
    raw = json.loads((data_dir / "clinc150" / "data_full.json").read_text())
    return {k: [(t, lab) for t, lab in v if lab in CLASSES] for k, v in raw.items()}


@pytest.fixture(scope="module")
def live(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveWorker]:
    tmp = tmp_path_factory.mktemp("live")
    pki = make_pki(tmp)
    proxy_port, broker_port = free_port(), free_port()
    broker = Tansu(tmp, broker_port, proxy_port)  # advertises the TLS proxy as its address
    proxy = TlsProxyThread(pki, proxy_port, broker_port, sasl_users={"driftlabel": SASL_PASSWORD})
    sim = SimulatedExpert(data_dir / "clinc150" / "data_full.json", api_key=API_KEY).start_in_thread()
    proc: subprocess.Popen[bytes] | None = None
    try:
        prefix = f"dep{int(time.time() * 1000) % 10**8}."
        tls = {"ssl_cafile": pki["ca"], "ssl_certfile": pki["client_crt"], "ssl_keyfile": pki["client_key"]}
        sasl = {"sasl_mechanism": "PLAIN", "sasl_username": "driftlabel"}
        kafka = KafkaSettings(
            bootstrap_servers=f"127.0.0.1:{proxy_port}", topic_prefix=prefix, partitions=2,
            group_id=f"{prefix}g", security_protocol="SASL_SSL", sasl_password=SASL_PASSWORD, **tls, **sasl,
        )  # fmt: skip
        ensure_topics(kafka)
        data = _clinc(data_dir)
        seeds = [r for lab in CLASSES for r in [x for x in data["train"] if x[1] == lab][:10]]
        names = TopicNames.from_settings(kafka)
        records = [
            {"id": f"seed-{i}", "text": t, "label": lab, "source": "seed", "valid": True}
            for i, (t, lab) in enumerate(seeds)
        ]
        asyncio.run(produce(kafka, names.training, records))
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLABEL_")}
        env.update(
            {
                "HF_HUB_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false",
                "DRIFTLABEL_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
                "DRIFTLABEL_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",  # mutual TLS + SASL/PLAIN via the proxy
                **{f"DRIFTLABEL_KAFKA_{k.upper()}": str(v) for k, v in {**tls, **sasl}.items()},
                "DRIFTLABEL_KAFKA_TOPIC_PREFIX": prefix,
                "DRIFTLABEL_KAFKA_PARTITIONS": "2",
                "DRIFTLABEL_KAFKA_GROUP_ID": kafka.group_id,
                "DRIFTLABEL_KAFKA_SASL_PASSWORD": SASL_PASSWORD,  # from the environment, as the manifests do
                "DRIFTLABEL_JUDGE_BASE_URL": sim.base_url,
                "DRIFTLABEL_JUDGE_API_KEY": API_KEY,
                "DRIFTLABEL_STREAM_JUDGE_TARGET_SHARE": "1.0",
                "DRIFTLABEL_STREAM_CHECKPOINT_DIR": str(tmp / "checkpoints"),
                "DRIFTLABEL_STREAM_CHECKPOINT_EVERY_S": "3600",
                "DRIFTLABEL_METRICS_HOST": "127.0.0.1",
                "DRIFTLABEL_METRICS_PORT": str(port),
            }
        )
        log_path = tmp / "worker.log"
        # the compose file's worker command, its config file mapped to the repository's copy; the
        # environment above wins over that file (loopback broker, judge, ports and paths of this test)
        command = load_yaml_docs(DEPLOY / "docker-compose.yml")[0]["services"]["worker-1"]["command"]
        files = {"/etc/driftlabel/driftlabel.toml": str(DEPLOY / "driftlabel.compose.toml")}
        args = [files.get(a, a) for a in command]
        with log_path.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "driftlabel.streams.cli", "-vv", *args],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=REPO,
            )  # fmt: skip
        worker = LiveWorker(proc, log_path, port, kafka, sim, proxy)
        deadline = time.monotonic() + 300
        while ": ready (" not in worker.log():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"worker not ready (exit {proc.poll()}):\n{worker.log()[-4000:]}")
            time.sleep(0.3)
        texts = [{"id": f"t-{i}", "text": t} for i, (t, _) in enumerate(data["test"][:40])]
        asyncio.run(produce(kafka, names.texts, texts))
        deadline = time.monotonic() + 120
        while 'driftlabel_judge_requests_total{verdict="valid"}' not in worker.get("/metrics")[1]:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no judge verdict on /metrics:\n{worker.log()[-4000:]}")
            time.sleep(0.5)
        yield worker
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        sim.stop()
        proxy.stop()
        broker.stop()


def test_the_worker_talks_to_kafka_over_mutual_tls_and_sasl(live: LiveWorker) -> None:
    # every connection presented the client certificate (CN "worker") of our CA and logged in with the
    # SASL password from the environment; none was refused
    log = live.proxy.log
    assert set(log.peers) == {"worker"} and len(log.peers) >= 3  # the test's clients, the worker's
    assert set(log.users) == {"driftlabel"} and len(log.users) == len(log.peers)
    assert not log.refused


def _leaks(text: str, secret: str) -> list[str]:
    """Lines of ``text`` holding ``secret`` or a recognisable piece of it."""
    parts = (secret, secret[:12], secret[-12:])
    return [line for line in text.splitlines() if any(p in line for p in parts)]


def test_the_key_was_used_and_no_secret_is_exported_or_logged(live: LiveWorker) -> None:
    assert live.sim.counts["yes"] + live.sim.counts["no"] > 0  # the simulated expert accepted the key
    assert live.sim.counts.get("fail_401", 0) == 0
    log = live.log()
    assert "DEBUG" in log  # every library logged at debug level
    status, page = live.get("/metrics")
    assert status == 200
    for secret in SECRETS:
        assert not _leaks(page, secret), "a secret is on the /metrics page"
    assert not _leaks(log, API_KEY), "the judge API key is in the worker's log"


def test_the_sasl_password_is_not_logged(live: LiveWorker) -> None:
    # aiokafka.conn logs SaslAuthenticateRequest's PLAIN bytes at DEBUG: streams/cli.py keeps it at INFO
    leaks = _leaks(live.log(), SASL_PASSWORD)
    assert not leaks, "the SASL password is in the worker's log:\n" + "\n".join(leaks[:3])


def _probe(live: LiveWorker, path: str) -> tuple[int, str]:
    status, body = live.get(path)
    # prometheus_client's server answers every path with the metrics page: that is not a probe endpoint
    if status == 404 or "# HELP driftlabel_" in body:
        pytest.xfail(
            f"the worker serves no {path} endpoint yet (streams/ adds the probes); got the metrics page"
        )
    return status, body


def test_liveness_probe_answers_on_the_metrics_port(live: LiveWorker) -> None:
    status, body = _probe(live, "/healthz")
    assert status == 200, body
    assert json.loads(body)["status"] == "ok"
    assert not any(secret in body for secret in SECRETS)


def test_readiness_probe_is_ready_once_the_worker_is(live: LiveWorker) -> None:
    status, body = _probe(live, "/readyz")
    assert status == 200, body
    assert json.loads(body)["status"] == "ok"
    assert not any(secret in body for secret in SECRETS)


def test_print_config_and_settings_mask_secrets(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text(
        '[kafka]\nsecurity_protocol = "SASL_SSL"\nsasl_mechanism = "SCRAM-SHA-512"\nsasl_username = "u"\n'
        f'sasl_password = "{SASL_PASSWORD}"\n[judge]\napi_key = "{API_KEY}"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLABEL_")}
    for extra in ({}, {"DRIFTLABEL_JUDGE_API_KEY": API_KEY, "DRIFTLABEL_KAFKA_SASL_PASSWORD": SASL_PASSWORD}):
        proc = subprocess.run(
            [sys.executable, "-m", "driftlabel.streams.cli", "worker", "--config", str(conf),
             "--print-config"], capture_output=True, text=True, env={**env, **extra}, cwd=REPO, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert "api_key = **" in proc.stdout and "sasl_password = **" in proc.stdout
        for secret in SECRETS:
            assert secret not in proc.stdout + proc.stderr
    kafka = KafkaSettings(
        security_protocol="SASL_SSL", sasl_mechanism="PLAIN", sasl_username="u", sasl_password=SASL_PASSWORD
    )
    judge = JudgeSettings(api_key=API_KEY)
    for shown in (
        repr(kafka),
        str(kafka),
        kafka.model_dump_json(),
        repr(judge),
        str(judge),
        judge.model_dump_json(),
    ):
        for secret in SECRETS:
            assert secret not in shown
    # the real values are still there for the clients that need them
    assert kafka.client_kwargs()["sasl_plain_password"] == SASL_PASSWORD
    assert judge.api_key.get_secret_value() == API_KEY


def test_judge_errors_and_logs_mask_a_password_in_the_endpoint_url(caplog: pytest.LogCaptureFixture) -> None:
    from driftlabel.judge import Candidate, Judge, JudgeUnavailableError

    port = free_port()  # nothing listens there: connection refused
    judge = JudgeSettings(
        base_url=f"http://proxyuser:{SASL_PASSWORD}@127.0.0.1:{port}/v1?key={API_KEY}",
        api_key=API_KEY, max_retries=1, backoff_base_s=0.01, backoff_max_s=0.02, timeout_s=2,
    )  # fmt: skip
    assert judge.endpoint == f"http://proxyuser:***@127.0.0.1:{port}/v1?***"

    async def scenario() -> str:
        async with Judge(judge) as j:
            with pytest.raises(JudgeUnavailableError) as info:
                await j.validate("will it rain", Candidate("weather"), item_id="x")
        return str(info.value)

    with caplog.at_level("DEBUG"):
        message = asyncio.run(scenario())
    assert "proxyuser:***@" in message
    for secret in SECRETS:
        assert secret not in message and secret not in caplog.text


def _healthcheck_argv(test: list[str], port: int) -> list[str]:
    """A compose/Dockerfile healthcheck command (exec form), run here against ``port`` instead of 9464."""
    assert test[0] == "CMD", test
    argv = [a.replace("127.0.0.1:9464", f"127.0.0.1:{port}") for a in test[1:]]
    return [sys.executable if a == "python" else a for a in argv]


def test_the_compose_and_dockerfile_healthchecks_pass_on_the_worker(live: LiveWorker) -> None:
    compose = load_yaml_docs(DEPLOY / "docker-compose.yml")[0]
    checks = [compose["services"]["worker-1"]["healthcheck"]["test"]]
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    exec_form = dockerfile.split("HEALTHCHECK", 1)[1].split("CMD", 1)[1].split("\n")[0].strip()
    checks.append(["CMD", *json.loads(exec_form)])
    for test in checks:
        proc = subprocess.run(_healthcheck_argv(test, live.port), capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, (test, proc.stderr)
    # and they fail when nothing answers, so they are not vacuous
    dead = subprocess.run(_healthcheck_argv(checks[0], free_port()), capture_output=True, timeout=30)
    assert dead.returncode != 0


def test_the_compose_judge_service_starts_and_is_healthy(data_dir: Path, tmp_path: Path) -> None:
    svc = load_yaml_docs(DEPLOY / "docker-compose.yml")[0]["services"]["judge"]
    port = free_port()

    def resolve(arg: str) -> str:
        arg = re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", str(arg))
        return {"0.0.0.0": "127.0.0.1", "8089": str(port)}.get(arg, arg.replace("/data/", f"{data_dir}/"))

    argv = [sys.executable, "-m", "driftlabel.judge.cli", *[resolve(a) for a in svc["command"]]]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert f"127.0.0.1:{port}/v1" in line, line
        test = [a.replace("127.0.0.1:8089", f"127.0.0.1:{port}") for a in svc["healthcheck"]["test"]]
        check = subprocess.run(_healthcheck_argv(test, port), capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=15)


def _prometheus_query(base: str, expr: str) -> dict[str, Any]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            answer: dict[str, Any] = json.loads(r.read())
    except urllib.error.HTTPError as exc:  # a query Prometheus refuses comes back as 400 with its reason
        answer = json.loads(exc.read())
    return answer


def _dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every dashboard target, Grafana's variables as Grafana fills them here."""
    board = json.loads((DEPLOY / "grafana" / "dashboards" / "driftlabel.json").read_text())
    out = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            # $instance is the "All" choice (its allValue), $__rate_interval four scrape intervals
            expr = target["expr"].replace("$__rate_interval", "4s").replace("$instance", ".*")
            assert "$" not in expr, expr
            out.append((panel["title"], expr))
    return out


def test_a_real_prometheus_scrapes_the_worker_and_answers_every_dashboard_query(
    live: LiveWorker, data_dir: Path, tmp_path: Path
) -> None:
    """deploy/prometheus.yml and alerts.yml loaded by a real Prometheus that scrapes the live worker.

    Skipped without the ``prometheus`` binary (Debian package ``prometheus``). Grafana is not on this
    machine, so its part is played by the HTTP API: every panel's query must run, the panels that show
    the worker's state must show it, and every alert rule must evaluate without error.
    """
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("no prometheus binary (Debian package prometheus): not started")
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    port = free_port()
    config["global"].update({"scrape_interval": "1s", "evaluation_interval": "1s"})
    config["rule_files"] = [str(DEPLOY / "alerts.yml")]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    jobs["driftlabel"]["static_configs"][0]["targets"] = [f"127.0.0.1:{live.port}"]
    jobs["prometheus"]["static_configs"][0]["targets"] = [f"127.0.0.1:{port}"]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    base = f"http://127.0.0.1:{port}"
    with (tmp_path / "prometheus.log").open("wb") as out:
        prom = subprocess.Popen(
            [binary, f"--config.file={tmp_path / 'prometheus.yml'}", f"--web.listen-address=127.0.0.1:{port}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:

        def value(expr: str) -> float | None:
            answer = _prometheus_query(base, expr)
            data: dict[str, Any] = answer.get("data") or {} if answer.get("status") == "success" else {}
            result = data.get("result") or []
            return float(result[0]["value"][1]) if result else None

        deadline = time.monotonic() + 60
        while True:  # ready: the config and the rules loaded
            try:
                with urllib.request.urlopen(f"{base}/-/ready", timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            assert prom.poll() is None, (tmp_path / "prometheus.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "Prometheus never became ready"
            time.sleep(0.3)
        while value('up{job="driftlabel"}') != 1.0:
            assert prom.poll() is None, (tmp_path / "prometheus.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "Prometheus never scraped the worker"
            time.sleep(0.5)
        # texts while Prometheus watches, so the rates have something to show
        names = TopicNames.from_settings(live.kafka)
        texts = [{"id": f"prom-{i}", "text": t} for i, (t, _) in enumerate(_clinc(data_dir)["test"][40:100])]
        time.sleep(2)
        asyncio.run(produce(live.kafka, names.texts, texts))
        deadline = time.monotonic() + 60
        while not (value('sum(rate(driftlabel_items_total{final="true"}[4s]))') or 0) > 0:
            assert time.monotonic() < deadline, "no final labels seen by Prometheus"
            time.sleep(0.5)
        refused = []
        for title, expr in _dashboard_exprs():
            answer = _prometheus_query(base, expr)
            if answer.get("status") != "success":
                refused.append(f"{title}: {expr}: {answer.get('error')}")
        assert not refused, "\n".join(refused)
        # the panels showing the worker's state show it
        assert value('max(driftlabel_classes{instance=~".*"})') == len(CLASSES)
        assert value('sum(up{job="driftlabel"})') == 1.0
        assert (value('max by (instance) (driftlabel_model_version{instance=~".*"})') or 0) >= 1
        with urllib.request.urlopen(f"{base}/api/v1/label/instance/values?match[]=driftlabel_classes") as r:
            assert json.loads(r.read())["data"] == [f"127.0.0.1:{live.port}"]  # the dashboard's $instance
        # every alert rule loaded and evaluates; the worker is not reported down
        deadline = time.monotonic() + 30
        while True:
            with urllib.request.urlopen(f"{base}/api/v1/rules", timeout=10) as r:
                groups = json.loads(r.read())["data"]["groups"]
            rules = [rule for g in groups for rule in g["rules"]]
            if rules and all(rule.get("lastEvaluation", "").startswith("20") for rule in rules):
                break
            assert time.monotonic() < deadline, "alert rules never evaluated"
            time.sleep(0.5)
        alerts = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
        assert len(rules) == sum(len(g["rules"]) for g in alerts["groups"])
        assert [r["name"] for r in rules if r["health"] != "ok"] == []
        assert next(r for r in rules if r["name"] == "DriftlabelWorkerDown")["state"] == "inactive"
    finally:
        prom.terminate()
        prom.wait(30)
