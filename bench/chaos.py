"""The chaos harness shared by ``tests/chaos`` and ``bench/bench_reliability.py``.

It treats the service as a black box, the way an operator would: a real Tansu broker on loopback, the
simulated expert (``SimulatedExpert``, an OpenAI-compatible HTTP server) in this process so faults can be
switched on and off, and ``driftlabel worker`` child processes that are started, killed with SIGKILL and
restarted. Everything is judged from the topics themselves, read raw (every record, no dedupe), by a
:class:`Follower` thread that keeps each record's arrival time, so delivery (lost / duplicated final
labels), accepted-without-verdict, duplicated training records, dead letters and recovery times are all
measured from what a consumer of the topics would really see.

Only public surfaces are used: the worker's CLI and environment settings, the topic names of
``TopicNames``, the metrics page, ``LocalBroker`` and ``SimulatedExpert``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from driftlabel.streams.broker import LocalBroker, free_port
from driftlabel.streams.settings import KafkaSettings
from driftlabel.streams.topics import TopicNames, ensure_topics

__all__ = [
    "Cluster",
    "Delivery",
    "Follower",
    "Rec",
    "ReplayCheck",
    "Worker",
    "accepted_without_verdict",
    "clinc_rows",
    "delivery",
    "duplicated_training",
    "recovery_gaps",
    "replay_check",
    "seed_training",
    "settled_version",
]

#: the worker's settings in every chaos run: static embedder (the embedder's speed is not under test),
#: a quick breaker and short retries so faults show within seconds, frequent checkpoints
BASE_STREAM_ENV = {
    "batch_within_s": "0.05",
    "checkpoint_every_s": "2",
    "judge_retry_s": "0.3",
    "judge_retry_max_s": "1.0",
}
BASE_JUDGE_ENV = {"max_retries": "0", "breaker_failures": "2", "breaker_reset_s": "0.5", "timeout_s": "2"}


def clinc_rows(data_file: Path, classes: int = 30, seed: int = 0) -> dict[str, list[tuple[str, str]]]:
    """CLINC150 rows of ``classes`` in-scope intents (the first ones, sorted): {split: [(text, label)]}."""
    raw = json.loads(Path(data_file).read_text(encoding="utf-8"))
    labels = sorted({lab for _, lab in raw["train"]})[:classes] if classes else None
    keep = set(labels) if labels else None
    return {
        split: [(t, lab) for t, lab in raw[split] if keep is None or lab in keep]
        for split in ("train", "val", "test")
    }


def seed_training(rows: Sequence[tuple[str, str]], per_class: int = 10) -> list[dict[str, Any]]:
    """The first ``per_class`` rows of each label as ``training`` seed records."""
    seen: Counter[str] = Counter()
    out: list[dict[str, Any]] = []
    for t, lab in rows:
        if seen[lab] < per_class:
            seen[lab] += 1
            out.append({"id": f"seed-{len(out)}", "text": t, "label": lab, "source": "seed", "valid": True})
    return out


@dataclass
class Rec:
    """One record as read raw from a topic, with when it arrived here (``time.monotonic()``)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    t: float
    _json: Any = field(default=None, repr=False)

    def json(self) -> Any:
        """The value parsed as JSON, or None when it is not JSON."""
        if self._json is None and self.value is not None:
            try:
                self._json = json.loads(self.value)
            except ValueError:
                self._json = False
        return self._json or None


class Follower:
    """Reads every partition of some topics from the beginning, in a thread, keeping every record."""

    def __init__(self, bootstrap: str, topics: Sequence[str]) -> None:
        self.bootstrap = bootstrap
        self.topics = list(topics)
        self.records: list[Rec] = []
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="chaos-follower")

    def start(self, timeout: float = 30.0) -> Follower:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"follower could not assign {self.topics} within {timeout}s: {self._error}")
        return self

    def _run(self) -> None:
        try:
            asyncio.run(self._consume())
        except BaseException as exc:  # surfaced by snapshot()
            self._error = exc
            self._ready.set()

    async def _consume(self) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=100,
            group_id=None,
        )
        await consumer.start()
        try:
            tps = []
            for topic in self.topics:
                parts = None
                for _ in range(100):
                    parts = consumer.partitions_for_topic(topic)
                    if parts:
                        break
                    await consumer._client.force_metadata_update()
                    await asyncio.sleep(0.1)
                if not parts:
                    raise RuntimeError(f"topic {topic} has no partitions; create the topics first")
                tps += [TopicPartition(topic, p) for p in sorted(parts)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            self._ready.set()
            while not self._stop.is_set():
                batch = await consumer.getmany(timeout_ms=200, max_records=5000)
                now = time.monotonic()
                new = [
                    Rec(m.topic, m.partition, m.offset, m.key, m.value, now)
                    for msgs in batch.values()
                    for m in msgs
                ]
                if new:
                    with self.lock:
                        self.records.extend(new)
        finally:
            await consumer.stop()

    def snapshot(self, topic: str | None = None) -> list[Rec]:
        if self._error is not None:
            raise RuntimeError(f"the topic follower failed: {self._error!r}") from self._error
        with self.lock:
            recs = list(self.records)
        return recs if topic is None else [r for r in recs if r.topic == topic]

    def wait(self, done: Callable[[Follower], bool], timeout: float, what: str = "condition") -> float:
        """Wait until ``done(self)``; returns the seconds waited; raises TimeoutError with ``what``."""
        t0 = time.monotonic()
        while not done(self):
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"{what} not reached within {timeout:.0f}s")
            time.sleep(0.2)
        return time.monotonic() - t0

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


