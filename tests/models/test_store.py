"""The example store: FIFO caps, arrays that never change once handed out."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from driftlabel.models.errors import InvalidDataError
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


def test_a_copy_shares_arrays_but_not_changes() -> None:
    """A deep copy shares the (read-only) arrays and copies the rest: writes to either side stay there."""
    store = ExampleStore(dim=4, max_per_label=3)
    store.add(_rows(3, 0), ["a0", "a1", "a2"], ["a"] * 3, representative=True)
    store.add(_rows(1, 1), ["n0"], ["a"], valid=[False])
    X, _, _ = store.arrays()
    twin = copy.deepcopy(store)
    assert twin.arrays()[0] is X  # shared until one side changes
    with pytest.raises(ValueError, match="read-only"):
        X[0, 0] = 1.0  # a write in place would leak into the copy: it fails instead
    twin.add(_rows(2, 2), ["a3", "b0"], ["a", "b"])
    twin.remove_texts("a", {"a1"})
    assert store.arrays()[2] == ["a0", "a1", "a2"] and store.labels == ["a"]
    assert twin.arrays()[2] == ["a2", "a3", "b0"] and twin.labels == ["a", "b"]
    assert store.n_negatives == twin.n_negatives == 1
    np.testing.assert_array_equal(store.arrays()[0], X)
    store.add(_rows(1, 3), ["a4"], ["a"])
    assert twin.arrays()[2] == ["a2", "a3", "b0"]
    assert store.representative().tolist() == [True, True, False]
    assert twin.representative().tolist() == [True, False, False]


def test_representative_flags_follow_their_rows() -> None:
    """Rows given as training data stay marked through the FIFO cap, removals and a state round trip."""
    store = ExampleStore(dim=4, max_per_label=4)
    store.add(_rows(3, 0), ["a0", "a1", "a2"], ["a"] * 3, representative=True)
    store.add(_rows(2, 1), ["a3", "b0"], ["a", "b"])  # learned rows: not representative by default
    store.add(_rows(1, 2), ["a4"], ["a"], representative=[True])
    texts = store.arrays()[2]
    assert texts == ["a1", "a2", "a3", "a4", "b0"]  # a0 fell out of the cap with its flag
    assert store.representative().tolist() == [True, True, False, True, False]
    store.remove_texts("a", {"a2"})
    assert store.representative().tolist() == [True, False, True, False]
    state = store.state()
    back = ExampleStore.from_state(
        4,
        4,
        200,
        (state["pos_X"], state["pos_y"], state["pos_texts"]),
        (state["neg_X"], state["neg_y"], state["neg_texts"]),
        state["pos_representative"],
    )
    assert back.representative().tolist() == [True, False, True, False]
    old = ExampleStore.from_state(  # a file written before the flags: every row counts, as it did
        4, 4, 200, (state["pos_X"], state["pos_y"], state["pos_texts"]), (state["neg_X"], [], [])
    )
    assert old.representative().all()


def test_representative_flags_must_match_the_rows() -> None:
    store = ExampleStore(dim=4)
    with pytest.raises(InvalidDataError, match="representative flags"):
        store.add(_rows(3, 0), ["a", "b", "c"], ["x"] * 3, representative=[True, False])


def test_replay_draws_the_same_rows_from_a_store_rebuilt_from_its_state() -> None:
    """``from_state`` adds labels sorted; a live store got them in arrival order. Replay must not care."""
    store = ExampleStore(dim=4)
    store.add(_rows(3, 0), ["b0", "b1", "b2"], ["b"] * 3)
    store.add(_rows(3, 1), ["a0", "a1", "a2"], ["a"] * 3)  # arrives last, sorts first
    st = store.state()
    rebuilt = ExampleStore.from_state(
        4,
        store.max_per_label,
        store.max_negatives_per_label,
        (st["pos_X"], st["pos_y"], st["pos_texts"]),  # type: ignore[arg-type]
        (st["neg_X"], st["neg_y"], st["neg_texts"]),  # type: ignore[arg-type]
    )
    Xa, ya = store.sample(4, np.random.default_rng(3))
    Xb, yb = rebuilt.sample(4, np.random.default_rng(3))
    np.testing.assert_array_equal(Xa, Xb)
    assert ya.tolist() == yb.tolist()
