"""Scale in classes: O*NET's 923 occupations on real embeddings, then synthetic label sets up to 5,000.

Why: a drifting service gains classes; the experts must stay fast to fit, learn and predict as labels
grow. Two parts, each on cached MiniLM embeddings (``python -m bench.common`` computes them):

- **O*NET** (``../shared/data/onet``, 923 labels): R.E.D. fit time, test accuracy and predict throughput at
  k = 10 and with all the training data, against scikit-learn ``LogisticRegression(C=10)`` on the same
  embeddings (the PRODUCT.md reference; C=1 for comparison).
- **Synthetic**: ``n`` labels whose centres are random unit vectors in 384-d, with examples spread
  around them (von-Mises-like: centre + Gaussian noise, renormalised), so that accuracy is neither 0
  nor 100 %. For each ``n``: fit on 20 examples per label, then learn 2 more per label in micro-batches
  of 64 (``learn_embeddings``), then predict (``rank_embeddings``, top 5) -- with the time of each, the
  accuracy on 5 held-out texts per label, the experts' weight bytes and the process's RSS.
- **Pauses** (CLINC150, O*NET): how long the model thread is held by adding a class and by young
  labels' re-solves, for each ``young_solve`` mode (``--pause-datasets``).

Run from the repository root::

    python bench/bench_scale.py                 # O*NET k=10 and all, synthetic 150..5000: ~50 min
    python bench/bench_scale.py --quick         # O*NET k=10, synthetic 150..1000: under 5 minutes

Writes ``bench/results/scale.md`` (``scale_quick.md``) and ``scale_classes.png``.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    RESULTS_DIR,
    CachedArrayEmbedder,
    dataset_embeddings,
    k_shot_indices,
    markdown_table,
    write_report,
)
from driftlabel.models import ExpertSettings, RedClassifier

EMBEDDER = CachedArrayEmbedder("all-MiniLM-L6-v2", 384)


def _rss_mib() -> float:
    """Peak resident memory of this process so far (MiB): ru_maxrss is in KiB on Linux."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _weight_bytes(clf: RedClassifier) -> int:
    """Bytes of the experts' weights and intercepts: what grows with the number of labels."""
    total = 0
    for e in clf._experts:
        for name in ("coef_", "intercept_"):
            a = getattr(e, name, None)
            if isinstance(a, np.ndarray):
                total += a.nbytes
    return total


def _top1(clf: RedClassifier, X: np.ndarray) -> np.ndarray:
    return np.asarray(clf.labels, dtype=object)[np.argmax(clf.log_odds(X), axis=1)]


