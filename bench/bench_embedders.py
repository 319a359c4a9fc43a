"""Embedder benchmark: speed (texts/s) and accuracy of the default vs the fast embedders.

For each embedder kind (``sentence-transformers`` = packaged MiniLM on torch, ``onnx`` = the same model
int8 on onnxruntime, ``static`` = its model2vec-style distillation):

- load time (cold, in this process) and throughput: unique CLINC150 test texts, cache off, micro-batches
  of ``--batch`` (64), best of ``--repeats`` runs; plus single-text latency (batch of 1, median);
- padding (``--padding``, onnx): throughput on shuffled CLINC150 and BANKING77 train texts in
  micro-batches of 16, 64 and 256, texts cut into runs of ``tokens_per_run`` padded tokens (the default,
  256) against one run per micro-batch (every text padded to the micro-batch's longest: before 7 December);
  it runs alone and writes ``bench/results/embedders_padding.md``;
- accuracy: scikit-learn LogisticRegression (C=10) on each embedder's embeddings, CLINC150 10-shot
  (mean of ``--seeds``) and full, BANKING77 10-shot; and the R.E.D. RedClassifier on the same arrays.

Embeddings are cached under ``.cache/embeddings/`` (see bench/common.py), so a re-run only re-measures.
Writes ``bench/results/embedders.md``. Run from the repository root::

    python -m bench.bench_embedders                  # everything (first run embeds ~40k texts per kind)
    python -m bench.bench_embedders --kinds static onnx --no-red
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as `python bench/bench_embedders.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    Embedded,
    best_of,
    cache_path,
    cached_embeddings,
    dataset_embeddings,
    k_shot_indices,
    line_plot,
    logreg_accuracy,
    machine_info,
    markdown_table,
    write_report,
)
from driftlabel.models.datasets import Dataset, load_clinc150, load_dataset
from driftlabel.models.embeddings import Embedder, EmbedderSettings, load_embedder

KINDS = ("sentence-transformers", "onnx", "static")


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def measure_speed(
    kind: str, texts: list[str], batch: int, repeats: int, threads: int | None
) -> dict[str, Any]:
    """Cold load time, warm throughput at ``batch`` (cache off), single-text latency."""
    t0 = time.perf_counter()
    emb = load_embedder(
        EmbedderSettings(kind=kind, cache_size=0, batch_size=batch, threads=threads), shared=False
    )
    emb.warmup()
    load_s = time.perf_counter() - t0

    def run() -> None:
        for i in range(0, len(texts), batch):
            emb.encode(texts[i : i + batch])

    best, _ = best_of(run, repeats)
    lat = []
    for t in texts[:100]:
        s = time.perf_counter()
        emb.encode([t])
        lat.append(time.perf_counter() - s)
    return {
        "name": emb.name,
        "threads": getattr(emb, "threads", None) or "-",
        "dim": emb.dim,
        "load_s": load_s,
        "texts_per_s": len(texts) / best,
        "latency_ms": 1000 * statistics.median(lat),
        "embedder": emb,
    }


PADDING_MICRO = (16, 64, 256)
#: the default cut (EmbedderSettings.tokens_per_run)
RUN_TOKENS: int = EmbedderSettings.model_fields["tokens_per_run"].default
#: tokens_per_run that never cuts a micro-batch of <= 64 texts: one run each, as before 7 December.
ONE_RUN = 1_000_000


def measure_padding(texts: list[str], repeats: int, threads: int | None) -> dict[str, dict[str, float]]:
    """Onnx texts/s per micro-batch size: runs of the default padded tokens vs one run per micro-batch."""
    out: dict[str, dict[str, float]] = {}
    for label, tpr in (("one run per micro-batch", ONE_RUN), (f"runs of {RUN_TOKENS} tokens", RUN_TOKENS)):
        emb = load_embedder(
            EmbedderSettings(kind="onnx", cache_size=0, threads=threads, tokens_per_run=tpr),
            shared=False,
        )
        emb.warmup()
        for micro in PADDING_MICRO:

            def run(emb: Embedder = emb, micro: int = micro) -> None:
                for i in range(0, len(texts), micro):
                    emb.encode(texts[i : i + micro])

            best, _ = best_of(run, repeats)
            out.setdefault(label, {})[str(micro)] = len(texts) / best
    return out


def padding_report(n_texts: int, repeats: int, threads: int | None, argv: Sequence[str] | None) -> int:
    """``--padding``: the micro-batch comparison on CLINC150 and BANKING77, its own report."""
    rows = []
    for name in ("clinc150", "banking77"):
        pool = list(dict.fromkeys(load_dataset(name).train.texts))
        np.random.default_rng(0).shuffle(pool)
        _say(f"[onnx] padding: {name}, {n_texts} shuffled train texts, best of {repeats}")
        for label, rates in measure_padding(pool[:n_texts], repeats, threads).items():
            rows.append([name, label, *(f"{rates[str(m)]:,.0f}" for m in PADDING_MICRO)])
            _say(f"  {label}: {rows[-1][2:]}")
    command = "python -m bench.bench_embedders " + " ".join(argv if argv is not None else sys.argv[1:])
    body = "\n".join(
        [
            f"Command: `{command.strip()}`; at the end: {machine_info()}.",
            "",
            f"The int8 ONNX embedder (1 thread by default), texts/s by micro-batch size: {n_texts} "
            f"shuffled train texts per dataset, cache off, best of {repeats}. A model run costs its "
            "texts times its longest text's tokens, so one run per micro-batch (as before 7 December) "
            "pads every text to the micro-batch's longest; the default now sorts a micro-batch by "
            f"token count and cuts it into runs of at most {RUN_TOKENS} padded tokens "
            "(`embedder.tokens_per_run`).",
            "",
            markdown_table(["dataset", "runs", *(f"micro-batch {m}" for m in PADDING_MICRO)], rows),
        ]
    )
    path = write_report("embedders_padding", "Embedders: padding in micro-batches", body)
    _say(f"wrote {path}")
    print(body)
    return 0


def red_accuracy(
    Xtr: np.ndarray, texts: list[str], ytr: np.ndarray, Xte: np.ndarray, yte: np.ndarray
) -> float | None:
    """A1's RedClassifier on the same embeddings (None when it is not importable)."""
    try:
        from driftlabel.models.classifier import RedClassifier
        from driftlabel.models.experts import ExpertSettings
    except ImportError:
        return None
    clf = RedClassifier(settings=ExpertSettings()).fit_embeddings(Xtr, texts, list(ytr))
    return float(np.mean(np.asarray(clf.predict_embeddings(Xte), dtype=object) == yte))