@dataclass
class Worker:
    """One ``driftlabel worker`` child process; restartable, killable with SIGKILL."""

    name: str
    env: dict[str, str]
    log_path: Path
    metrics_port: int
    args: tuple[str, ...] = ()  # ``driftlabel`` options before the command, e.g. ("-v",)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    _log_offset: int = 0

    def spawn(self) -> None:
        """Start the process without waiting for it (see :meth:`wait_ready`)."""
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "driftlabel.streams.cli", *self.args, "worker"],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env},
            )
        self.starts += 1

    def wait_ready(self, timeout: float = 240.0) -> float:
        """Wait for the worker's ``: ready (`` line; returns the seconds waited."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if ": ready (" in self.log():
                return time.monotonic() - t0
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise RuntimeError(f"worker {self.name} exited with {code}:\n{self.log()[-3000:]}")
            time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"worker {self.name} not ready in {timeout:.0f}s:\n{self.log()[-3000:]}")

    def start(self, timeout: float = 240.0) -> float:
        self.spawn()
        return self.wait_ready(timeout)

    def log(self) -> str:
        if not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as f:
            f.seek(self._log_offset)
            return f.read().decode(errors="replace")

    def full_log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no final checkpoint, no goodbye to the group (a crash)."""
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (graceful), SIGKILL if it hangs."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def rss_mb(self) -> float | None:
        """Resident memory of the worker process (MiB), from /proc."""
        if not self.alive:
            return None
        assert self.proc is not None
        try:
            text = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return None
        m = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
        return int(m.group(1)) / 1024 if m else None

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def metric(self, name: str, labels: str = "") -> float:
        """Sum of the samples of ``name`` whose label set contains ``labels`` (e.g. 'source="human"')."""
        return metric_value(self.metrics(), name, labels)


def metric_value(page: str, name: str, labels: str = "") -> float:
    """Sum of the samples of ``name`` on a Prometheus text page whose label set contains ``labels``."""
    total = 0.0
    for m in re.finditer(rf"^{re.escape(name)}(\{{[^}}]*\}})? ([-+0-9.eEinfa]+)$", page, re.M):
        if labels in (m.group(1) or ""):
            total += float(m.group(2))
    return total


