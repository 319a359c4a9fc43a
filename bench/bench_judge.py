"""Benchmark: judge verdicts/s per process against the simulated expert at a fixed endpoint latency.

The simulated expert runs in its own process (``python -m driftlabel.judge.cli judge-sim``) so the figures
are the judge process's own cost: the real ``openai`` async client, prompt building, parsing, accounting.
Items are CLINC150 test texts: half have the right label first (one verdict), half second (two verdicts,
i.e. delegation). The cache is off so every verdict is a real HTTP call.

    python bench/bench_judge.py                       # 300 ms latency, concurrency 8/16/32/64
    python bench/bench_judge.py --latency-ms 300 --concurrency 32 --items 600

Prints one line per run and writes ``bench/results/judge.md``. Goal: >= 50 verdicts/s at 300 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from driftlabel.judge import Candidate, Judge, JudgeRequest, load_judge_settings

REPO = Path(__file__).resolve().parents[1]
_ARGV: list[str] = []  # the command line, for the report


def data_file() -> Path:
    root = os.environ.get("DRIFTLABEL_DATA_DIR")
    base = Path(root) if root else REPO.parent / "shared" / "data"
    return base / "clinc150" / "data_full.json"


@dataclass
class Run:
    concurrency: int
    items: int
    verdicts: int
    seconds: float
    tokens_per_verdict: float
    p50_ms: float
    p95_ms: float
    agreement: float
    cpu_s: float

    @property
    def verdicts_per_s(self) -> float:
        return self.verdicts / self.seconds


def build_requests(n: int) -> list[JudgeRequest]:
    data = json.loads(data_file().read_text(encoding="utf-8"))
    test = data["test"]
    labels = sorted({lab for _, lab in test})
    step = max(1, len(test) // n)
    reqs = []
    for i, (text, lab) in enumerate(test[::step][:n]):
        examples = [t for t, lab2 in data["train"] if lab2 == lab][:6]
        right = Candidate(lab, 0.6, f"texts of the intent {lab.replace('_', ' ')}", examples)
        wrong_label = labels[(labels.index(lab) + 1) % len(labels)]
        wrong = Candidate(
            wrong_label, 0.3, f"texts of the intent {wrong_label.replace('_', ' ')}", examples[:6]
        )
        cands = [right, wrong] if i % 2 == 0 else [wrong, right]
        reqs.append(JudgeRequest(f"bench-{i}", text, cands))
    return reqs


def start_sim(latency_ms: float) -> tuple[subprocess.Popen[str], str]:
    cmd = [
        sys.executable,
        "-m",
        "driftlabel.judge.cli",
        "judge-sim",
        "--data",
        str(data_file()),
        "--port",
        "0",
        "--latency-ms",
        str(latency_ms),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"(http://\S+/v1)", line)
    if not match:
        proc.kill()
        raise SystemExit(f"simulated expert did not start: {line!r}")
    return proc, match.group(1)


async def one_run(base_url: str, reqs: list[JudgeRequest], concurrency: int) -> Run:
    settings = load_judge_settings(base_url=base_url, concurrency=concurrency, cache_size=0, timeout_s=10)
    async with Judge(settings) as judge:
        await judge.judge(reqs[0])  # warm the connection pool
        warm = judge.stats
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        outs = await asyncio.gather(*(judge.judge(r) for r in reqs))
        seconds = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        stats = judge.stats
    verdicts = [v for o in outs for v in o.verdicts]
    lat = sorted(v.latency_ms for v in verdicts)
    truth = {r.id: next(c.label for c in r.candidates if c.probability == 0.6) for r in reqs}
    agree = sum(o.label == truth[o.id] for o in outs) / len(outs)
    n_verdicts = stats.verdicts - warm.verdicts
    tokens = stats.tokens - warm.tokens
    return Run(
        concurrency=concurrency,
        items=len(reqs),
        verdicts=n_verdicts,
        seconds=seconds,
        tokens_per_verdict=tokens / n_verdicts,
        p50_ms=statistics.median(lat),
        p95_ms=lat[int(0.95 * (len(lat) - 1))],
        agreement=agree,
        cpu_s=cpu,
    )


def write_report(path: Path, latency_ms: float, runs: list[Run], load: tuple[float, float, float]) -> None:
    best = max(runs, key=lambda r: r.verdicts_per_s)
    lines = [
        "# Judge throughput against the simulated expert",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; host: {platform.node()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}",
        f"- endpoint: simulated expert in its own process, fixed latency {latency_ms:.0f} ms per call, "
        "CLINC150 data_full.json; cache off (every verdict is an HTTP call)",
        f"- load average before the run: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
        "(the machine is shared; figures taken while others were busy are lower bounds)",
        "- items: CLINC150 test texts, half with the right label first, half second (delegation)",
        "- command: `python bench/bench_judge.py " + " ".join(_ARGV) + "`",
        "",
        "| concurrency | items | verdicts | seconds | verdicts/s | tokens/verdict | p50 ms | p95 ms "
        "| judge CPU s | CPU ms/verdict | agreement |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r.concurrency} | {r.items} | {r.verdicts} | {r.seconds:.2f} | {r.verdicts_per_s:.1f} | "
            f"{r.tokens_per_verdict:.0f} | {r.p50_ms:.0f} | {r.p95_ms:.0f} | {r.cpu_s:.2f} | "
            f"{1000 * r.cpu_s / r.verdicts:.2f} | {r.agreement:.3f} |"
        )
    goal = "met" if best.verdicts_per_s >= 50 else "NOT met"
    lines += [
        "",
        f"Best: **{best.verdicts_per_s:.1f} verdicts/s** at concurrency {best.concurrency} "
        f"(goal >= 50/s at 300 ms: {goal}); {best.tokens_per_verdict:.0f} tokens per verdict "
        "(word-piece estimate of the simulated expert; a real tokenizer differs).",
        "Throughput is bounded by concurrency / latency (Little's law) until the judge's CPU cost per "
        "verdict saturates one core.",
        "",
    ]
    if len(runs) > 1:
        sys.path.insert(0, str(REPO))
        from bench.common import line_plot

        png = line_plot(
            path.stem, {"verdicts/s": ([r.concurrency for r in runs], [r.verdicts_per_s for r in runs])},
            xlabel="judge concurrency", ylabel="verdicts/s", logx=True,
            title=f"judge throughput at {latency_ms:.0f} ms endpoint latency",
        )  # fmt: skip
        lines += [f"![verdicts/s vs concurrency]({png.name})", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latency-ms", type=float, default=300.0)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--items", type=int, default=400)
    ap.add_argument("--repeat", type=int, default=1, help="runs per concurrency; the best is reported")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "judge.md")
    args = ap.parse_args(argv)
    load = os.getloadavg()
    reqs = build_requests(args.items)
    proc, url = start_sim(args.latency_ms)
    runs: list[Run] = []
    try:
        for c in args.concurrency:
            tries = [asyncio.run(one_run(url, reqs, c)) for _ in range(args.repeat)]
            best = max(tries, key=lambda r: r.verdicts_per_s)
            runs.append(best)
            print(
                f"concurrency={c:3d} verdicts={best.verdicts} {best.verdicts_per_s:6.1f} verdicts/s "
                f"tokens/verdict={best.tokens_per_verdict:.0f} "
                f"p50={best.p50_ms:.0f}ms p95={best.p95_ms:.0f}ms "
                f"cpu={1000 * best.cpu_s / best.verdicts:.2f}ms/verdict agreement={best.agreement:.3f} "
                f"(runs: {', '.join(f'{t.verdicts_per_s:.1f}' for t in tries)})",
                flush=True,
            )
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    _ARGV[:] = list(sys.argv[1:] if argv is None else argv)
    write_report(args.out, args.latency_ms, runs, load)
    print(f"report: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
