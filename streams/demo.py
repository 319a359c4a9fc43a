"""``driftlabel demo``: the whole service on one machine, on CLINC150, with live progress.

It starts the local broker, the simulated expert judge (answers from the CLINC150 file itself) and a
worker process; seeds the model with ``--seed-per-class`` examples per class through the ``training``
topic (the same path a real deployment uses); streams the rest of the in-scope texts to ``texts``; and
follows ``labels`` and ``judge-verdicts`` to show items, accuracy so far, judge calls and the uncertain
share, then prints a summary. Everything it starts is stopped at the end, also on Ctrl-C.

Data: ``--data`` (default: the shared data folder, ``$DRIFTLABEL_DATA_DIR`` or ``../shared/data``). Where
CLINC150 is not there, it is downloaded once from ``--data-url`` into ``--cache-dir``; with no network
the error names the file needed and where to put it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from driftlabel.streams.errors import DataUnavailableError, ServiceError

__all__ = ["CLINC150_URL", "DemoStats", "load_clinc150_file", "register", "resolve_clinc150", "split_demo"]

CLINC150_URL = "https://raw.githubusercontent.com/clinc/oos-eval/master/data/data_full.json"
CLINC150_FILE = Path("clinc150") / "data_full.json"
REFERENCE = "10-shot MiniLM + logistic regression, no judge: 91.2 % (PRODUCT.md)"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "driftlabel"


def resolve_clinc150(data_dir: Path | None, url: str, cache_dir: Path, timeout: float = 60.0) -> Path:
    """The CLINC150 ``data_full.json``: from ``data_dir``, else the cache, else downloaded into the cache."""
    candidates = []
    if data_dir is not None:
        candidates += [data_dir / CLINC150_FILE, data_dir / "data_full.json"]
    else:
        with contextlib.suppress(Exception):
            from driftlabel.models.datasets import default_data_dir

            candidates.append(default_data_dir() / CLINC150_FILE)
    cached = cache_dir / CLINC150_FILE
    candidates.append(cached)
    for c in candidates:
        if c.is_file():
            return c
    print(f"demo: CLINC150 not found in {candidates[0].parent}; downloading {url} ...", flush=True)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, tmp.open("wb") as out:
            while chunk := resp.read(1 << 16):
                out.write(chunk)
        load_clinc150_file(tmp)  # refuse an HTML error page or a truncated file
        tmp.replace(cached)
    except (urllib.error.URLError, OSError, ValueError, TimeoutError) as exc:
        tmp.unlink(missing_ok=True)
        raise DataUnavailableError(
            f"CLINC150 is not on disk and could not be downloaded ({exc}). Put the file data_full.json "
            f"(from {url}) at {cached} or at {candidates[0]}, or pass --data DIR with clinc150/data_full.json"
        ) from exc
    print(f"demo: saved {cached}", flush=True)
    return cached


def load_clinc150_file(path: Path) -> dict[str, list[tuple[str, str]]]:
    """The in-scope splits of a CLINC150 ``data_full.json``: {"train"|"val"|"test": [(text, label)]}."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        out = {k: [(str(t), str(lab)) for t, lab in data[k]] for k in ("train", "val", "test")}
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path} is not a CLINC150 data_full.json ({exc!r})") from exc
    if not out["train"]:
        raise ValueError(f"{path}: empty train split")
    return out


