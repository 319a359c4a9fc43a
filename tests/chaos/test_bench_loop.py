"""``bench_loop``'s knobs on a small synthetic set: ``lag`` delays learning but loses no label,
``single_checks`` charges each cross-check a whole call instead of a share of a batched one, ``min_ratio``
cuts the recursion, the class-incremental scenario reports each class group, and the ``--evict-on-add``
prototype drops only the learned rows nearer the new label."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from driftlabel.bench import bench_loop


def _split(rng: np.random.Generator, centres: np.ndarray, n: int, tag: str) -> SimpleNamespace:
    y = np.repeat(np.arange(len(centres)), n)
    X = centres[y] + 0.25 * rng.standard_normal((len(y), centres.shape[1]))  # overlapping blobs
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return SimpleNamespace(
        X=X.astype(np.float32), labels=[f"c{i}" for i in y], texts=[f"{tag}{i}" for i in range(len(y))]
    )


@pytest.fixture(scope="module")
def data() -> dict[str, SimpleNamespace]:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((6, 384)) / np.sqrt(384)  # unit-scale, MiniLM-sized as the bench's embedder
    return {"train": _split(rng, centres, 60, "tr"), "test": _split(rng, centres, 40, "te")}


def _run(data: dict[str, SimpleNamespace], **kw: object) -> bench_loop.Run:
    return bench_loop.run_loop(
        data, "blobs", "stationary", "choose", 0.05, budget=0.3, limit=None, eval_every=128, batch=4, **kw
    )


def test_lag_delays_learning_but_learns_every_label_by_the_end(data: dict[str, SimpleNamespace]) -> None:
    now, never = _run(data), _run(data, lag=100)  # 300 streamed items: 5 chunks, all lagged to the end
    assert now.judged > 0 and never.judged > 0
    start = now.curve[0][1]
    assert start < 0.9  # overlapping blobs: the seeds alone leave room to learn
    # lagged past the stream, nothing is learned before the end: the mid-stream scores are the seeds'
    assert [acc for _, acc in never.curve[1:-1]] == [start] * (len(never.curve) - 2)
    assert now.curve[1][1] > start  # without the lag the first chunks' labels already count
    # ... and everything is learned before the last evaluation
    assert never.curve[-1][0] == never.items and never.final_acc > start


def test_single_checks_cost_a_whole_call_each(data: dict[str, SimpleNamespace]) -> None:
    batched = _run(data, verify=1.0)
    single = _run(data, verify=1.0, single_checks=True)
    assert batched.verified > 0
    # the same stream: the checks of the first chunk are the same, and cost more when asked one by one
    per_item_b, per_item_s = batched.calls / batched.items, single.calls / single.items
    assert per_item_s > per_item_b


def test_min_ratio_one_asks_only_the_first_candidate(data: dict[str, SimpleNamespace]) -> None:
    kw = {"budget": 0.3, "limit": None, "eval_every": 128, "batch": 1}
    every = bench_loop.run_loop(data, "blobs", "stationary", "red", 0.05, **kw)
    first = bench_loop.run_loop(data, "blobs", "stationary", "red", 0.05, min_ratio=1.0, **kw)
    assert every.calls > every.judged  # some items needed a second question ...
    assert first.judged > 0 and first.calls == first.judged  # ... here each judged item is asked once


def test_incremental_run_reports_each_class_group(data: dict[str, SimpleNamespace]) -> None:
    run = bench_loop.run_loop(
        data, "blobs", "incremental", "red", 0.05, budget=0.3, limit=None, eval_every=128, batch=4
    )
    assert list(run.groups) == ["known", "described", "discovered"]
    for acc, stored in run.groups.values():
        assert 0.0 <= acc <= 1.0 and stored >= 0
    assert run.groups["known"][1] >= 10  # the seeds
    assert 0 <= run.wrong_unknown <= run.wrong_accepted


def test_evict_nearer_drops_learned_rows_nearer_the_new_label_only() -> None:
    from driftlabel.models import RedClassifier

    rng = np.random.default_rng(1)
    a, b, new = (np.eye(384, dtype=np.float32)[i] for i in range(3))
    seeds = np.stack(
        [a + 0.1 * rng.standard_normal(384) for _ in range(5)]
        + [b + 0.1 * rng.standard_normal(384) for _ in range(5)]
    )
    seeds /= np.linalg.norm(seeds, axis=1, keepdims=True)
    clf = RedClassifier(embedder=bench_loop.EMBEDDER)
    clf.fit_embeddings(seeds.astype(np.float32), [f"s{i}" for i in range(10)], ["a"] * 5 + ["b"] * 5)
    wrong = (0.4 * a + new) / np.linalg.norm(0.4 * a + new)  # a text of `new` learned as `a`
    right = (a + 0.2 * new) / np.linalg.norm(a + 0.2 * new)
    clf.learn_embeddings(np.stack([wrong, right]).astype(np.float32), ["wrong", "right"], ["a", "a"])
    clf.add_class_embeddings("new", np.stack([new, new]).astype(np.float32), ["n0", "n1"])
    assert bench_loop._evict_nearer(clf, "new") == 1
    _, y, texts = clf.store.arrays()
    assert "wrong" not in texts and "right" in texts and sum(lab == "a" for lab in y) == 6


def test_recovery_is_counted_from_the_change_in_both_drift_scenarios() -> None:
    """Items after the change until the rolling 500-item prequential accuracy is back within 2 points;
    ``> N`` when the stream ends first, ``n/a`` when a phase is shorter than the window, ``-`` for a
    stationary stream (the same column in bench_loop's and bench_service's reports)."""
    preq = [1] * 1000 + [0] * 300 + [1] * 1000
    assert bench_loop.recovery_items(preq, 1000) == 800  # first 500-window ending on a 50 with <= 10 misses
    assert bench_loop.recovery_text("incremental", preq, 1000) == "800"
    assert bench_loop.recovery_text("shift", [1] * 1000 + [0] * 900 + [1] * 400, 1000) == "> 1300"
    assert bench_loop.recovery_text("shift", [1] * 1200, 1000) == "n/a (stream too short)"
    assert bench_loop.recovery_text("stationary", preq, 1000) == "-"