def _train_split(emb: Embedder, ds: Dataset, rows: np.ndarray | None) -> Embedded:
    """The train split's embeddings; with ``rows``, only those rows are embedded (others stay NaN) unless
    the whole split is cached already, which saves a slow embedder from encoding texts never used."""
    split = ds.train
    y = np.asarray(split.labels, dtype=object)
    full_key = f"{ds.name}-train"
    if rows is None or cache_path(emb.name, full_key, split.texts).is_file():
        return Embedded(cached_embeddings(emb, split.texts, full_key), split.texts, y)
    X = np.full((len(split), emb.dim), np.nan, dtype=np.float32)
    X[rows] = cached_embeddings(emb, [split.texts[i] for i in rows], f"{ds.name}-train-rows")
    return Embedded(X, split.texts, y)


def measure_accuracy(emb: Embedder, seeds: Sequence[int], red: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for ds, ks in ((load_dataset("clinc150"), (10, None)), (load_dataset("banking77"), (10,))):
        if None in ks:
            rows = None
        else:
            rows = np.unique(
                np.concatenate([k_shot_indices(ds.train.labels, k, s) for k in ks for s in seeds])
            )
        tr = _train_split(emb, ds, rows)
        te = dataset_embeddings(emb, ds, ["test"])["test"]
        for k in ks:
            lr, rd = [], []
            for seed in seeds if k is not None else seeds[:1]:
                idx = k_shot_indices(tr.y, k, seed)
                t0 = time.perf_counter()
                lr.append(logreg_accuracy(tr.X[idx], tr.y[idx], te.X, te.y))
                if red:
                    r = red_accuracy(tr.X[idx], [tr.texts[i] for i in idx], tr.y[idx], te.X, te.y)
                    if r is not None:
                        rd.append(r)
                _say(
                    f"  {emb.name} {ds.name} k={k or 'all'} seed={seed}: LR {lr[-1]:.4f}"
                    + (f", RED {rd[-1]:.4f}" if rd else "")
                    + f" ({time.perf_counter() - t0:.0f}s)"
                )
            key = f"{ds.name}-{k or 'full'}"
            out[key] = (float(np.mean(lr)), float(np.mean(rd)) if rd else None)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--speed-texts", type=int, default=1024, help="unique texts per throughput run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, help="intra-op threads (default: EmbedderSettings' default)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--no-red", action="store_true", help="skip the RedClassifier accuracy")
    ap.add_argument("--no-accuracy", action="store_true", help="speed only")
    ap.add_argument(
        "--padding", action="store_true", help="only the onnx padding comparison (embedders_padding.md)"
    )
    ap.add_argument(
        "--batches",
        type=int,
        nargs="*",
        default=[1, 8, 32, 64, 128, 256],
        help="batch sizes of the throughput sweep (plotted); none = no sweep",
    )
    args = ap.parse_args(argv)

    if args.padding:
        return padding_report(args.speed_texts, args.repeats, args.threads, argv)
    texts = list(dict.fromkeys(load_clinc150().test.texts))[: args.speed_texts]
    command = "python -m bench.bench_embedders " + " ".join(argv if argv is not None else sys.argv[1:])
    stamp = time.strftime("%H:%M UTC", time.gmtime())
    _say(machine_info())
    state = _load_state()
    for kind in args.kinds:
        _say(f"[{kind}] speed: {len(texts)} texts, batch {args.batch}, best of {args.repeats}")
        s = measure_speed(kind, texts, args.batch, args.repeats, args.threads)
        s.pop("embedder")
        s.update(texts=len(texts), batch=args.batch, repeats=args.repeats, at=stamp, load=_load1())
        state["speed"].append({"kind": kind, **s})
        _say(
            f"  {s['name']}: {s['texts_per_s']:.0f} texts/s, {s['latency_ms']:.1f} ms/text, "
            f"load {s['load_s']:.1f}s"
        )
        for b in args.batches:
            sw = measure_speed(kind, texts, b, 1, args.threads)
            state.setdefault("sweep", {}).setdefault(kind, {})[str(b)] = sw["texts_per_s"]
            _say(f"  batch {b}: {sw['texts_per_s']:.0f} texts/s")
        if not args.no_accuracy:
            emb = load_embedder(EmbedderSettings(kind=kind, batch_size=args.batch))
            state["accuracy"][kind] = {
                "seeds": list(args.seeds),
                "at": stamp,
                **measure_accuracy(emb, args.seeds, not args.no_red),
            }
        state["commands"] = sorted({*state.get("commands", []), command.strip()})
    STATE.parent.mkdir(parents=True, exist_ok=True)
    STATE.write_text(json.dumps(state, indent=1), encoding="utf-8")
    body = render(state)
    path = write_report("embedders", "Embedders: speed and accuracy", body)
    _say(f"wrote {path}")
    print(body)
    return 0


