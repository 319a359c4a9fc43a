"""What a stream can reach at all: an oracle upper bound for the loop's accuracy at a judge budget.

Issue 9 asks for CLINC150 >= 95.0 % and BANKING77 >= 92.0 % with <= 0.10 judge calls per streamed item.
``bench_loop`` measures what the loop reaches; this measures what *any* loop of that shape could reach on
the same embeddings, by idealising everything the real one pays for:

- every judge call returns the true label (no errors, no recursion: one call, one label);
- the learner is scikit-learn's LogisticRegression(C=10) (the reference), refitted every ``--every``
  streamed items on the seeds plus every label bought so far;
- ``stream``: the budget is spent on the least-margin items of each block of ``--every`` items, chosen by
  the model of the block's start (a stream sees each item once, in order);
- ``pool``: margin sampling over the whole train split, visible from the start, in 5 rounds (what a
  stream never has: it cannot choose among items that have not arrived);
- ``random``: the same number of items, picked at random;
- ``+ self-training``: after the last pick, every unbought streamed item labelled by the model and learned
  at weight 0.3 (one round), as ``ExpertSettings.self_training`` does.

Seeds are the same 10 per class and the stream order the same as ``bench_loop``'s stationary scenario.

    python bench/bench_ceiling.py --quick       # CLINC150 at 0.10 calls/item (one point: ~2 min)
    python bench/bench_ceiling.py               # CLINC150 + BANKING77 at 0.05 / 0.10 / 0.20 calls/item
    python bench/bench_ceiling.py --incremental # recovery after new classes (report: ceiling_incr)

``--incremental`` asks the same of the class-incremental stream's recovery: ``bench_loop``'s draw (a third
of the classes absent from the seeds and the first half), and at the change every new class given
``--new-examples`` true examples at once (more than the service has: generated examples for half of them,
the other half still to be discovered); then the budget's least-margin items bought as above, the model
refitted every 100 items for 3,000 items from the change (every 500 elsewhere), each item predicted by the
model of its block before its label is bought (the experts' first label). Recovery is ``bench_loop``'s rule:
the rolling 500-item accuracy back within 2 points of the 500 items before the change.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `bench.common`, however this is run

from bench.bench_loop import EMBEDDER, _stream_order, recovery_items
from bench.common import dataset_embeddings, k_shot_indices, line_plot, markdown_table, write_report

SELF_TRAINING_WEIGHT = 0.3


def _fit(X: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=10.0, max_iter=1000).fit(X, y, sample_weight=w)


def _margin(model: Any, X: np.ndarray) -> np.ndarray:
    P = model.predict_proba(X)
    top2 = np.partition(P, -2, axis=1)[:, -2:]
    return np.abs(top2[:, 1] - top2[:, 0])


def _score(model: Any, Xt: np.ndarray, yt: np.ndarray) -> float:
    return float(np.mean(model.predict(Xt) == yt))


def _with_self_training(
    X: np.ndarray, y: np.ndarray, bought: np.ndarray, streamed: np.ndarray, model: Any
) -> Any:
    """One round of pseudo-labels on every streamed item nobody paid for, at weight 0.3."""
    rest = np.setdiff1d(streamed, bought)
    Xa = np.concatenate([X[bought], X[rest]])
    ya = np.concatenate([y[bought], model.predict(X[rest])])
    w = np.concatenate([np.ones(len(bought)), np.full(len(rest), SELF_TRAINING_WEIGHT)])
    return _fit(Xa, ya, w)


def ceiling(
    data: dict[str, Any], budget: float, every: int, seed: int, say: Any = print
) -> dict[str, float | int]:
    """Test accuracy of each idealised selection at ``budget`` true labels per streamed item."""
    X, y = data["train"].X, np.asarray(data["train"].labels, dtype=object).astype(str)
    Xt, yt = data["test"].X, np.asarray(data["test"].labels, dtype=object).astype(str)
    rng = np.random.default_rng(seed)
    seeds = k_shot_indices(y, 10, seed=seed)
    order, _ = _stream_order(y, seeds, "stationary", rng, set())
    out: dict[str, float | int] = {}
    # stream: each block's least-margin items, by the model of the block's start
    bought = list(seeds.tolist())
    for lo in range(0, len(order), every):
        block = order[lo : lo + every]
        model = _fit(X[bought], y[bought])
        k = min(len(block), max(1, round(budget * len(block))))
        bought += block[np.argsort(_margin(model, X[block]), kind="stable")[:k]].tolist()
        say(f"  stream {lo + len(block)}/{len(order)} items, {len(bought) - len(seeds)} labels")
    b = np.array(bought)
    model = _fit(X[b], y[b])
    n = len(b) - len(seeds)
    out["labels"] = n
    out["stream"] = _score(model, Xt, yt)
    out["stream_self"] = _score(_with_self_training(X, y, b, order, model), Xt, yt)
    # pool: the whole split visible from the start, 5 rounds of margin sampling
    pool = list(seeds.tolist())
    for r in range(5):
        model = _fit(X[pool], y[pool])
        cand = np.setdiff1d(order, np.array(pool))
        take = n // 5 + (1 if r < n % 5 else 0)
        pool += cand[np.argsort(_margin(model, X[cand]), kind="stable")[:take]].tolist()
        say(f"  pool round {r + 1}/5")
    p = np.array(pool)
    model = _fit(X[p], y[p])
    out["pool"] = _score(model, Xt, yt)
    out["pool_self"] = _score(_with_self_training(X, y, p, order, model), Xt, yt)
    # random picks of the same count
    rnd = np.concatenate([seeds, rng.choice(order, size=n, replace=False)])
    model = _fit(X[rnd], y[rnd])
    out["random"] = _score(model, Xt, yt)
    out["random_self"] = _score(_with_self_training(X, y, rnd, order, model), Xt, yt)
    return out


def _plot(
    name: str, series: dict[str, tuple[Sequence[float], Sequence[float]]], x: str, y: str, title: str
) -> str:
    """Write ``<name>.png`` and return the markdown line that shows it."""
    png = line_plot(name, series, xlabel=x, ylabel=y, title=title)
    return f"![{title}]({png.name})"


@dataclass(frozen=True)
class IncrementalBound:
    """What the oracle reached on one class-incremental stream (accuracies as fractions)."""

    before: float  # the 500 items before the change
    after_1000: float  # the 1,000 items after it
    window_at_1000: float  # items 500-1,000 after it
    recovery: int | None  # items until back within 2 points (None: not in the stream)
    after_items: int
    final: float  # test accuracy at the end
    curve: list[tuple[float, float]]  # (items since the change, rolling 500-item accuracy %)


def incremental_ceiling(
    data: dict[str, Any], budget: float, new_examples: int, seed: int, say: Any = print
) -> IncrementalBound:
    """The oracle on the class-incremental stream (module docstring): accuracy before and after the new
    classes, and the items until the rolling accuracy is back within 2 points."""
    X, y = data["train"].X, np.asarray(data["train"].labels, dtype=object).astype(str)
    Xt, yt = data["test"].X, np.asarray(data["test"].labels, dtype=object).astype(str)
    rng = np.random.default_rng(seed)  # bench_loop's draws, in its order
    labels = sorted(set(y.tolist()))
    late = set(rng.permutation(labels)[: len(labels) // 3].tolist())
    seeds = k_shot_indices(y, 10, seed=seed)
    seeds = seeds[np.array([lab not in late for lab in y[seeds].tolist()], dtype=bool)]
    order, phase2 = _stream_order(y, seeds, "incremental", rng, late)
    # the examples given at the change are each new class's first streamed texts, taken out of the stream
    # (as bench_loop takes the generated ones out): scored there, they would be texts the model was given
    given = np.concatenate([order[y[order] == lab][:new_examples] for lab in sorted(late)])
    order = order[~np.isin(order, given)]  # all after the change: phase2 stays
    fine_end = phase2 + 3000
    edges = sorted(
        {
            *range(0, phase2, 500),
            *range(phase2, min(fine_end, len(order)), 100),
            *range(fine_end, len(order), 500),
        }
    )
    bought = list(seeds.tolist())
    preq = np.zeros(len(order), dtype=np.int8)
    for lo, hi in zip(edges, [*edges[1:], len(order)], strict=True):
        if lo == phase2:  # the new classes arrive, each with new_examples true examples
            bought += given.tolist()
        block = order[lo:hi]
        model = _fit(X[bought], y[bought])
        preq[lo:hi] = model.predict(X[block]) == y[block]
        k = min(len(block), max(1, round(budget * len(block))))
        bought += block[np.argsort(_margin(model, X[block]), kind="stable")[:k]].tolist()
        if lo >= phase2 and (lo - phase2) % 1000 == 0:
            say(f"  {hi}/{len(order)} items (change at {phase2}), {len(bought) - len(seeds)} labels")
    final = _fit(X[bought], y[bought])
    ends = range(phase2, len(order) + 1, 100)  # the rolling 500-item accuracy, for the plot
    return IncrementalBound(
        before=float(preq[max(phase2 - 500, 0) : phase2].mean()),
        after_1000=float(preq[phase2 : phase2 + 1000].mean()),
        window_at_1000=float(preq[phase2 + 500 : phase2 + 1000].mean()),
        recovery=recovery_items(preq.tolist(), phase2),
        after_items=len(order) - phase2,
        final=_score(final, Xt, yt),
        curve=[(float(e - phase2), 100 * float(preq[max(e - 500, 0) : e].mean())) for e in ends],
    )


def main_incremental(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    """``--incremental``: the recovery oracle per dataset, budget and new-class example count."""
    datasets = args.datasets or ["clinc150", "banking77"]
    budgets = args.budgets or [0.05, 0.10]
    name = args.name if args.name != "ceiling" else "ceiling_incr"
    t0 = time.perf_counter()
    rows: list[list[Any]] = []
    curves: dict[str, dict[str, tuple[Sequence[float], Sequence[float]]]] = {}
    for ds in datasets:
        data = dataset_embeddings(EMBEDDER, ds, ["train", "test"], progress=False)
        curves[ds] = {}
        for budget in budgets:
            for n_new in args.new_examples:
                at = f"[{time.perf_counter() - t0:5.0f}s] {ds} at {budget:.2f} labels/item"
                print(f"{at}, {n_new} examples per new class", file=sys.stderr, flush=True)
                r = incremental_ceiling(
                    data, budget, n_new, args.seed, say=lambda m: print(m, file=sys.stderr)
                )
                curves[ds][f"{budget:.2f} labels/item, {n_new} examples"] = (
                    [x for x, _ in r.curve],
                    [a for _, a in r.curve],
                )
                rows.append(
                    [ds, f"{budget:.2f}", n_new]
                    + [f"{100 * a:.1f}" for a in (r.before, r.after_1000, r.window_at_1000)]
                    + [
                        str(r.recovery) if r.recovery is not None else f"> {r.after_items}",
                        f"{100 * r.final:.2f}",
                    ]
                )
                print(f"  {' | '.join(str(c) for c in rows[-1])}", file=sys.stderr, flush=True)
    cmd = " ".join(argv if argv is not None else sys.argv[1:])
    body = [
        f"Command: `python bench/bench_ceiling.py {cmd}`; the class-incremental stream of `bench_loop` (seed "
        f"{args.seed}); true labels, one per call, LogisticRegression(C=10) refitted every 100 items for "
        "3,000 items from the change (every 500 elsewhere); accuracy is the model's first label on the "
        "streamed items, as `bench_loop`'s recovery rule reads it.",
        "",
        markdown_table(
            [
                "dataset",
                "labels per item",
                "true examples per new class at the change",
                "500 items before %",
                "1,000 items after %",
                "items 500-1,000 after %",
                "recovery items (within 2 points)",
                "final test %",
            ],
            rows,
        ),
        "",
        "Reading it: the service has generated examples for half of the new classes and must discover the "
        "other half, and its yes/no judge buys ~0.05 labels per item; this oracle gives every new class its "
        "examples at once and every label is true. Where even this does not come back within 1,000 items, "
        "the issue's recovery goal after new classes is out of reach at that budget, whatever the learner.",
        "",
    ]
    for ds, series in curves.items():
        xl, yl = "streamed items since the new classes arrived", "rolling 500-item accuracy %"
        body.append(_plot(f"{name}_{ds}", series, xl, yl, f"{ds}: the oracle after new classes"))
    title = "Recovery after new classes: an oracle bound (bench/bench_ceiling.py --incremental)"
    print(f"report: {write_report(name, title, chr(10).join(body))}", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="CLINC150 at 0.10 calls per item only")
    parser.add_argument("--datasets", nargs="*", default=None)
    parser.add_argument("--budgets", nargs="*", type=float, default=None, help="true labels per item")
    parser.add_argument("--every", type=int, default=640, help="streamed items between refits (a block)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="ceiling", help="report name under bench/results/")
    parser.add_argument("--incremental", action="store_true", help="recovery after new classes (see above)")
    parser.add_argument(
        "--new-examples",
        nargs="*",
        type=int,
        default=[5, 10],
        help="--incremental: true examples per new class",
    )
    args = parser.parse_args(argv)
    if args.incremental:
        return main_incremental(args, argv)
    datasets = args.datasets or (["clinc150"] if args.quick else ["clinc150", "banking77"])
    budgets = args.budgets or ([0.10] if args.quick else [0.05, 0.10, 0.20])
    name = args.name if not (args.quick and args.name == "ceiling") else "ceiling_quick"

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    rows, results = [], {}
    for ds in datasets:
        data = dataset_embeddings(EMBEDDER, ds, ["train", "test"], progress=False)
        y = np.asarray(data["train"].labels, dtype=object).astype(str)
        full = _score(
            _fit(data["train"].X, y),
            data["test"].X,
            np.asarray(data["test"].labels, dtype=object).astype(str),
        )
        for budget in budgets:
            say(f"[{time.perf_counter() - t0:5.0f}s] {ds} at {budget:.2f} labels/item")
            r = ceiling(data, budget, args.every, args.seed, say)
            results[(ds, budget)] = r
            rows.append(
                [ds, f"{budget:.2f}", r["labels"]]
                + [f"{100 * float(r[k]):.2f}" for k in ("stream", "stream_self", "pool", "pool_self")]
                + [f"{100 * float(r[k]):.2f}" for k in ("random", "random_self")]
                + [f"{100 * full:.2f}"]
            )
            say(
                f"  {ds} {budget:.2f}: stream {100 * float(r['stream']):.2f} / +self "
                f"{100 * float(r['stream_self']):.2f}, pool {100 * float(r['pool']):.2f} / +self "
                f"{100 * float(r['pool_self']):.2f}, random {100 * float(r['random']):.2f}"
            )
    cmd = " ".join(argv if argv is not None else sys.argv[1:])
    body = [
        f"Command: `python bench/bench_ceiling.py {cmd}`; seeds: 10 per class (seed {args.seed}); a block "
        f"is {args.every} streamed items; test split held out. Every figure is test accuracy (%) of "
        "LogisticRegression(C=10) on MiniLM embeddings; labels are true (no judge errors, one call each).",
        "",
        markdown_table(
            [
                "dataset",
                "labels per item",
                "labels bought",
                "stream",
                "stream + self-training",
                "pool (not a stream)",
                "pool + self-training",
                "random",
                "random + self-training",
                "full-data LR",
            ],
            rows,
        ),
        "",
        "Reading it: `stream + self-training` at 0.10 is what the loop could reach if every judge call "
        "bought one correct label and the learner were the reference LR; the real loop pays for judge "
        "errors (5 %), rejected candidates (a recursive call buys a hard negative, not a label) and items "
        "no candidate fits (`bench_loop`). `pool` shows what choosing among items that have not arrived "
        "yet would add; a stream cannot.",
        "",
    ]
    for ds in datasets:
        xs = list(budgets)
        series: dict[str, tuple[Sequence[float], Sequence[float]]] = {
            label: (xs, [100 * float(results[(ds, b)][key]) for b in budgets])
            for label, key in (
                ("stream", "stream"),
                ("stream + self-training", "stream_self"),
                ("pool", "pool"),
                ("random + self-training", "random_self"),
            )
        }
        if len(budgets) > 1:
            xl, yl = "true labels bought per streamed item", "test accuracy %"
            body.append(_plot(f"{name}_{ds}", series, xl, yl, f"{ds}: what selection can reach"))
    path = write_report(name, "Oracle ceiling of the loop: true labels, margin selection", "\n".join(body))
    say(f"wrote {path} ({time.perf_counter() - t0:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