def split_demo(
    data: dict[str, list[tuple[str, str]]], per_class: int, limit: int, seed: int = 0, classes: int = 0
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(seed examples: ``per_class`` of each label from train; the stream: the rest, shuffled, ``limit``).

    ``classes`` > 0 keeps only that many labels (the first in sorted order), for a quicker run.
    """
    if classes > 0:
        keep = set(sorted({lab for _, lab in data["train"]})[:classes])
        data = {k: [(t, lab) for t, lab in rows if lab in keep] for k, rows in data.items()}
    seeds: list[tuple[str, str]] = []
    rest: list[tuple[str, str]] = []
    taken: dict[str, int] = {}
    for text, label in data["train"]:
        if taken.get(label, 0) < per_class:
            seeds.append((text, label))
            taken[label] = taken.get(label, 0) + 1
        else:
            rest.append((text, label))
    rest += data["val"] + data["test"]
    random.Random(seed).shuffle(rest)
    return seeds, rest[:limit] if limit > 0 else rest


@dataclass
class DemoStats:
    """What the progress line and the summary show, built from the labels and verdicts topics."""

    truth: dict[str, str]
    first: dict[str, dict[str, Any]] = field(default_factory=dict)
    final: dict[str, dict[str, Any]] = field(default_factory=dict)
    verdicts: int = 0
    #: the judge endpoint's own request count, where the demo runs the endpoint (with ``choose`` one call
    #: answers several verdicts, and a batch several texts' verdicts): what "judge calls" shows
    requests: Callable[[], int] | None = None
    recent: deque[bool] = field(default_factory=lambda: deque(maxlen=500))
    statuses: dict[str, int] = field(default_factory=dict)
    correct: int = 0

    def on_label(self, v: dict[str, Any]) -> None:
        item = v.get("id")
        if item not in self.truth:
            return
        self.first.setdefault(item, v)
        if v.get("final") and item not in self.final:
            self.final[item] = v
            ok = v.get("label") == self.truth[item]
            self.correct += ok
            self.recent.append(ok)
            self.statuses[v["status"]] = self.statuses.get(v["status"], 0) + 1

    @property
    def calls(self) -> int:
        """Judge calls: the endpoint's request count when known, else one per verdict."""
        return self.requests() if self.requests is not None else self.verdicts

    @property
    def routed(self) -> int:
        return sum(1 for v in self.first.values() if not v.get("final"))

    def line(self, elapsed: float) -> str:
        n = len(self.final)
        acc = self.correct / n if n else 0.0
        rec = sum(self.recent) / len(self.recent) if self.recent else 0.0
        share = self.routed / len(self.first) if self.first else 0.0
        return (
            f"[{elapsed:6.1f}s] items {n:>6}/{len(self.truth)}  accuracy {acc:6.1%} "
            f"(last {len(self.recent)}: {rec:6.1%})  judge calls {self.calls:>5}  "
            f"uncertain share {share:5.1%}  "
            f"{n / elapsed if elapsed > 0 else 0:6.1f} items/s"
        )


def _wait_for_line(log_path: Path, proc: subprocess.Popen[bytes], needle: str, timeout: float) -> None:
    """Wait for ``needle`` in the worker's log, echoing its progress lines and a heartbeat meanwhile."""
    t0 = time.monotonic()
    shown = 0
    beat = t0
    while time.monotonic() - t0 < timeout:
        text = log_path.read_text(errors="replace") if log_path.exists() else ""
        lines = [ln for ln in text.splitlines() if ln.startswith("driftlabel worker")]
        for ln in lines[shown:]:
            print(f"demo: [{time.monotonic() - t0:5.0f}s] {ln}", flush=True)
        shown = len(lines)
        if needle in text:
            return
        if proc.poll() is not None:
            raise ServiceError(f"the worker exited with code {proc.returncode}:\n{text[-3000:]}")
        if time.monotonic() - beat >= 15:
            print(f"demo: [{time.monotonic() - t0:5.0f}s] still starting...", flush=True)
            beat = time.monotonic()
        time.sleep(0.3)
    tail = log_path.read_text(errors="replace")[-3000:] if log_path.exists() else ""
    raise ServiceError(f"the worker was not ready within {timeout:.0f}s; its log ({log_path}) ends:\n{tail}")


def start_worker(
    env_over: dict[str, str], log_path: Path, extra: list[str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``driftlabel worker`` as a child process with the given environment overrides."""
    env = {**os.environ, **env_over}
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    cmd = [sys.executable, "-m", "driftlabel.streams.cli", "worker", *(extra or [])]
    out = log_path.open("ab")
    try:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    finally:
        out.close()


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 30.0) -> None:
    """SIGTERM (the worker writes its last checkpoint), then SIGKILL after ``timeout``."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


async def _follow(kafka: Any, names: Any, stats: DemoStats, t0: float, timeout: float, every: float) -> bool:
    from driftlabel.streams.client import TopicReader

    last = 0.0
    async with TopicReader(kafka, [names.labels, names.judge_verdicts]) as reader:
        while time.monotonic() - t0 < timeout:
            for rec in await reader.poll(200):
                try:
                    v = json.loads(rec.value)
                except ValueError:
                    continue
                if rec.topic == names.judge_verdicts:
                    stats.verdicts += 1
                else:
                    stats.on_label(v)
            now = time.monotonic()
            if now - last >= every:
                print(stats.line(now - t0), flush=True)
                last = now
            if len(stats.final) >= len(stats.truth):
                print(stats.line(time.monotonic() - t0), flush=True)
                return True
    return False


def cmd_demo(args: argparse.Namespace) -> int:
    from driftlabel.judge import SimulatedExpert
    from driftlabel.streams.broker import LocalBroker, free_port
    from driftlabel.streams.client import produce
    from driftlabel.streams.settings import KafkaSettings
    from driftlabel.streams.topics import TopicNames, ensure_topics

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop what we started on SIGTERM too
    path = resolve_clinc150(args.data, args.data_url, args.cache_dir)
    data = load_clinc150_file(path)
    seeds, stream = split_demo(data, args.seed_per_class, args.limit, args.seed, args.classes)
    n_classes = len({lab for _, lab in seeds})
    print(
        f"demo: CLINC150 from {path}: {n_classes} classes, {len(seeds)} seed examples, "
        f"{len(stream)} texts to stream"
    )
    workdir = Path(tempfile.mkdtemp(prefix="driftlabel-demo-"))
    broker = judge = worker = None
    try:
        if args.bootstrap:
            bootstrap = args.bootstrap
        else:
            broker = LocalBroker(log_path=workdir / "broker.log").start()
            bootstrap = broker.bootstrap
            print(f"demo: broker (Tansu, in memory) on {bootstrap}", flush=True)
        prefix = f"demo{int(time.time())}." if args.bootstrap else "driftlabel."
        kafka = KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=prefix, partitions=args.partitions)
        names = TopicNames.from_settings(kafka)
        ensure_topics(kafka)
        judge = SimulatedExpert(
            str(path), latency_ms=args.judge_latency_ms, error_rate=args.judge_error_rate, seed=args.seed
        )
        judge.start_in_thread()
        print(f"demo: simulated expert judge on {judge.base_url} (error rate {args.judge_error_rate:.0%})")
        asyncio.run(
            produce(
                kafka,
                names.training,
                [{"id": f"seed-{i}", "text": t, "label": lab, "source": "seed", "valid": True}
                 for i, (t, lab) in enumerate(seeds)],
            )
        )  # fmt: skip
        metrics_port = free_port()
        env = {
            "DRIFTLABEL_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "DRIFTLABEL_KAFKA_TOPIC_PREFIX": prefix,
            "DRIFTLABEL_KAFKA_PARTITIONS": str(args.partitions),
            "DRIFTLABEL_KAFKA_GROUP_ID": f"{prefix}workers",
            "DRIFTLABEL_JUDGE_BASE_URL": judge.base_url,
            "DRIFTLABEL_STREAM_CHECKPOINT_DIR": str(workdir / "checkpoints"),
            "DRIFTLABEL_STREAM_JUDGE_TARGET_SHARE": str(args.judge_share),
            "DRIFTLABEL_METRICS_PORT": str(metrics_port),
        }
        if args.embedder:
            from driftlabel.streams.commands import EMBEDDER_KINDS

            env["DRIFTLABEL_EMBEDDER_KIND"] = EMBEDDER_KINDS[args.embedder]
        if not args.oos and "DRIFTLABEL_EXPERTS_OOS_THRESHOLD" not in os.environ:
            # the demo streams in-scope texts only: out-of-scope calls could only be wrong here
            env["DRIFTLABEL_EXPERTS_OOS_THRESHOLD"] = "-1e9"
        print(
            f"demo: out-of-scope detection {'on' if args.oos else 'off (the stream is in-scope only; --oos)'}"
        )
        log_path = workdir / "worker.log"
        embedder = args.embedder or os.environ.get("DRIFTLABEL_EMBEDDER_KIND", "onnx")
        print(
            f"demo: starting a worker (log {log_path}); loading the embedder ({embedder}) "
            "and fitting the experts...",
            flush=True,
        )
        t_start = time.monotonic()
        worker = start_worker(env, log_path)
        _wait_for_line(log_path, worker, ": ready (", args.startup_timeout)
        print(f"demo: worker ready after {time.monotonic() - t_start:.1f}s; metrics on "
              f"http://127.0.0.1:{metrics_port}/metrics", flush=True)  # fmt: skip
        truth = {f"t{i}": lab for i, (_, lab) in enumerate(stream)}
        sim = judge
        stats = DemoStats(truth=truth, requests=lambda: int(sim.counts["requests"]))
        t0 = time.monotonic()

        async def run() -> bool:
            values = [{"id": f"t{i}", "text": t} for i, (t, _) in enumerate(stream)]
            sender = asyncio.create_task(produce(kafka, names.texts, values, rate=args.rate))
            done = await _follow(kafka, names, stats, t0, args.timeout, args.progress_every)
            await sender
            return done

        done = asyncio.run(run())
        elapsed = time.monotonic() - t0
        _summary(stats, elapsed, done, n_classes, len(seeds))
        return 0 if done else 1
    finally:
        stop_process(worker)
        if judge is not None:
            judge.stop()
        if broker is not None:
            broker.stop()
        print(f"demo: stopped everything (logs in {workdir})", flush=True)


def _summary(stats: DemoStats, elapsed: float, done: bool, n_classes: int, n_seed: int) -> None:
    n = len(stats.final)
    first_ok = sum(1 for i, v in stats.first.items() if v.get("label") == stats.truth[i])
    direct = [i for i, v in stats.first.items() if v.get("final")]
    direct_ok = sum(1 for i in direct if stats.first[i].get("label") == stats.truth[i])
    judged = [i for i in stats.final if not stats.first[i].get("final")]
    judged_ok = sum(1 for i in judged if stats.final[i].get("label") == stats.truth[i])
    half = n // 2
    ids = list(stats.final)
    acc1 = sum(stats.final[i]["label"] == stats.truth[i] for i in ids[:half]) / max(half, 1)
    acc2 = sum(stats.final[i]["label"] == stats.truth[i] for i in ids[half:]) / max(n - half, 1)
    print()
    print("demo summary" + ("" if done else " (TIMED OUT: not every text got its final label)"))
    print(f"  classes / seed examples         {n_classes} / {n_seed}")
    print(
        f"  texts labelled (final)           {n} of {len(stats.truth)} in {elapsed:.1f}s "
        f"({n / elapsed:.1f}/s)"
    )
    print(f"  accuracy of final labels         {stats.correct / max(n, 1):.1%}")
    print(f"  accuracy, first / second half    {acc1:.1%} / {acc2:.1%}")
    print(
        f"  accuracy of the experts alone    {first_ok / max(len(stats.first), 1):.1%} "
        "(first label of every text)"
    )
    print(f"  not routed: {len(direct)} texts, {direct_ok / max(len(direct), 1):.1%} right")
    print(f"  routed to the judge: {len(judged)} texts ({len(judged) / max(n, 1):.1%}), "
          f"{judged_ok / max(len(judged), 1):.1%} right after judging")  # fmt: skip
    print(f"  judge calls                      {stats.calls} ({stats.verdicts} verdicts)")
    print(f"  final statuses                   {dict(sorted(stats.statuses.items()))}")
    print(f"  reference                        {REFERENCE}")


def _number(kind: type, low: float, high: float, what: str) -> Callable[[str], Any]:
    """An argparse type: ``kind`` within [low, high], or a usage error that says so."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text} is not {what}")
        return value

    return parse


_count = _number(int, 0, float("inf"), "a count >= 0")
_positive = _number(int, 1, float("inf"), "an integer >= 1")
_share = _number(float, 0.0, 1.0, "a share in [0, 1]")
_nonneg_float = _number(float, 0.0, float("inf"), "a number >= 0")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="the whole service on CLINC150 with live progress (broker, judge, worker)"
    )
    p.add_argument(
        "--data", type=Path, help="data folder holding clinc150/data_full.json (default: shared data)"
    )
    p.add_argument("--data-url", default=os.environ.get("DRIFTLABEL_CLINC150_URL", CLINC150_URL))
    p.add_argument("--cache-dir", type=Path, default=default_cache_dir(), help="where a download is kept")
    p.add_argument("--limit", type=_count, default=3000, help="texts to stream (0 = all 21,000 in-scope)")
    p.add_argument("--seed-per-class", type=_positive, default=10, help="seed examples per class")
    p.add_argument("--classes", type=_count, default=0, help="use only this many classes (0 = all 150)")
    p.add_argument("--oos", action="store_true", help="keep the model's out-of-scope detection on")
    p.add_argument("--judge-share", type=_share, default=0.1, help="target share of texts sent to the judge")
    p.add_argument("--judge-latency-ms", type=_nonneg_float, default=20.0, help="simulated judge latency")
    p.add_argument("--judge-error-rate", type=_share, default=0.0, help="share of wrong simulated verdicts")
    p.add_argument("--rate", type=_nonneg_float, default=0.0, help="texts per second (0 = at once)")
    p.add_argument("--partitions", type=_positive, default=4)
    p.add_argument(
        "--embedder",
        choices=["minilm", "onnx", "static"],
        help="embedder of the worker (default onnx: MiniLM as int8 ONNX; or DRIFTLABEL_EMBEDDER_KIND; minilm "
        "is the same model on torch): static is fastest",
    )
    p.add_argument("--bootstrap", help="use this Kafka instead of starting a local broker")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=1800.0, help="give up streaming after this many seconds")
    p.add_argument("--startup-timeout", type=float, default=300.0)
    p.add_argument("--progress-every", type=float, default=2.0, help="seconds between progress lines")
    p.set_defaults(func=cmd_demo)
