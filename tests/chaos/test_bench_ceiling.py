"""``bench_ceiling``'s idealised loop on a small synthetic set: it runs, buys the budgeted labels, scores."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from driftlabel.bench import bench_ceiling


def _split(rng: np.random.Generator, centres: np.ndarray, n: int) -> SimpleNamespace:
    y = np.repeat(np.arange(len(centres)), n)
    X = centres[y] + 0.6 * rng.standard_normal((len(y), centres.shape[1]))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return SimpleNamespace(X=X.astype(np.float32), labels=[f"c{i}" for i in y])


def test_ceiling_buys_the_budget_and_scores_every_selection() -> None:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4, 8))
    data = {"train": _split(rng, centres, 40), "test": _split(rng, centres, 10)}
    out = bench_ceiling.ceiling(data, budget=0.2, every=32, seed=0, say=lambda _m: None)
    streamed = 4 * 40 - 4 * 10  # the train split minus 10 seeds per class
    assert abs(int(out["labels"]) - 0.2 * streamed) <= 2
    for key in ("stream", "stream_self", "pool", "pool_self", "random", "random_self"):
        assert 0.5 < float(out[key]) <= 1.0, key  # four separable blobs: far above chance (0.25)


def test_incremental_bound_learns_the_new_classes_after_the_change() -> None:
    """Six blobs, two of them new half-way: the bound reports the accuracy around the change, a recovery
    (the blobs are easy) and a curve that starts at the change."""
    rng = np.random.default_rng(1)
    centres = 3 * rng.standard_normal((6, 8))
    data = {"train": _split(rng, centres, 300), "test": _split(rng, centres, 20)}
    r = bench_ceiling.incremental_ceiling(data, budget=0.1, new_examples=5, seed=0, say=lambda _m: None)
    assert r.before > 0.8 and r.final > 0.8
    assert r.recovery is not None and 0 < r.recovery <= r.after_items
    assert r.curve[0][0] == 0.0 and len(r.curve) > 5
