"""Embedder benchmark: speed (texts/s) and accuracy of the default vs the fast embedders.

For each embedder kind (``sentence-transformers`` = packaged MiniLM on torch, ``onnx`` = the same model
int8 on onnxruntime, ``static`` = its model2vec-style distillation):

- load time (cold, in this process) and throughput: unique CLINC150 test texts, cache off, micro-batches
  of ``--batch`` (64), best of ``--repeats`` runs; plus single-text latency (batch of 1, median);
- accuracy: scikit-learn LogisticRegression (C=10) on each embedder's embeddings, CLINC150 10-shot
  (mean of ``--seeds``) and full, BANKING77 10-shot; and the R.E.D. RedClassifier on the same arrays.

Embeddings are cached under ``.cache/embeddings/`` (see bench/common.py), so a re-run only re-measures.
Writes ``bench/results/embedders.md``. Run from the repository root::

    python -m bench.bench_embedders                  # everything (first run embeds ~40k texts per kind)
    python -m bench.bench_embedders --kinds static onnx --no-red
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as `python bench/bench_embedders.py`
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    Embedded,
    best_of,
    cache_path,
    cached_embeddings,
    dataset_embeddings,
    k_shot_indices,
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


def measure_speed(kind: str, texts: list[str], batch: int, repeats: int) -> dict[str, Any]:
    """Cold load time, warm throughput at ``batch`` (cache off), single-text latency."""
    t0 = time.perf_counter()
    emb = load_embedder(EmbedderSettings(kind=kind, cache_size=0, batch_size=batch), shared=False)
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
        "dim": emb.dim,
        "load_s": load_s,
        "texts_per_s": len(texts) / best,
        "latency_ms": 1000 * statistics.median(lat),
        "embedder": emb,
    }


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
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--no-red", action="store_true", help="skip the RedClassifier accuracy")
    ap.add_argument("--no-accuracy", action="store_true", help="speed only")
    args = ap.parse_args(argv)

    texts = list(dict.fromkeys(load_clinc150().test.texts))[: args.speed_texts]
    _say(f"{machine_info()}")
    speed: dict[str, dict[str, Any]] = {}
    acc: dict[str, dict[str, Any]] = {}
    for kind in args.kinds:
        _say(f"[{kind}] speed: {len(texts)} texts, batch {args.batch}, best of {args.repeats}")
        speed[kind] = measure_speed(kind, texts, args.batch, args.repeats)
        s = speed[kind]
        _say(
            f"  {s['name']}: {s['texts_per_s']:.0f} texts/s, {s['latency_ms']:.1f} ms/text, "
            f"load {s['load_s']:.1f}s"
        )
        if not args.no_accuracy:
            emb = load_embedder(EmbedderSettings(kind=kind, batch_size=args.batch))
            acc[kind] = measure_accuracy(emb, args.seeds, not args.no_red)

    base = speed.get("sentence-transformers", {}).get("texts_per_s")
    rows = []
    for kind, s in speed.items():
        rel = f"{s['texts_per_s'] / base:.1f}x" if base else "n/a"
        rows.append(
            [
                kind,
                f"`{s['name']}`",
                s["dim"],
                f"{s['texts_per_s']:,.0f}",
                rel,
                f"{s['latency_ms']:.2f}",
                f"{s['load_s']:.1f}",
            ]
        )
    body = [
        "Command: `python -m bench.bench_embedders "
        + " ".join(argv if argv is not None else sys.argv[1:])
        + "`",
        "",
        f"## Speed ({len(texts)} unique CLINC150 test texts, batch {args.batch}, cache off, "
        f"best of {args.repeats})",
        "",
        markdown_table(["kind", "name", "dim", "texts/s", "vs default", "1-text latency ms", "load s"], rows),
    ]
    if acc:
        cols = ["clinc150-10", "clinc150-full", "banking77-10"]
        arows = []
        for kind, a in acc.items():
            cells = []
            for c in cols:
                lr, rd = a.get(c, (None, None))
                cells.append(
                    "n/a"
                    if lr is None
                    else f"{100 * lr:.1f}" + (f" / {100 * rd:.1f}" if rd is not None else "")
                )
            arows.append([kind, *cells])
        body += [
            "",
            "## Accuracy (test %; LogisticRegression C=10 / RedClassifier defaults; "
            f"10-shot = mean of seeds {args.seeds})",
            "",
            markdown_table(["kind", "CLINC150 10-shot", "CLINC150 full", "BANKING77 10-shot"], arows),
            "",
            "Reference (PRODUCT.md, MiniLM + LogisticRegression): CLINC150 10-shot 91.2, full 95.5; "
            "BANKING77 10-shot 84.9.",
        ]
    path = write_report("embedders", "Embedders: speed and accuracy", "\n".join(body))
    _say(f"wrote {path}")
    print("\n".join(body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