class Cluster:
    """Broker + simulated expert + workers on one topic prefix; faults switched from this process."""

    def __init__(
        self,
        work: Path,
        data_file: Path,
        *,
        prefix: str | None = None,
        partitions: int = 4,
        broker: LocalBroker | None = None,
        judge_kwargs: dict[str, Any] | None = None,
        stream_env: dict[str, str] | None = None,
        judge_env: dict[str, str] | None = None,
        embedder: str = "static",
        experts_env: dict[str, str] | None = None,
    ) -> None:
        self.work = Path(work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.data_file = Path(data_file)
        self.prefix = prefix or f"chaos{int(time.time() * 1000) % 10**9}."
        self.partitions = partitions
        self._own_broker = broker is None
        self.broker = broker or LocalBroker(log_path=self.work / "broker.log")
        self.judge_kwargs = dict(judge_kwargs or {})
        self.judge_port = free_port()
        self.judge: Any = None
        self.stream_env = {**BASE_STREAM_ENV, **(stream_env or {})}
        self.judge_env = {**BASE_JUDGE_ENV, **(judge_env or {})}
        self.experts_env = dict(experts_env or {})
        self.embedder = embedder
        self.workers: list[Worker] = []
        self.follower: Follower | None = None
        self.kafka: KafkaSettings | None = None

    # ---- lifecycle
    def start(self) -> Cluster:
        self.broker.start()
        self.kafka = KafkaSettings(
            bootstrap_servers=self.broker.bootstrap,
            topic_prefix=self.prefix,
            partitions=self.partitions,
            group_id=f"{self.prefix}g",
        )
        ensure_topics(self.kafka)
        self.judge_up()
        n = self.names
        self.follower = Follower(
            self.broker.bootstrap,
            [n.labels, n.training, n.dead_letter, n.judge_verdicts, n.review, n.control],
        ).start()
        return self

    def stop(self) -> None:
        for w in self.workers:
            w.stop()
        if self.follower is not None:
            self.follower.stop()
        self.judge_down()
        if self._own_broker:
            self.broker.stop()

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def names(self) -> TopicNames:
        assert self.kafka is not None, "start the cluster first"
        return TopicNames.from_settings(self.kafka)

    def hang_broker(self, seconds: float) -> None:
        """Freeze the broker process (SIGSTOP) for ``seconds``, then let it go on (SIGCONT): it keeps its
        sockets and data but answers nothing, as a broker stalled by a long pause, a full disk or a
        network partition would. Blocks for the whole hang."""
        pid = self.broker.pid
        if pid is None:
            raise RuntimeError("the broker is not running")
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            os.kill(pid, signal.SIGCONT)

    # ---- the judge endpoint
    def judge_up(self) -> None:
        """(Re)start the simulated expert on the cluster's fixed port."""
        from driftlabel.judge import SimulatedExpert

        if self.judge is None:
            self.judge = SimulatedExpert(str(self.data_file), port=self.judge_port, **self.judge_kwargs)
            for attempt in range(20):  # the port may linger for a moment after a stop
                try:
                    self.judge.start_in_thread()
                    break
                except Exception:
                    if attempt == 19:
                        raise
                    time.sleep(0.25)

    def judge_down(self) -> None:
        """Stop the simulated expert: connections are refused (the endpoint is down)."""
        if self.judge is not None:
            self.judge.stop()
            self.judge = None

    @property
    def judge_url(self) -> str:
        return f"http://127.0.0.1:{self.judge_port}/v1"

    def fault(self, kind: str | None) -> None:
        """Switch a judge fault on (``down``, ``500``, ``503``, ``429``, ``timeout``, ``garbage``) or off."""
        if kind == "down":
            self.judge_down()
            return
        self.judge_up()
        self.judge.fail_always(kind)

    # ---- workers
    def worker(self, name: str = "w0", *, args: tuple[str, ...] = (), **stream_env: str) -> Worker:
        """A worker (not started) on this cluster's topics and group, with its own checkpoint dir;
        ``args``: extra command-line arguments (``("-v",)`` logs model-thread jobs over 0.2 s)."""
        assert self.kafka is not None, "start the cluster first"
        port = free_port()
        env = {
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "DRIFTLABEL_KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap_servers,
            "DRIFTLABEL_KAFKA_TOPIC_PREFIX": self.prefix,
            "DRIFTLABEL_KAFKA_PARTITIONS": str(self.partitions),
            "DRIFTLABEL_KAFKA_GROUP_ID": self.kafka.group_id,
            "DRIFTLABEL_EMBEDDER_KIND": self.embedder,
            "DRIFTLABEL_JUDGE_BASE_URL": self.judge_url,
            "DRIFTLABEL_STREAM_CHECKPOINT_DIR": str(self.work / f"ckpt-{name}"),
            "DRIFTLABEL_METRICS_PORT": str(port),
            **{f"DRIFTLABEL_STREAM_{k.upper()}": v for k, v in {**self.stream_env, **stream_env}.items()},
            **{f"DRIFTLABEL_JUDGE_{k.upper()}": v for k, v in self.judge_env.items()},
            **{f"DRIFTLABEL_EXPERTS_{k.upper()}": v for k, v in self.experts_env.items()},
        }
        w = Worker(name=name, env=env, log_path=self.work / f"{name}.log", metrics_port=port, args=args)
        self.workers.append(w)
        return w

    # ---- producing
    def send(self, topic: str, values: Iterable[Any]) -> list[tuple[int, int]]:
        """Produce values (bytes raw, str/dict/list as JSON; key = the id when there is one).

        Returns each record's (partition, offset), in order, so dead letters can be matched exactly.
        """
        assert self.kafka is not None, "start the cluster first"
        return asyncio.run(_produce(self.kafka.bootstrap_servers, topic, list(values)))


def _encode(value: Any) -> tuple[bytes | None, bytes | None]:
    if isinstance(value, bytes):
        return None, value
    key = None
    if isinstance(value, dict) and isinstance(value.get("id"), str) and value["id"]:
        key = value["id"].encode()
    return key, json.dumps(value).encode()


async def _produce(bootstrap: str, topic: str, values: list[Any]) -> list[tuple[int, int]]:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_request_size=4 << 20)
    await producer.start()
    try:
        futures = []
        for v in values:
            key, raw = _encode(v)
            futures.append(await producer.send(topic, value=raw, key=key))
        metas = await asyncio.gather(*futures)
        return [(m.partition, m.offset) for m in metas]
    finally:
        await producer.stop()


# ---- analysis of what the topics hold


