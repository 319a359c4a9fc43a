"""Opt-in benchmark: one question per call against several per call, asked of a REAL LLM.

The batched questions (``judge.batch_size`` > 1, with the yes/no question or with ``choose``) meet issue 9's
accuracy goals with the simulated expert, whose error rate is the same however a prompt is built. This
asks the question the simulation cannot answer: does a real model answer four numbered questions in one
prompt as reliably as one question alone? The same judge requests go to the same model once per format:

- items: the ``--items`` stream texts a 10-shot model is least sure of (smallest top-1/top-2 margin), as
  the router would send them, with that model's top-3 candidates and 6 nearest known-good examples each;
- formats: ``validate:1`` (PRODUCT.md's yes/no recursion, the default), ``validate:4``, ``choose:1``,
  ``choose:4`` (``question:batch_size``); the verdict cache is off, so every format pays for its answers.

Reported per format: accepted labels and how many are right (the label's precision is what the learner
gets), labels per call, calls, tokens and wall time. The model is served by ``llama-cpp-python[server]``
from a GGUF file (``--gguf``), or any OpenAI-compatible endpoint is used as it is (``--base-url``)::

    python bench/bench_judge_formats.py --gguf qwen2.5-coder-1.5b-instruct-q4_k_m.gguf --items 48
    python bench/bench_judge_formats.py --base-url http://127.0.0.1:8000/v1 --model my-model --data mine.csv

Writes ``bench/results/<name>.md`` and a PNG. The server it starts is always stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `bench.common`, however this is run

from bench.common import (
    RESULTS_DIR,
    CachedArrayEmbedder,
    dataset_embeddings,
    k_shot_indices,
    markdown_table,
    write_report,
)
from driftlabel.judge import (
    Candidate,
    Judge,
    JudgeError,
    JudgeOutcome,
    JudgeRequest,
    LocalLlamaServer,
    load_judge_settings,
)
from driftlabel.models import ExpertSettings, RedClassifier
from driftlabel.models.datasets import read_examples
from driftlabel.models.embeddings import load_embedder

EMBEDDER = CachedArrayEmbedder("all-MiniLM-L6-v2", 384)
FORMATS = ("validate:1", "validate:4", "choose:1", "choose:4")


@dataclass
class FormatRun:
    """What one format bought from the endpoint for the same requests."""

    fmt: str
    calls: int
    tokens: int
    seconds: float
    malformed: int
    accepted: int
    right: int
    unresolved: int
    truth_rejected: int  # items whose true label was shown but not accepted
    answer_format: str

    @property
    def precision(self) -> float:
        return self.right / self.accepted if self.accepted else 0.0

    @property
    def labels_per_call(self) -> float:
        return self.accepted / self.calls if self.calls else 0.0

    @property
    def right_per_call(self) -> float:
        return self.right / self.calls if self.calls else 0.0


def labelled_sample(dataset: str, data_file: Path | None) -> tuple[np.ndarray, list[str], np.ndarray, Any]:
    """Embeddings, texts, labels and the embedder that made them: a dataset's training split (cached
    MiniLM vectors), or a labelled file of your own (the packaged default embedder)."""
    if data_file is None:
        data = dataset_embeddings(EMBEDDER, dataset, ["train"], progress=False)["train"]
        return data.X, data.texts, np.asarray(data.labels, dtype=object).astype(str), EMBEDDER
    texts, labels = read_examples(data_file)
    embedder = load_embedder()
    return embedder.encode(texts), texts, np.asarray(labels, dtype=object).astype(str), embedder


def build_requests(
    X: np.ndarray, texts: list[str], y: np.ndarray, n: int, seed: int, embedder: Any
) -> tuple[list[JudgeRequest], dict[str, str], int]:
    """The ``n`` least-margin non-seed texts of a 10-shot model, with its top-3 candidates, the true
    labels, and how many texts they were chosen from."""
    seeds = k_shot_indices(y, 10, seed=seed)
    clf = RedClassifier(embedder=embedder, settings=ExpertSettings())
    clf.fit_embeddings(X[seeds], [texts[i] for i in seeds], y[seeds].tolist())
    rest = np.setdiff1d(np.arange(len(y)), seeds)
    if not len(rest):
        raise SystemExit("every text is a seed (10 per label): the sample needs more than 10 texts per label")
    rest = np.random.default_rng(seed).permutation(rest)[:4000]  # a stream's worth to choose from
    r = clf.rank_embeddings(X[rest], top_k=3)
    picked = np.argsort(np.asarray(r.margin), kind="stable")[:n]
    reqs, truth = [], {}
    for j in picked.tolist():
        i = int(rest[j])
        cands = [
            Candidate(lab, float(p), None, clf.nearest_examples(lab, X[i], c=6))
            for lab, p in r.candidates[j][:3]
        ]
        item = f"item-{i}"
        reqs.append(JudgeRequest(item, texts[i], cands))
        truth[item] = str(y[i])
    return reqs, truth, len(rest)


async def run_format(
    fmt: str, base_url: str, model: str, reqs: list[JudgeRequest], answer_format: str, concurrency: int
) -> tuple[list[JudgeOutcome], float, Judge]:
    question, batch = fmt.split(":")
    settings = load_judge_settings(
        base_url=base_url,
        model=model,
        answer_format=answer_format,
        question=question,
        batch_size=int(batch),
        batch_wait_ms=1000.0,
        concurrency=concurrency,
        timeout_s=600,
        max_retries=1,
        max_depth=3,
        cache_size=0,
        max_calls_per_item=0,
    )
    async with Judge(settings) as judge:
        t0 = time.perf_counter()
        outs = list(await asyncio.gather(*(judge.judge(r) for r in reqs)))
        return outs, time.perf_counter() - t0, judge


def score(
    fmt: str,
    outs: list[JudgeOutcome],
    seconds: float,
    judge: Judge,
    reqs: list[JudgeRequest],
    truth: dict[str, str],
) -> FormatRun:
    shown = {r.id: {c.label for c in r.candidates} for r in reqs}
    accepted = [o for o in outs if o.label is not None]
    st = judge.stats
    return FormatRun(
        fmt=fmt,
        calls=st.calls,
        tokens=st.tokens,
        seconds=seconds,
        malformed=st.malformed,
        accepted=len(accepted),
        right=sum(o.label == truth[o.id] for o in accepted),
        unresolved=sum(o.status == "unresolved" for o in outs),
        truth_rejected=sum(truth[o.id] in shown[o.id] and o.label != truth[o.id] for o in outs),
        answer_format=st.answer_format,
    )


def plot(name: str, runs: list[FormatRun], out_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    names = [r.fmt for r in runs]
    axes[0].bar(names, [100 * r.precision for r in runs], color="tab:blue")
    axes[0].set_ylabel("accepted labels that are right (%)")
    axes[0].set_ylim(0, 100)
    axes[1].bar(names, [r.right_per_call for r in runs], color="tab:green")
    axes[1].set_ylabel("right labels per call")
    for ax in axes:
        ax.tick_params(axis="x", labelrotation=20)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_formats_report(
    args: argparse.Namespace, argv: list[str] | None, runs: list[FormatRun], n_items: int, pool: int,
    in_cands: int, served: str, complete: bool,
) -> Path:  # fmt: skip
    """The report of the formats asked so far: rewritten after each format, so a run cut short (a
    timeout, a dead endpoint) keeps what it had measured, and says it was cut short."""
    rows = [
        [
            r.fmt,
            r.calls,
            r.accepted,
            f"{r.right} ({100 * r.precision:.1f} %)",
            r.unresolved,
            r.truth_rejected,
            f"{r.labels_per_call:.2f}",
            f"{r.right_per_call:.2f}",
            f"{r.tokens / max(1, n_items):.0f}",
            r.malformed,
            r.answer_format,
            f"{r.seconds:.0f}",
        ]
        for r in runs
    ]
    png = plot(args.name, runs, args.out_dir)
    source = f"{args.dataset} training" if args.data is None else f"`{args.data.name}`"
    command = " ".join(argv if argv is not None else sys.argv[1:])
    body = "\n".join(
        [
            f"- command: `python bench/bench_judge_formats.py {command}`",
            f"- model: `{args.model}`" + (f" from `{args.gguf.name}`" if args.gguf else "") + f" ({served})",
            f"- items: the {n_items} least-margin of {pool:,} {source} texts under a 10-shot "
            f"model (seed {args.seed}); top-3 candidates, 6 nearest examples each, no descriptions; the true "
            f"label is among the candidates for {in_cands}. Cache off, max_depth 3.",
            "",
            markdown_table(
                [
                    "format",
                    "calls",
                    "accepted",
                    "right (precision)",
                    "unresolved",
                    "true label shown, not taken",
                    "labels / call",
                    "right labels / call",
                    "tokens / item",
                    "malformed",
                    "answer format",
                    "wall s",
                ],
                rows,
            ),
            "",
            f"![precision and right labels per call]({png.name})",
            "" if complete else f"\n**Cut short**: {len(runs)} of {len(args.formats)} formats asked.",
        ]
    )
    title = f"One question per call against several, asked of a real LLM ({args.data or args.dataset})"
    path = write_report(args.name, title, body, args.out_dir)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="clinc150", choices=["clinc150", "banking77"])
    ap.add_argument(
        "--data", type=Path, help="a labelled CSV/TSV/JSONL/JSON file of your own (text, label) instead"
    )
    ap.add_argument("--items", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--formats", nargs="+", default=list(FORMATS), help="question:batch_size, e.g. validate:4"
    )
    ap.add_argument("--gguf", type=Path, help="serve this GGUF file with llama-cpp-python[server]")
    ap.add_argument(
        "--server-python",
        default=sys.executable,
        help="a Python whose environment has llama-cpp-python[server] (default: this one)",
    )
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--base-url", help="use this OpenAI-compatible endpoint instead of serving --gguf")
    ap.add_argument("--model", default="local", help="the model name to ask for (and the served alias)")
    ap.add_argument(
        "--answer-format",
        choices=["json_schema", "json_object", "text"],
        help="default: json_object with --gguf (llama-cpp-python refuses json_schema, and each format's "
        "first call would be a refused one), else json_schema",
    )
    ap.add_argument(
        "--concurrency", type=int, default=1, help="calls in flight (llama.cpp answers one at a time)"
    )
    ap.add_argument("--name", default="judge_formats")
    ap.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = ap.parse_args(argv)
    for f in args.formats:
        q, _, b = f.partition(":")
        if q not in ("validate", "choose") or not b.isdigit() or int(b) < 1:
            ap.error(f"format {f!r}: expected validate:N or choose:N with N >= 1")
    if args.base_url is None and args.gguf is None:
        ap.error("give --gguf FILE (served here) or --base-url URL (an endpoint already running)")
    if args.answer_format is None:
        args.answer_format = "json_object" if args.base_url is None else "json_schema"
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind, so the server below is stopped

    X, texts, y, embedder = labelled_sample(args.dataset, args.data)
    reqs, truth, pool = build_requests(X, texts, y, args.items, args.seed, embedder)
    in_cands = sum(truth[r.id] in {c.label for c in r.candidates} for r in reqs)
    print(f"{len(reqs)} requests; the true label is among the 3 candidates for {in_cands}", file=sys.stderr)
    server: LocalLlamaServer | None = None
    if args.base_url is None:
        log = Path("/tmp") / f"driftlabel-llama-server-{os.getpid()}.log"
        server = LocalLlamaServer(
            args.gguf,
            n_ctx=8192,
            n_threads=args.threads,
            model_alias=args.model,
            log_file=log,
            python=args.server_python,
        )
        server.start(timeout_s=300)
        print(f"serving {args.gguf.name} at {server.base_url} (log {log})", file=sys.stderr)
    base_url = args.base_url or (server.base_url if server else "")
    served = f"llama-cpp-python server on loopback, {args.threads} threads" if server else args.base_url
    runs: list[FormatRun] = []
    path: Path | None = None
    try:
        for fmt in args.formats:
            try:
                outs, seconds, judge = asyncio.run(
                    run_format(fmt, base_url, args.model, reqs, args.answer_format, args.concurrency)
                )
            except JudgeError as exc:  # endpoint down, key refused, ...: say so, keep what was measured
                print(f"{fmt}: the judge failed: {exc}", file=sys.stderr)
                if path is not None:
                    print(f"report of the formats before it: {path}", file=sys.stderr)
                return 1
            run = score(fmt, outs, seconds, judge, reqs, truth)
            runs.append(run)
            print(
                f"{fmt}: {run.accepted} accepted, {run.right} right ({run.precision:.1%}), "
                f"{run.calls} calls, {run.labels_per_call:.2f} labels/call, {run.tokens} tokens, "
                f"{seconds:.0f} s",
                file=sys.stderr,
            )
            done = len(runs) == len(args.formats)
            path = write_formats_report(args, argv, runs, len(reqs), pool, in_cands, served, done)
    finally:
        if server is not None:
            server.stop()
    print(f"report: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