def _load1() -> str:
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:  # pragma: no cover
        return "n/a"


STATE = Path(__file__).resolve().parent / "results" / "embedders.json"


def _load_state() -> dict[str, Any]:
    """Runs accumulate (speed is re-measured several times on a shared machine; accuracy once per kind)."""
    if STATE.is_file():
        state: dict[str, Any] = json.loads(STATE.read_text(encoding="utf-8"))
        return state
    return {"speed": [], "accuracy": {}, "commands": []}


def render(state: dict[str, Any]) -> str:
    """Markdown: every speed run (best per kind and thread count highlighted) and the accuracy table."""
    runs = state["speed"]
    best: dict[tuple[str, Any], float] = {}
    for r in runs:
        key = (r["kind"], r["threads"])
        best[key] = max(best.get(key, 0.0), r["texts_per_s"])
    base = max((v for (k, _), v in best.items() if k == "sentence-transformers"), default=None)
    summary = [
        [k, t, f"{v:,.0f}", f"{v / base:.1f}x" if base else "n/a"]
        for (k, t), v in sorted(best.items(), key=lambda kv: (KINDS.index(kv[0][0]), str(kv[0][1])))
    ]
    rows = [
        [
            r["at"],
            r["kind"],
            r["threads"],
            r["texts"],
            r["batch"],
            f"{r['texts_per_s']:,.0f}",
            f"{r['latency_ms']:.2f}",
            f"{r['load_s']:.1f}",
            r["load"],
        ]
        for r in runs
    ]
    body = [
        "Commands: " + "; ".join(f"`{c}`" for c in state.get("commands", [])),
        "",
        "## Speed: best texts/s per embedder and thread count",
        "",
        "Batch 64, unique CLINC150 test texts, cache off.",
        "",
        "The machine is shared with other engineers' jobs (see the load column below): figures are the best",
        "of several runs and still a lower bound for an idle 2-core machine.",
        "",
        markdown_table(["kind", "threads", "best texts/s", "vs best default"], summary),
        "",
        "### Every run",
        "",
        markdown_table(
            [
                "at",
                "kind",
                "threads",
                "texts",
                "batch",
                "texts/s",
                "1-text latency ms",
                "load s",
                "load avg (1 min)",
            ],
            rows,
        ),
    ]
    sweep = state.get("sweep") or {}
    if sweep:
        series: dict[str, tuple[Sequence[float], Sequence[float]]] = {
            k: ([float(b) for b in sorted(v, key=int)], [float(v[b]) for b in sorted(v, key=int)])
            for k, v in sweep.items()
        }
        png = line_plot(
            "embedders_batch", series, xlabel="batch size", ylabel="texts/s (log)",
            title="embedder throughput vs batch size (cache off, 1 run each)", logx=True,
        )  # fmt: skip
        sizes = sorted({int(b) for v in sweep.values() for b in v})
        body += [
            "",
            "## Throughput vs batch size (texts/s, one run each; latest run per kind)",
            "",
            markdown_table(
                ["kind", *map(str, sizes)],
                [
                    [k, *(f"{v[str(b)]:,.0f}" if str(b) in v else "-" for b in sizes)]
                    for k, v in sweep.items()
                ],
            ),
            "",
            f"![throughput vs batch size]({png.name})",
        ]
    acc = state["accuracy"]
    if acc:
        cols = ["clinc150-10", "clinc150-full", "banking77-10"]
        arows = []
        for kind in [k for k in KINDS if k in acc]:
            a = acc[kind]
            cells = []
            for c in cols:
                lr, rd = a.get(c, (None, None))
                cells.append(
                    "n/a"
                    if lr is None
                    else f"{100 * lr:.1f}" + (f" / {100 * rd:.1f}" if rd is not None else "")
                )
            arows.append([kind, *cells])
        seeds = next(iter(acc.values()))["seeds"]
        body += [
            "",
            "## Accuracy (test %, LogisticRegression C=10 / RedClassifier with default ExpertSettings)",
            "",
            f"10-shot = mean over seeds {seeds}; full = all training examples.",
            "",
            markdown_table(["kind", "CLINC150 10-shot", "CLINC150 full", "BANKING77 10-shot"], arows),
            "",
            "Reference (PRODUCT.md, MiniLM + LogisticRegression): CLINC150 10-shot 91.2, full 95.5; "
            "BANKING77 10-shot 84.9.",
        ]
    return "\n".join(body)


if __name__ == "__main__":
    sys.exit(main())
