"""The example store: FIFO caps, arrays that never change once handed out."""

from __future__ import annotations

import numpy as np

from driftlabel.models.store import ExampleStore


def _rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 4)).astype(np.float32)


def test_arrays_never_change_once_handed_out() -> None:
    store = ExampleStore(dim=4, max_per_label=5)
    store.add(_rows(6, 0), [f"a{i}" for i in range(6)], ["a"] * 6)
    store.add(_rows(3, 1), ["b0", "b1", "b2"], ["b"] * 3)
    X, y, texts = store.arrays()
    assert X.shape == (8, 4) and y.tolist() == ["a"] * 5 + ["b"] * 3 and texts[0] == "a1"  # FIFO cap
    before = X.copy()
    store.add(_rows(2, 2), ["a9", "b9"], ["a", "b"])
    store.remove_texts("b", {"b0"})
    np.testing.assert_array_equal(X, before)  # later writes replace arrays, never mutate them
    X2, _, t2 = store.arrays()
    assert len(X2) == 8 and t2[:5] == ["a2", "a3", "a4", "a5", "a9"] and "b0" not in t2
    Xs, labs = store.sample(4, np.random.default_rng(0))
    assert Xs.shape == (4, 4) and set(labs.tolist()) <= {"a", "b"}