@dataclass(frozen=True)
class Delivery:
    """Final labels per input id, as a consumer of the raw ``labels`` topic sees them."""

    expected: int
    lost: list[str]
    duplicated: dict[str, int]
    finals: int

    @property
    def ok(self) -> bool:
        return not self.lost and not self.duplicated


def finals(recs: Iterable[Rec]) -> Counter[str]:
    """How many ``final: true`` records each id has."""
    c: Counter[str] = Counter()
    for r in recs:
        v = r.json()
        if isinstance(v, dict) and v.get("final") is True and isinstance(v.get("id"), str):
            c[v["id"]] += 1
    return c


def delivery(ids: Iterable[str], label_recs: Iterable[Rec]) -> Delivery:
    wanted = list(ids)
    c = finals(label_recs)
    return Delivery(
        expected=len(wanted),
        lost=[i for i in wanted if c[i] == 0],
        duplicated={i: c[i] for i in wanted if c[i] > 1},
        finals=sum(c[i] for i in wanted),
    )


def all_final(ids: Iterable[str], label: str) -> Callable[[Follower], bool]:
    wanted = set(ids)

    def done(f: Follower) -> bool:
        return wanted <= set(finals(f.snapshot(label)))

    return done


def accepted_without_verdict(label_recs: Iterable[Rec], verdict_recs: Iterable[Rec]) -> list[str]:
    """Ids whose final label is ``validated``/``corrected`` with no ``valid: true`` verdict for that label."""
    yes = set()
    for r in verdict_recs:
        v = r.json()
        if isinstance(v, dict) and v.get("valid") is True:
            yes.add((v.get("id"), v.get("label")))
    bad = []
    for r in label_recs:
        v = r.json()
        accepted = isinstance(v, dict) and v.get("final") and v.get("status") in ("validated", "corrected")
        if accepted and (v.get("id"), v.get("label")) not in yes:
            bad.append(str(v.get("id")))
    return bad


def duplicated_training(training_recs: Iterable[Rec], source: str = "judge") -> dict[str, int]:
    """``training`` records of ``source`` that appear more than once (same id, text, label, valid)."""
    c: Counter[str] = Counter()
    for r in training_recs:
        v = r.json()
        if isinstance(v, dict) and v.get("source") == source:
            c[json.dumps([v.get("id"), v.get("text"), v.get("label"), v.get("valid")])] += 1
    return {k: n for k, n in c.items() if n > 1}


def recovery_gaps(label_recs: Sequence[Rec], moments: Sequence[float]) -> list[float]:
    """For each moment (a kill), seconds until the next final label arrived (the labelling outage)."""
    times = sorted(r.t for r in label_recs if (v := r.json()) and isinstance(v, dict) and v.get("final"))
    out = []
    for m in moments:
        nxt = next((t for t in times if t > m), None)
        out.append(float("nan") if nxt is None else nxt - m)
    return out