def _predict_rate(clf: RedClassifier, X: np.ndarray, batch: int = 256, repeats: int = 2) -> float:
    """Texts/s of ``rank_embeddings`` (full Ranking, top 5) in micro-batches, best of ``repeats``."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for lo in range(0, len(X), batch):
            clf.rank_embeddings(X[lo : lo + batch], top_k=5)
        best = min(best, time.perf_counter() - t0)
    return len(X) / best


def onet_rows(
    ks: Sequence[int | None], subset_sizes: Sequence[int | None] = (8,), progress: bool = True
) -> list[dict[str, Any]]:
    """O*NET at each k and subset size (None: one expert over every label), and LogisticRegression, all on
    the same cached embeddings."""
    from sklearn.linear_model import LogisticRegression

    data = dataset_embeddings(EMBEDDER, "onet", ["train", "test"], progress=False)
    train, test = data["train"], data["test"]
    n_labels = len(set(train.y.tolist()))
    rows: list[dict[str, Any]] = []
    for k in ks:
        sub = train.take(k_shot_indices(train.y, k, seed=0))
        lr: dict[str, float] = {}
        for C in (10.0, 1.0):
            t0 = time.perf_counter()
            model = LogisticRegression(C=C, max_iter=3000).fit(sub.X, sub.y)
            lr[f"lr{C:g}_fit_s"] = time.perf_counter() - t0
            lr[f"lr{C:g}_acc"] = float(np.mean(model.predict(test.X) == test.y))
        for size in subset_sizes:
            settings = ExpertSettings(subset_size=size or n_labels)
            row: dict[str, Any] = {
                "k": "all" if k is None else str(k),
                "n_train": len(sub),
                "subset_size": "all" if size is None else str(size),
                **lr,
            }
            t0 = time.perf_counter()
            clf = RedClassifier(settings=settings).fit_embeddings(sub.X, sub.texts, sub.y)
            row["red_fit_s"] = time.perf_counter() - t0
            row["red_acc"] = float(np.mean(_top1(clf, test.X) == test.y))
            row["experts"] = len(clf._experts)
            row["predict_per_s"] = _predict_rate(clf, test.X)
            t0 = time.perf_counter()  # a second fit in the same process: UMAP's numba code is compiled now
            RedClassifier(settings=settings).fit_embeddings(sub.X, sub.texts, sub.y)
            row["red_fit2_s"] = time.perf_counter() - t0
            rows.append(row)
            if progress:
                print(
                    f"onet k={row['k']:>3s} subsets of {row['subset_size']}: "
                    f"red {100 * row['red_acc']:.1f} % "
                    f"fit {row['red_fit_s']:.1f} s (again {row['red_fit2_s']:.1f} s), "
                    f"{row['predict_per_s']:,.0f} texts/s; LR C=10 {100 * row['lr10_acc']:.1f} % fit "
                    f"{row['lr10_fit_s']:.1f} s, C=1 {100 * row['lr1_acc']:.1f} %",
                    flush=True,
                )
    return rows


def pause_rows(
    datasets: Sequence[str],
    modes: Sequence[str] = ("columns", "all"),
    held_out: int = 10,
    shots: int = 5,
    chunks: int = 12,
    k: int = 10,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """The model thread's pauses for structural learning, per ``young_solve`` mode.

    ``held_out`` labels (drawn with seed 0) are left out of a ``k``-shot fit of the others (one expert, the
    defaults); then each is added with ``add_class_embeddings`` and ``shots`` training examples (timed
    one by one), and ``chunks`` chunks of ``learn_chunk`` streamed rows of the known labels are learned
    (timed: the chunks whose labels cross a young milestone re-solve). Background re-solves are off here
    (``resolve_every`` 0), so every second timed is the model thread's own. Recall: the added labels'
    test texts given their label; accuracy: the whole test split after.
    """
    rows: list[dict[str, Any]] = []
    for name in datasets:
        data = dataset_embeddings(EMBEDDER, name, ["train", "test"], progress=False)
        train, test = data["train"], data["test"]
        labels = np.unique(train.y.astype(str))
        rng = np.random.default_rng(0)
        new = set(rng.choice(labels, size=held_out, replace=False).tolist())
        old = ~np.isin(train.y.astype(str), list(new))
        seed_idx = np.flatnonzero(old)[k_shot_indices(train.y[old], k, seed=0)]
        rest = np.setdiff1d(np.flatnonzero(old), seed_idx)
        stream = rng.permutation(rest)
        for mode in modes:
            settings = ExpertSettings.model_validate(
                {"subset_size": len(labels), "resolve_every": 0, "young_solve": mode}
            )
            sub = train.take(seed_idx)
            clf = RedClassifier(settings=settings).fit_embeddings(sub.X, sub.texts, sub.y)
            add_s: list[float] = []
            for lab in sorted(new):
                idx = np.flatnonzero(train.y == lab)[:shots]
                t0 = time.perf_counter()
                clf.add_class_embeddings(lab, train.X[idx], [train.texts[i] for i in idx])
                add_s.append(time.perf_counter() - t0)
            chunk = settings.learn_chunk
            chunk_s: list[float] = []
            for c in range(chunks):
                idx = stream[c * chunk : (c + 1) * chunk]
                t0 = time.perf_counter()
                clf.learn_embeddings(train.X[idx], [train.texts[i] for i in idx], train.y[idx])
                chunk_s.append(time.perf_counter() - t0)
            top = _top1(clf, test.X)
            on_new = np.isin(test.y.astype(str), list(new))
            row: dict[str, Any] = {
                "dataset": name,
                "k": k,
                "stored": len(seed_idx),
                "labels": len(labels),
                "mode": mode,
                "add_median_s": float(np.median(add_s)),
                "add_max_s": float(np.max(add_s)),
                "chunk_median_s": float(np.median(chunk_s)),
                "chunk_max_s": float(np.max(chunk_s)),
                "new_recall": float(np.mean(top[on_new] == test.y[on_new])),
                "new_texts": int(on_new.sum()),
                "acc": float(np.mean(top == test.y)),
            }
            rows.append(row)
            if progress:
                print(
                    f"pauses {name} young_solve={mode}: add_class {row['add_median_s']:.2f} / "
                    f"{row['add_max_s']:.2f} s, chunk {row['chunk_median_s']:.3f} / "
                    f"{row['chunk_max_s']:.2f} s, "
                    f"new-label recall {100 * row['new_recall']:.1f} %, accuracy {100 * row['acc']:.2f} %",
                    flush=True,
                )
    return rows


def synthetic(
    n: int, per_label: int, dim: int = 384, noise: float = 0.18, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``per_label`` unit vectors around each of ``n`` random unit centres (labels ``c00000``...)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    X = np.repeat(centres, per_label, axis=0)
    X += rng.standard_normal(X.shape).astype(np.float32) * noise
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    y = np.repeat(np.array([f"c{i:05d}" for i in range(n)], dtype=object), per_label)
    return X, y


def synthetic_rows(sizes: Sequence[int], progress: bool = True) -> list[dict[str, Any]]:
    """Fit (20/label), learn (2/label, micro-batches of 64), predict (5/label held out) at each size.

    20 fitted examples put every label past ``young_examples``, so learning is the steady state: gradient
    steps on the model thread plus warm re-solves on the background thread. The two are timed apart, since
    they scale differently: *step rows/s* is the model thread's cost (a copy with re-solves off), *re-solve
    s* one warm re-solve of every expert after the learning, and *burst rows/s* learning as fast as rows
    come, where the model thread waits at each swap point for a re-solve still running. A re-solve starts
    every ``max(resolve_every, resolve_growth x stored)`` rows and must be done ``resolve_lag`` x that many
    rows later, so re-solves keep up (no wait at a swap) while accepted rows arrive slower than
    *sustained rows/s* = that many rows / re-solve s.
    """
    from driftlabel.models.resolve import start_resolve

    rows: list[dict[str, Any]] = []
    for n in sizes:
        X, y = synthetic(n, 27, seed=n)
        per = np.arange(len(y)) % 27
        fit_m, learn_m, test_m = per < 20, (per >= 20) & (per < 22), per >= 22
        texts = [f"t{i}" for i in range(len(y))]
        rss0 = _rss_mib()
        settings = ExpertSettings()
        clf = RedClassifier(settings=settings)
        t0 = time.perf_counter()
        fi = np.flatnonzero(fit_m)
        clf.fit_embeddings(X[fi], [texts[i] for i in fi], y[fi].tolist())
        fit_s = time.perf_counter() - t0
        li = np.random.default_rng(1).permutation(np.flatnonzero(learn_m))
        step = clf.copy()
        step.settings = settings.model_copy(update={"resolve_every": 0})
        learn_s = {}
        for key, model in (("step", step), ("burst", clf)):
            t0 = time.perf_counter()
            for lo in range(0, len(li), 64):
                b = li[lo : lo + 64]
                model.learn_embeddings(X[b], [texts[i] for i in b], y[b].tolist())
            model.settle()
            learn_s[key] = time.perf_counter() - t0
        del step
        t0 = time.perf_counter()
        start_resolve(clf, 0, 0, background=False, seed=(0,))
        resolve_s = time.perf_counter() - t0
        trigger = clf._resolve_trigger()
        ti = np.flatnonzero(test_m)
        row = {
            "classes": n,
            "experts": len(clf._experts),
            "fit_s": fit_s,
            "step_per_s": len(li) / learn_s["step"],
            "learn_per_s": len(li) / learn_s["burst"],
            "resolve_s": resolve_s,
            "sustained_per_s": settings.resolve_lag * trigger / resolve_s,
            "predict_per_s": _predict_rate(clf, X[ti]),
            "acc": float(np.mean(_top1(clf, X[ti]) == y[ti])),
            "weights_mib": _weight_bytes(clf) / 2**20,
            "rss_mib": _rss_mib(),
            "rss_growth_mib": _rss_mib() - rss0,
        }
        rows.append(row)
        if progress:
            print(
                f"synthetic {n:5d} classes ({row['experts']} experts): fit {fit_s:.1f} s, learn step "
                f"{row['step_per_s']:,.0f} rows/s, re-solve {resolve_s:.1f} s (keeps up below "
                f"{row['sustained_per_s']:,.0f} rows/s; burst {row['learn_per_s']:,.0f} rows/s), predict "
                f"{row['predict_per_s']:,.0f} texts/s, acc {100 * row['acc']:.1f} %, weights "
                f"{row['weights_mib']:.1f} MiB, peak RSS {row['rss_mib']:.0f} MiB",
                flush=True,
            )
        del clf
    return rows


def plot(rows: list[dict[str, Any]], name: str) -> Path:
    """Fit s, learn rows/s, predict texts/s and weight MiB against the number of classes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["classes"] for r in rows]
    fig, axes = plt.subplots(1, 5, figsize=(17, 3.4))
    panels = [
        ("fit_s", "fit (s), 20 examples/class"),
        ("step_per_s", "learn step (rows/s), batches of 64"),
        ("resolve_s", "warm re-solve (s), background"),
        ("predict_per_s", "predict (texts/s), batches of 256"),
        ("weights_mib", "expert weights (MiB)"),
    ]
    for ax, (key, title) in zip(axes, panels, strict=True):
        ax.plot(xs, [r[key] for r in rows], marker="o")
        if key == "predict_per_s":
            ax.axhline(20000, color="grey", ls="--", lw=1)  # the predict bar
        ax.set_xscale("log")
        ax.set_xticks(xs, [f"{x:,}" for x in xs], fontsize=8)
        ax.minorticks_off()
        ax.set_xlabel("classes")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="O*NET k=10 and synthetic up to 1,000 classes")
    ap.add_argument("--k", nargs="*", help="O*NET seed examples per label (numbers or 'all')")
    ap.add_argument("--sizes", nargs="*", type=int, help="synthetic label counts")
    ap.add_argument(
        "--subset-sizes",
        nargs="*",
        default=["8"],
        help="O*NET: labels per expert to compare (numbers, or 'all' for one expert over every label)",
    )
    ap.add_argument("--skip", nargs="*", default=[], choices=["onet", "synthetic", "pauses"])
    ap.add_argument(
        "--pause-datasets",
        nargs="*",
        default=None,
        help="datasets for the model-thread pauses part (default clinc150 onet; --quick: clinc150)",
    )
    ap.add_argument("--pause-k", type=int, default=10, help="pauses part: seed examples per label fitted")
    ap.add_argument("--note", default="", help="a line added to the report")
    ap.add_argument("--name", default=None, help="report name under bench/results (default scale[_quick])")
    args = ap.parse_args(argv)
    ks_arg = args.k or (["10"] if args.quick else ["10", "all"])
    ks = [None if k == "all" else int(k) for k in ks_arg]
    sizes = args.sizes or ([150, 500, 1000] if args.quick else [150, 500, 1000, 2000, 5000])
    name = args.name or ("scale_quick" if args.quick else "scale")
    command = "python bench/bench_scale.py " + " ".join(sys.argv[1:] if argv is None else argv)
    parts = [f"Command: `{command}`"]
    if args.note:
        parts.append(args.note)
    if "onet" not in args.skip:
        sizes_o = [None if x == "all" else int(x) for x in args.subset_sizes]
        rows = onet_rows(ks, sizes_o)
        table = markdown_table(
            [
                "k", "train", "labels per expert", "experts", "R.E.D. %", "LR C=10 %", "LR C=1 %",
                "R.E.D. - LR C=10",
                "R.E.D. fit s (first in process)", "R.E.D. fit s (again)", "LR C=10 fit s",
                "R.E.D. predict texts/s",
            ],
            [
                [
                    r["k"], r["n_train"], r["subset_size"], r["experts"], f"{100 * r['red_acc']:.1f}",
                    f"{100 * r['lr10_acc']:.1f}", f"{100 * r['lr1_acc']:.1f}",
                    f"{100 * (r['red_acc'] - r['lr10_acc']):+.1f}", f"{r['red_fit_s']:.1f}",
                    f"{r['red_fit2_s']:.1f}", f"{r['lr10_fit_s']:.1f}", f"{r['predict_per_s']:,.0f}",
                ]
                for r in rows
            ],
        )  # fmt: skip
        parts.append(
            "## O*NET (923 labels), MiniLM embeddings\n\nBars (issue 9): fit ≤ 60 s, predict ≥ 20,000 "
            "texts/s, accuracy ≥ LogisticRegression. The first fit in a process includes UMAP's numba "
            "compilation (label subsets); a worker pays it once at start-up. *labels per expert* `all`: "
            "one expert over every label (`DRIFTLABEL_EXPERTS_SUBSET_SIZE` ≥ the label count).\n\n" + table
        )
    if "pauses" not in args.skip:
        names = args.pause_datasets or (["clinc150"] if args.quick else ["clinc150", "onet"])
        rows = pause_rows(names, k=args.pause_k)
        table = markdown_table(
            ["dataset", "labels", "rows fitted", "young_solve", "add_class median / worst s",
             "chunk median / worst s", "added labels' recall %", "test accuracy %"],
            [
                [
                    r["dataset"], r["labels"], r["stored"], r["mode"],
                    f"{r['add_median_s']:.2f} / {r['add_max_s']:.2f}",
                    f"{r['chunk_median_s']:.3f} / {r['chunk_max_s']:.2f}",
                    f"{100 * r['new_recall']:.1f} (of {r['new_texts']})", f"{100 * r['acc']:.2f}",
                ]
                for r in rows
            ],
        )  # fmt: skip
        parts.append(
            "## Model-thread pauses: adding a class, young labels' re-solves\n\n"
            f"10 labels held out of a {args.pause_k}-shot fit of the others (one expert, defaults); each "
            "added with 5 "
            "examples (`add_class_embeddings`, timed), then 12 chunks of 16 streamed rows of the known "
            "labels learned (timed; a chunk whose labels reach a young milestone re-solves them). "
            "Background re-solves off, so each second is the model thread's, i.e. a labelling pause. "
            "`young_solve`: `columns` moves only the young labels' weights against the others' fixed "
            "log-sum-exp, `all` every column of their expert.\n\n" + table
        )
    if "synthetic" not in args.skip:
        rows = synthetic_rows(sizes)
        table = markdown_table(
            ["classes", "experts", "fit s", "learn step rows/s", "re-solve s", "sustained rows/s",
             "burst rows/s", "predict texts/s", "accuracy %", "weights MiB", "peak RSS MiB"],
            [
                [
                    r["classes"], r["experts"], f"{r['fit_s']:.1f}", f"{r['step_per_s']:,.0f}",
                    f"{r['resolve_s']:.1f}", f"{r['sustained_per_s']:,.0f}", f"{r['learn_per_s']:,.0f}",
                    f"{r['predict_per_s']:,.0f}", f"{100 * r['acc']:.1f}", f"{r['weights_mib']:.1f}",
                    f"{r['rss_mib']:.0f}",
                ]
                for r in rows
            ],
        )  # fmt: skip
        png = plot(rows, f"{name}_classes")
        parts.append(
            "## Synthetic label sets (384-d, 20 examples/class to fit, 2 more learned, 5 held out)\n\n"
            "Centres are random unit vectors, examples the centre plus Gaussian noise (renormalised); "
            "the same settings as the service's defaults (one expert up to 1,000 labels, subsets of at most "
            "1,000 above). *learn step*: the model thread's gradient steps (re-solves off); *re-solve*: one "
            "warm re-solve of every expert, on the background thread; *sustained*: the accepted rows per "
            "second below which each re-solve is done by its swap point (`resolve_lag` x its trigger rows "
            "/ re-solve s), above it the model thread waits at the swap; *burst*: learning the 2 rows per "
            "label as fast as they come, waits included. Peak RSS is the process's high-water mark (it "
            "includes the earlier, smaller sizes).\n\n" + table + f"\n\n![scaling]({png.name})"
        )
    path = write_report(name, "Scale in classes: O*NET and synthetic label sets", "\n\n".join(parts))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
