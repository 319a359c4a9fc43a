"""Benchmark of the R.E.D. core on cached MiniLM embeddings: accuracy vs baselines, out-of-scope, speed.

For CLINC150, BANKING77 and O*NET and k in (5, 10, 30, all) seed examples per label, test accuracy of

- ``red``: :class:`RedClassifier` (subsets of 8 + noise experts, product-of-experts ranking), top-1 label;
- ``flat``: one :class:`SoftmaxExpert` over all labels (the same learner, no subsets);
- ``sklearn``: scikit-learn ``LogisticRegression(C=10)`` (lbfgs), the reference: the same L2 strength as
  the experts' default ``l2=0.1``, and the setting behind the reference figures in PRODUCT.md;
- ``sklearn-c1``: ``LogisticRegression(C=1.0)``, scikit-learn's default, for comparison.

Then CLINC150 out-of-scope recall / in-scope accuracy, and speeds at 150 classes: fit, incremental learn
(micro-batches of 64 through ``learn_embeddings``, with the accuracy after streaming the whole training
set), predict (``rank_embeddings``: full Ranking; ``log_odds``: the matmul alone), and river's expert.
Run from the repository root (embeddings come from ``bench/common.py``'s cache; compute them first with
``python -m bench.common``)::

    python bench/bench_models.py                       # everything, writes bench/results/models.md
    python bench/bench_models.py --datasets clinc150 --k 10 --variants red-sampled flat sklearn
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    CachedArrayEmbedder,
    Embedded,
    dataset_embeddings,
    k_shot_indices,
    markdown_table,
    write_report,
)
from driftlabel.models import ExpertSettings, RedClassifier, RiverExpert, SoftmaxExpert

KS: tuple[int | None, ...] = (5, 10, 30, None)
EMBEDDER = CachedArrayEmbedder("all-MiniLM-L6-v2", 384)


def _k_name(k: int | None) -> str:
    return "all" if k is None else str(k)


def red_factory(**overrides: Any) -> Callable[[Embedded], Any]:
    def fit(train: Embedded) -> Any:
        clf = RedClassifier(settings=ExpertSettings(**overrides))
        return clf.fit_embeddings(train.X, train.texts, train.y)

    return fit


def red_predict(clf: RedClassifier, X: np.ndarray) -> np.ndarray:
    """Top-1 among the labels (out-of-scope is measured separately)."""
    return np.asarray(clf.labels, dtype=object)[np.argmax(clf.log_odds(X), axis=1)]


def flat_fit(train: Embedded) -> SoftmaxExpert:
    return SoftmaxExpert(l2=0.1, max_iter=1000).fit_many(train.X, train.y)


def sklearn_factory(C: float) -> Callable[[Embedded], Any]:
    def fit(train: Embedded) -> Any:
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=C, max_iter=3000).fit(train.X, train.y)

    return fit


VARIANTS: dict[str, tuple[Callable[[Embedded], Any], Callable[[Any, np.ndarray], np.ndarray]]] = {
    "red": (red_factory(), red_predict),
    "red-subsets8": (red_factory(subset_size=8), red_predict),  # the paper's design, the default until 12-03
    "red-sampled": (red_factory(subset_size=8, noise_mode="sampled"), red_predict),
    "flat": (flat_fit, lambda m, X: m.predict_many(X)),
    "sklearn": (sklearn_factory(10.0), lambda m, X: m.predict(X)),
    "sklearn-c1": (sklearn_factory(1.0), lambda m, X: m.predict(X)),
}


def accuracy_table(
    datasets: Sequence[str], ks: Sequence[int | None], variants: Sequence[str]
) -> tuple[str, list[dict[str, Any]]]:
    rows: list[dict[str, Any]] = []
    for name in datasets:
        data = dataset_embeddings(EMBEDDER, name, ["train", "test"], progress=False)
        train, test = data["train"], data["test"]
        for k in ks:
            sub = train.take(k_shot_indices(train.y, k, seed=0))
            row: dict[str, Any] = {"dataset": name, "k": _k_name(k), "n_train": len(sub)}
            for v in variants:
                fit, predict = VARIANTS[v]
                t0 = time.perf_counter()
                model = fit(sub)
                fit_s = time.perf_counter() - t0
                acc = float(np.mean(predict(model, test.X) == test.y))
                row[v] = acc
                row[f"{v}_fit_s"] = fit_s
                print(
                    f"{name:10s} k={_k_name(k):>3s} {v:12s} acc {100 * acc:5.1f}%  fit {fit_s:6.1f}s",
                    flush=True,
                )
            rows.append(row)
    header = ["dataset", "k", "train"] + [f"{v} %" for v in variants] + [f"{v} fit s" for v in variants]
    if "red" in variants and "sklearn" in variants:
        header.append("red - sklearn")
    table = []
    for r in rows:
        line = [r["dataset"], r["k"], r["n_train"]] + [f"{100 * r[v]:.1f}" for v in variants]
        line += [f"{r[f'{v}_fit_s']:.1f}" for v in variants]
        if "red" in variants and "sklearn" in variants:
            line.append(f"{100 * (r['red'] - r['sklearn']):+.1f}")
        table.append(line)
    return markdown_table(header, table), rows


def oos_table(ks: Sequence[int | None], grown: Sequence[int] = (1500, 4000)) -> str:
    """In-scope accuracy, in-scope texts flagged and out-of-scope texts caught for each ``oos`` mode at each
    k; then at 10 seeds per label plus ``grown`` random training rows, 5 % of them under a wrong label: a
    store like the one the loop builds (it accepts ~3,800 rows at 0.10 calls per item), i.e. how the
    detectors improve as the stream teaches."""
    data = dataset_embeddings(EMBEDDER, "clinc150", ["train", "test", "oos_test"], progress=False)
    train, test, oos = data["train"], data["test"], data["oos_test"]
    stores: list[tuple[str, Embedded, np.ndarray]] = []
    for k in ks:
        idx = k_shot_indices(train.y, k, seed=0)
        stores.append((_k_name(k), train.take(idx), idx))
    seeds = k_shot_indices(train.y, 10, seed=0)
    rng = np.random.default_rng(0)
    for extra in grown:
        add = rng.choice(np.setdiff1d(np.arange(len(train.y)), seeds), extra, replace=False)
        idx = np.concatenate([seeds, add])
        sub = train.take(idx)
        wrong = np.zeros(len(sub.y), dtype=bool)
        wrong[len(seeds) :] = rng.random(extra) < 0.05
        sub.y[wrong] = rng.choice(np.unique(train.y), int(wrong.sum()))
        stores.append((f"10 + {extra:,} (5 % wrong)", sub, idx))
    lines = []
    for (name, sub, idx), mode in [(st, mode) for st in stores for mode in ("noise", "nearest", "centroid")]:
        clf = red_factory(oos=mode)(sub)
        r_in, r_out = clf.rank_embeddings(test.X), clf.rank_embeddings(oos.X)
        unseen = np.setdiff1d(np.arange(len(train.y)), idx)  # drawn like the store's rows
        held = clf.rank_embeddings(train.X[unseen]).out_of_scope.mean() if len(unseen) else None
        in_acc = float(np.mean(np.array(r_in.labels, dtype=object) == test.y))  # flagged OOS counts as wrong
        lines.append(
            [
                name,
                mode,
                f"{100 * in_acc:.1f}",
                f"{100 * r_in.out_of_scope.mean():.1f}",
                f"{100 * r_out.out_of_scope.mean():.1f}",
                "-" if held is None else f"{100 * held:.1f}",
                f"{np.median(r_in.entropy):.2f} / {np.median(r_out.entropy):.2f}",
            ]
        )
        print(
            f"clinc150 k={name} oos={mode} in-scope acc {lines[-1][2]}%  in-scope flagged "
            f"{lines[-1][3]}%  OOS recall {lines[-1][4]}%",
            flush=True,
        )
    return markdown_table(
        [
            "k",
            "oos mode",
            "in-scope accuracy % (OOS flag = wrong)",
            "in-scope flagged OOS %",
            "OOS recall %",
            "unstored train texts flagged %",
            "median entropy in / out",
        ],
        lines,
    )


def _best(fn: Callable[[], Any], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def speed_table(repeats: int = 3, river_items: int = 2000) -> str:
    data = dataset_embeddings(EMBEDDER, "clinc150", ["train", "test"], progress=False)
    train, test = data["train"], data["test"]
    lines: list[list[str]] = []
    # fit (full train, 150 classes)
    t0 = time.perf_counter()
    full = red_factory()(train)
    lines.append(
        ["fit, 15,000 examples, 150 labels (stratified noise)", f"{time.perf_counter() - t0:.1f} s", "-"]
    )
    # predict
    X = np.concatenate([test.X] * 5)  # 22,500 texts
    full.rank_embeddings(X[:10])
    calls: list[tuple[str, Callable[[np.ndarray], Any]]] = [
        ("predict: rank_embeddings (full Ranking, top 5)", full.rank_embeddings),
        ("predict: log_odds (the one matmul)", full.log_odds),
    ]
    for what, fn in calls:
        for bs in (256, len(X)):

            def run(fn: Callable[[np.ndarray], Any] = fn, bs: int = bs) -> None:
                for s in range(0, len(X), bs):
                    fn(X[s : s + bs])

            dt = _best(run, repeats)
            lines.append([f"{what}, micro-batch {bs}", f"{len(X) / dt:,.0f} texts/s", "≥ 20,000"])
            print(lines[-1], flush=True)
    # learn: start from 10-shot, stream the rest of the training set in micro-batches of 64
    idx10 = k_shot_indices(train.y, 10, seed=0)
    rest = np.setdiff1d(np.arange(len(train)), idx10)
    rest = np.random.default_rng(0).permutation(rest)
    clf = red_factory()(train.take(idx10))
    acc0 = float(np.mean(red_predict(clf, test.X) == test.y))
    t0 = time.perf_counter()
    for s in range(0, len(rest), 64):
        b = rest[s : s + 64]
        clf.learn_embeddings(train.X[b], [train.texts[i] for i in b], train.y[b])
    dt = time.perf_counter() - t0
    acc1 = float(np.mean(red_predict(clf, test.X) == test.y))
    lines.append(
        [
            f"learn: learn_embeddings, micro-batches of 64, {len(rest):,} examples",
            f"{len(rest) / dt:,.0f} examples/s",
            "≥ 2,000",
        ]
    )
    lines.append(
        ["accuracy: 10-shot fit → after streaming the rest", f"{100 * acc0:.1f} % → {100 * acc1:.1f} %", "-"]
    )
    t0 = time.perf_counter()
    clf.refit()
    lines.append(
        [
            "refit() from the store after streaming",
            f"{time.perf_counter() - t0:.1f} s, "
            f"{100 * float(np.mean(red_predict(clf, test.X) == test.y)):.1f} %",
            "-",
        ]
    )
    print(lines[-3:], flush=True)
    # river: one expert (8 labels + noise), per-item dicts
    sub = [lab for lab in sorted(set(train.y.tolist()))[:8]]
    mask = np.isin(train.y, sub)
    y = np.where(mask, train.y, "__noise__")
    order = np.random.default_rng(0).permutation(len(y))[:river_items]
    rx = RiverExpert()
    t0 = time.perf_counter()
    rx.learn_many(train.X[order], y[order])
    dt = time.perf_counter() - t0
    lines.append(
        [
            f"river SoftmaxRegression expert (9 classes), learn_many of {river_items}",
            f"{river_items / dt:,.0f} examples/s",
            "≥ 2,000",
        ]
    )
    sx = SoftmaxExpert()
    dt = _best(
        lambda: [
            sx.learn_many(train.X[order[s : s + 64]], y[order[s : s + 64]]) for s in range(0, len(order), 64)
        ],
        repeats,
    )
    lines.append(
        [
            f"numpy SoftmaxExpert (9 classes), learn_many of {river_items} in batches of 64",
            f"{river_items / dt:,.0f} examples/s",
            "≥ 2,000",
        ]
    )
    print(lines[-2:], flush=True)
    return markdown_table(
        ["what (CLINC150, 150 labels, 384-d MiniLM embeddings given)", "measured", "bar"], lines
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--datasets", nargs="*", default=["clinc150", "banking77", "onet"])
    parser.add_argument("--k", nargs="*", default=["5", "10", "30", "all"])
    parser.add_argument(
        "--variants",
        nargs="*",
        default=["red", "red-subsets8", "sklearn", "sklearn-c1"],
        choices=list(VARIANTS),
    )
    parser.add_argument("--skip", nargs="*", default=[], choices=["accuracy", "oos", "speed"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--no-report", action="store_true", help="print only; do not write bench/results/models.md"
    )
    parser.add_argument("--name", default="models", help="report name under bench/results")
    args = parser.parse_args(argv)
    ks = [None if k == "all" else int(k) for k in args.k]
    parts = []
    if "accuracy" not in args.skip:
        table, _ = accuracy_table(args.datasets, ks, args.variants)
        parts.append(
            "## Test accuracy by seed examples per label (k)\n\n"
            "`red` = R.E.D. experts (top-1 label), `flat` = one softmax over all labels (same learner), "
            "`sklearn` = LogisticRegression(C=10, lbfgs; the PRODUCT.md reference setting), `sklearn-c1` = "
            "LogisticRegression(C=1). Seed 0 k-shot draw.\n\n" + table
        )
    if "oos" not in args.skip:
        parts.append(
            "## CLINC150 out-of-scope (`oos` = noise: every expert says noise; nearest: the nearest stored "
            "example below the 5 % quantile of the store's leave-one-out similarities; centroid: the mean "
            "of that similarity and the one to the nearest label centroid, calibrated the same way; "
            "default off). *10 + n*: 10 seeds per label and n random training rows, 5 % of them under a "
            "wrong label; *unstored train texts flagged*: the training texts not in the store, drawn like "
            "its rows (the leave-one-out calibration's own population; CLINC150's val and test texts sit "
            "further from the training texts than these do)\n\n" + oos_table(ks)
        )
    if "speed" not in args.skip:
        parts.append(
            f"## Speed (best of {args.repeats}; one process, 2 shared cores)\n\n" + speed_table(args.repeats)
        )
    body = "\n\n".join(parts)
    print(body)
    if not args.no_report:
        path = write_report(args.name, "R.E.D. core: accuracy and speed", body)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