def first_labels(label_recs: Iterable[Rec], ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The first ``labels`` record of each id (the model's own prediction, before any judge)."""
    wanted = set(ids)
    out: dict[str, dict[str, Any]] = {}
    for r in label_recs:
        v = r.json()
        if isinstance(v, dict) and v.get("id") in wanted and v["id"] not in out:
            out[v["id"]] = v
    return out


def paced_send(
    cluster: Cluster,
    values: Sequence[dict[str, Any]],
    rate: float,
    on_tick: Callable[[float], None] | None = None,
    chunk_s: float = 0.5,
    sent_at: dict[str, float] | None = None,
) -> None:
    """Send ``values`` to ``texts`` at about ``rate`` per second; ``on_tick(elapsed)`` between chunks.

    ``sent_at`` (if given) gets each id's send time (``time.monotonic()``, acknowledged by the broker).
    """
    per = max(1, round(rate * chunk_s))
    t0 = time.monotonic()
    for k in range(0, len(values), per):
        ts = time.monotonic()
        cluster.send(cluster.names.texts, values[k : k + per])
        if sent_at is not None:
            for v in values[k : k + per]:
                sent_at[str(v["id"])] = ts
        if on_tick is not None:
            on_tick(time.monotonic() - t0)
        target = t0 + (k + per) / rate
        delay = target - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def random_kill_times(
    duration_s: float, every_s: float, rng: random.Random, margin_s: float = 3.0
) -> list[float]:
    """Kill moments spread over a run: one per ``every_s`` window, at a random point inside it."""
    out = []
    t = 0.0
    while t + every_s <= duration_s + 1e-9:
        out.append(t + rng.uniform(margin_s, max(margin_s, every_s - margin_s)))
        t += every_s
    return [x for x in out if x < duration_s]


# ---- scenarios shared by the tests and the benchmark


@dataclass
class KillRun:
    """What a kill -9 run left in the topics, and how long the service took to recover."""

    ids: list[str]
    kills: int
    delivery: Delivery
    duplicated_training: dict[str, int]
    accepted_without_verdict: list[str]
    recovery_s: list[float]  # per kill: seconds from the kill to the next final label
    ready_s: list[float]  # per restart: seconds from spawn to ready
    stream_s: float  # first send -> last send
    drain_s: float  # last send -> every id final
    rss_mb: list[tuple[float, float]] = field(default_factory=list)
    kill_moments: list[float] = field(default_factory=list)  # time.monotonic() of each kill
    #: per kill: the worst publish -> first label latency of the texts sent in the 20 s after it (how long
    #: texts on the dead worker's partitions waited for a restart or a takeover)
    worst_latency_after_kill_s: list[float] = field(default_factory=list)
    #: with ``supervise``: (worker, exit status) of each worker that stopped by itself and was restarted
    exits: list[tuple[str, int]] = field(default_factory=list)
    #: with ``graceful``: each stop's (exit status, whether the worker was ready then); a ready worker must
    #: exit 0 (in order, not SIGKILLed after 30 s); one still starting dies by the signal (-15), having
    #: written nothing yet
    stop_codes: list[tuple[int | None, bool]] = field(default_factory=list)


def kill_run(
    cluster: Cluster,
    workers: Sequence[Worker],
    values: Sequence[dict[str, Any]],
    rate: float,
    kill_at: Sequence[float],
    *,
    restart: bool = True,
    graceful: bool = False,
    victim: Callable[[int], Worker] | None = None,
    events: Sequence[tuple[float, Callable[[], None]]] = (),
    settle_s: float = 3.0,
    timeout_s: float = 300.0,
    supervise: bool = False,
    progress: Callable[[str], None] | None = None,
) -> KillRun:
    """Stream ``values`` at ``rate``/s; at each ``kill_at`` second SIGKILL a worker (and restart it).

    ``graceful``: SIGTERM instead, waiting for the worker's orderly stop (final checkpoint, offsets
    committed, the group left), as a rolling deploy or a scale-in stops it. ``events``: (second, action)
    pairs run at their second besides the kills (a worker joining or leaving the group, say).

    ``supervise``: restart a worker that exits by itself (a fail-stop, status 70), as an orchestrator
    restarts a container; the exits are recorded. ``victim(k)`` picks the worker of the k-th kill
    (default: the first worker). Afterwards waits until
    every id has a final label (or ``timeout_s``), lets ``settle_s`` pass for late duplicates, and reads
    the raw topics.
    """
    assert cluster.follower is not None
    names = cluster.names
    pending = sorted(kill_at)
    actions = sorted(events, key=lambda e: e[0])
    kills: list[float] = []
    ready: list[float] = []
    threads: list[threading.Thread] = []
    pick = victim or (lambda k: workers[0])
    rss: list[tuple[float, float]] = []
    exits: list[tuple[str, int]] = []
    stop_codes: list[tuple[int | None, bool]] = []
    spawning = threading.Lock()  # a kill's restart and the supervisor's never both spawn a worker
    watching = threading.Event()
    t0 = time.monotonic()

    def restart_in_background(w: Worker) -> None:
        def run() -> None:
            with contextlib.suppress(RuntimeError):  # killed again while starting: the next restart covers it
                ready.append(w.wait_ready())

        th = threading.Thread(target=run, daemon=True)
        th.start()
        threads.append(th)

    def supervisor() -> None:
        while not watching.wait(0.5):
            with spawning:
                if watching.is_set():
                    return
                for w in workers:
                    if w.proc is not None and w.proc.poll() is not None:
                        exits.append((w.name, w.proc.returncode))
                        if progress:
                            progress(f"{w.name} exited with {w.proc.returncode}: restarted")
                        w.spawn()
                        restart_in_background(w)

    if supervise:
        threading.Thread(target=supervisor, daemon=True).start()

    def on_tick(elapsed: float) -> None:
        while actions and elapsed >= actions[0][0]:
            actions.pop(0)[1]()
        for w in workers:
            m = w.rss_mb()
            if m is not None:
                rss.append((time.monotonic() - t0, m))
        while pending and elapsed >= pending[0]:
            pending.pop(0)
            w = pick(len(kills))
            with spawning:
                if graceful:
                    was_ready = ": ready (" in w.log()
                    stop_codes.append((w.stop(), was_ready))
                else:
                    w.kill()
                kills.append(time.monotonic())
                if progress:
                    how = "SIGTERM" if graceful else "kill -9"
                    progress(f"{how} {w.name} at {elapsed:.0f}s (stop {len(kills)})")
                if restart:
                    w.spawn()
                    restart_in_background(w)

    sent_at: dict[str, float] = {}
    try:  # the supervisor stops with the run, also when it fails (it would restart stopped workers)
        paced_send(cluster, values, rate, on_tick, sent_at=sent_at)
        t_sent = time.monotonic()
        ids = [str(v["id"]) for v in values]
        with contextlib.suppress(TimeoutError):  # what is missing then is measured below as lost
            cluster.follower.wait(all_final(ids, names.labels), timeout_s, "a final label for every id")
        drain = time.monotonic() - t_sent
        time.sleep(settle_s)
    finally:
        watching.set()
    for th in threads:
        th.join(1)
    labels = cluster.follower.snapshot(names.labels)
    first_at: dict[str, float] = {}
    for r in labels:
        v = r.json()
        if isinstance(v, dict) and isinstance(v.get("id"), str):
            first_at.setdefault(v["id"], r.t)
    worst = []
    for m in kills:
        lat = [first_at.get(i, math.inf) - ts for i, ts in sent_at.items() if m <= ts < m + 20.0]
        worst.append(max(lat) if lat else math.nan)
    return KillRun(
        ids=ids,
        kills=len(kills),
        delivery=delivery(ids, labels),
        duplicated_training=duplicated_training(cluster.follower.snapshot(names.training)),
        accepted_without_verdict=accepted_without_verdict(
            labels, cluster.follower.snapshot(names.judge_verdicts)
        ),
        recovery_s=recovery_gaps(labels, kills),
        ready_s=ready,
        stream_s=t_sent - t0,
        drain_s=drain,
        rss_mb=rss,
        kill_moments=kills,
        worst_latency_after_kill_s=worst,
        exits=exits,
        stop_codes=stop_codes,
    )


def text_values(
    rows: Sequence[tuple[str, str]], n: int, prefix: str
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """``n`` texts (cycling through ``rows``) with unique ids, and the true label of each id."""
    values, truth = [], {}
    for i in range(n):
        t, lab = rows[i % len(rows)]
        vid = f"{prefix}-{i}"
        values.append({"id": vid, "text": t})
        truth[vid] = lab
    return values, truth


def newest_model(checkpoint_dir: Path) -> Path | None:
    """The newest complete model folder under a worker's checkpoint dir (``*/model``), or None."""
    models = [
        p for p in Path(checkpoint_dir).glob("*/model") if p.is_dir() and not p.parent.name.startswith(".")
    ]
    return max(models, key=lambda p: p.parent.stat().st_mtime, default=None)


@dataclass
class ReplayCheck:
    """The killed worker's final model against a from-scratch replay of the same log by a fresh worker."""

    live_version: float  # the killed worker's settled ``driftlabel_model_version``
    replay_version: float  # the replaying worker's
    live_examples: int
    replay_examples: int
    same_labels: bool  # same label list, same order
    probes: int
    differ: int  # probe texts whose predicted label differs between the two models
    live_accuracy: float  # on the probes' true labels
    replay_accuracy: float
    replay_s: float  # the fresh worker's start -> settled version

    @property
    def equal(self) -> bool:
        return (
            self.live_version == self.replay_version
            and self.live_examples == self.replay_examples
            and self.same_labels
            and self.differ == 0
        )


def settled_version(w: Any, quiet_s: float = 4.0, timeout_s: float = 60.0) -> float:
    """The worker's ``driftlabel_model_version`` once it has not changed for ``quiet_s`` seconds (``w``:
    anything whose ``metrics()`` returns its metrics page, a :class:`Worker` or a test's process)."""
    deadline = time.monotonic() + timeout_s
    last, since = metric_value(w.metrics(), "driftlabel_model_version"), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        v = metric_value(w.metrics(), "driftlabel_model_version")
        if v != last:
            last, since = v, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return v
    return last


@contextlib.contextmanager
def one_worker_with_stops(
    work: Path,
    clinc_file: Path,
    broker: LocalBroker,
    *,
    n_texts: int,
    rate: float,
    stops: int,
    seed: int,
    id_prefix: str,
    graceful: bool = False,
) -> Iterator[tuple[Cluster, Worker, KillRun, dict[str, list[tuple[str, str]]]]]:
    """The quick chaos case: one worker (30 CLINC150 classes, 10 seeds each, 30 % judged) streams
    ``n_texts`` at ``rate``/s and is stopped ``stops`` times at seeded random moments in the middle 60 %
    of the stream (SIGKILL, or SIGTERM when ``graceful``), restarted each time; yields the cluster, the
    worker, the run and the rows, and stops the cluster afterwards."""
    rows = clinc_rows(clinc_file, classes=30)
    cluster = Cluster(work, clinc_file, broker=broker, stream_env={"judge_target_share": "0.3"})
    cluster.start()
    try:
        cluster.send(cluster.names.training, seed_training(rows["train"]))
        worker = cluster.worker("w0")
        worker.start()
        values, _ = text_values(rows["train"][300:] + rows["test"], n_texts, id_prefix)
        duration = n_texts / rate
        rng = random.Random(seed)
        at = sorted(rng.uniform(0.2 * duration, 0.8 * duration) for _ in range(stops))
        run = kill_run(cluster, [worker], values, rate, at, graceful=graceful, timeout_s=240)
        yield cluster, worker, run, rows
    finally:
        cluster.stop()


def replay_check(
    cluster: Cluster,
    worker: Worker,
    probes: Sequence[tuple[str, str]],
    *,
    settle_timeout_s: float = 60.0,
    replay_timeout_s: float = 300.0,
) -> ReplayCheck:
    """Stop ``worker`` (it writes a final checkpoint), replay the whole log in a fresh worker, compare.

    The fresh worker (``ref``, its own consumer group and checkpoint folder) starts from nothing and reads
    every ``training`` and ``control`` record, and every old text. The judge is down meanwhile, so its
    re-reading of old texts cannot add judged pairs of its own: both models must then come from the same
    log alone, with the same version, the same examples and the same predictions on ``probes``.
    """
    from driftlabel.models import EmbedderSettings, RedClassifier, load_embedder

    cluster.fault("down")
    try:
        live = settled_version(worker, timeout_s=settle_timeout_s)
        code = worker.stop()
        if code != 0:  # SIGKILLed after hanging, or a failed shutdown: its last checkpoint may be stale
            raise RuntimeError(f"worker {worker.name} stopped with {code}, not 0; see {worker.log_path}")
        ref = cluster.worker("ref")
        ref.env["DRIFTLABEL_KAFKA_GROUP_ID"] = f"{cluster.prefix}ref"
        t0 = time.monotonic()
        ref.start()
        replayed = settled_version(ref, timeout_s=replay_timeout_s)
        replay_s = time.monotonic() - t0
        ref.stop()
    finally:
        cluster.fault(None)
    a = newest_model(cluster.work / f"ckpt-{worker.name}")
    b = newest_model(cluster.work / "ckpt-ref")
    if a is None or b is None:
        raise RuntimeError(f"a worker left no checkpoint ({worker.name}: {a}, ref: {b})")
    emb = load_embedder(EmbedderSettings(kind=cluster.embedder))
    ma, mb = RedClassifier.load(a, embedder=emb), RedClassifier.load(b, embedder=emb)
    texts = [t for t, _ in probes]
    truth = [lab for _, lab in probes]
    pa, pb = ma.predict(texts), mb.predict(texts)

    def acc(pred: Sequence[str]) -> float:
        return sum(p == t for p, t in zip(pred, truth, strict=True)) / max(len(truth), 1)

    return ReplayCheck(
        live_version=live,
        replay_version=replayed,
        live_examples=ma.n_examples,
        replay_examples=mb.n_examples,
        same_labels=ma.labels == mb.labels,
        probes=len(texts),
        differ=sum(x != y for x, y in zip(pa, pb, strict=True)),
        live_accuracy=acc(pa),
        replay_accuracy=acc(pb),
        replay_s=replay_s,
    )


@dataclass
class FuzzRun:
    """What happened to fuzzed bad records mixed into valid traffic on each input topic."""

    sent_bad: dict[str, int]  # topic key -> bad records sent
    dead_once: dict[str, int]  # ... dead-lettered exactly once with the expected reason
    missing: dict[str, list[tuple[int, int, str]]]  # ... never dead-lettered: (partition, offset, reason)
    repeated: dict[str, int]  # ... dead-lettered more than once
    wrong_reason: dict[str, list[tuple[str, str]]]  # ... (expected, got)
    valid_texts: int
    valid_texts_final: int
    human_learned: float  # delta of driftlabel_training_examples_total{source="human"}
    human_sent: int
    classes_added: float  # delta of driftlabel_classes
    classes_sent: int
    #: driftlabel_verdict_log_total{judge_model=AUDIT_MODEL}: the valid verdicts sent, as the audit counted
    verdicts_audited: float
    verdicts_sent: int
    worker_alive: bool
    seconds: float


#: the judge_model of the valid verdicts fuzz_run sends: the audit's count of it is theirs alone
AUDIT_MODEL = "fuzz-audit-model"


def fuzz_run(
    cluster: Cluster,
    worker: Worker,
    rows: Sequence[tuple[str, str]],
    n_bad: int,
    *,
    n_texts: int = 200,
    seed: int = 0,
    timeout_s: float = 240.0,
    progress: Callable[[str], None] | None = None,
) -> FuzzRun:
    """Send ``n_bad`` fuzzed bad records per input topic, shuffled into valid traffic, and check each."""
    from driftlabel.bench.fuzz import draw_bad

    assert cluster.follower is not None
    n = cluster.names
    topics = {
        "texts": n.texts,
        "training": n.training,
        "control": n.control,
        "judge_verdicts": n.judge_verdicts,
    }
    rng = random.Random(seed)
    texts, _ = text_values(rows, n_texts, f"fz{seed}")
    labels = sorted({lab for _, lab in rows})
    human = [
        {"id": f"h{seed}-{i}", "text": t, "label": lab, "source": "human", "valid": True}
        for i, (t, lab) in enumerate(rows[-30:])
    ]
    new_classes = [
        {
            "op": "add_class",
            "label": f"fuzz_class_{seed}_{i}",
            "description": f"fuzz class {i}",
            "examples": [f"fuzz example {i} number {j} for {labels[i % len(labels)]}" for j in range(3)],
        }
        for i in range(3)
    ]
    verdicts = [
        {
            "id": f"fzv{seed}-{i}",
            "label": labels[i % len(labels)],
            "valid": i % 3 != 0,
            "depth": 1 + i % 3,
            "judge_model": AUDIT_MODEL,
            "latency_ms": 10.0 * i,
            "tokens": 40 + i,
        }
        for i in range(30)
    ]
    valid = {"texts": texts, "training": human, "control": new_classes, "judge_verdicts": verdicts}
    plan: dict[str, list[tuple[Any, str | None]]] = {}
    for key in topics:
        bad = draw_bad(key, n_bad, seed=seed)
        if progress:
            progress(f"fuzz: drew {len(bad)} bad {key} records")
        items: list[tuple[Any, str | None]] = [(raw, reason) for raw, reason in bad]
        items += [(v, None) for v in valid[key]]
        rng.shuffle(items)
        plan[key] = items
    h0 = worker.metric("driftlabel_training_examples_total", 'source="human"')
    c0 = worker.metric("driftlabel_classes")
    t0 = time.monotonic()
    expect: dict[tuple[str, int, int], tuple[str, str]] = {}  # (topic, p, o) -> (key, reason)
    chunk = 200
    longest = max(len(v) for v in plan.values())
    for k in range(0, longest, chunk):
        for key, items in plan.items():
            part = items[k : k + chunk]
            if not part:
                continue
            metas = cluster.send(topics[key], [v for v, _ in part])
            for (_, reason), (p, o) in zip(part, metas, strict=True):
                if reason is not None:
                    expect[(topics[key], p, o)] = (key, reason)
    ids = [v["id"] for v in texts]
    watched = set(topics.values())
    n_watched = sum(1 for t, _, _ in expect if t in watched)
    audited = f'judge_model="{AUDIT_MODEL}"'

    def done(f: Follower) -> bool:
        dead = sum(1 for r in f.snapshot(n.dead_letter) if (v := r.json()) and v.get("topic") in watched)
        if dead < n_watched or not set(ids) <= set(finals(f.snapshot(n.labels))):
            return False
        with contextlib.suppress(OSError):
            return worker.metric("driftlabel_verdict_log_total", audited) >= len(verdicts)
        return False

    with contextlib.suppress(TimeoutError):
        cluster.follower.wait(done, timeout_s, "every bad record dead-lettered and every text labelled")
    time.sleep(3.0)  # late repeats
    seen: Counter[tuple[str, int, int]] = Counter()
    got_reason: dict[tuple[str, int, int], str] = {}
    for r in cluster.follower.snapshot(n.dead_letter):
        v = r.json()
        if isinstance(v, dict):
            pos = (str(v.get("topic")), int(v.get("partition", -1)), int(v.get("offset", -1)))
            seen[pos] += 1
            got_reason.setdefault(pos, str(v.get("reason")))
    res = FuzzRun(
        sent_bad={k: 0 for k in topics},
        dead_once={k: 0 for k in topics},
        missing={k: [] for k in topics},
        repeated={k: 0 for k in topics},
        wrong_reason={k: [] for k in topics},
        valid_texts=len(ids),
        valid_texts_final=sum(1 for i in ids if finals(cluster.follower.snapshot(n.labels))[i] >= 1),
        human_learned=worker.metric("driftlabel_training_examples_total", 'source="human"') - h0
        if worker.alive
        else float("nan"),
        human_sent=len(human),
        classes_added=worker.metric("driftlabel_classes") - c0 if worker.alive else float("nan"),
        classes_sent=len(new_classes),
        verdicts_audited=worker.metric("driftlabel_verdict_log_total", audited) if worker.alive else math.nan,
        verdicts_sent=len(verdicts),
        worker_alive=worker.alive,
        seconds=time.monotonic() - t0,
    )
    for pos, (key, reason) in expect.items():
        res.sent_bad[key] += 1
        if seen[pos] == 0:
            res.missing[key].append((pos[1], pos[2], reason))
        elif got_reason[pos] != reason:
            res.wrong_reason[key].append((reason, got_reason[pos]))
        elif seen[pos] == 1:
            res.dead_once[key] += 1
        if seen[pos] > 1:
            res.repeated[key] += 1
    return res
