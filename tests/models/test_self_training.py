"""Self-training: the stream's unlabelled rows teach re-solves and refits (models/store.py UnlabelledPool)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from driftlabel.models import ExpertSettings, RedClassifier
from driftlabel.models.errors import InvalidDataError
from driftlabel.models.store import UnlabelledPool

from .conftest import make_blobs

pytestmark = pytest.mark.filterwarnings("ignore")


def _accuracy(clf: RedClassifier, X: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.array(clf.predict_embeddings(X)) == y))


def _weights(clf: RedClassifier) -> np.ndarray:
    return np.concatenate([np.r_[e.coef_.ravel(), e.intercept_] for e in clf._experts])  # type: ignore[attr-defined]


@pytest.mark.parametrize("subset_size", [1000, 4])
def test_unlabelled_rows_teach_a_refit(subset_size: int) -> None:
    blobs = make_blobs(n_labels=12, dim=16, noise=0.35, seed=3)
    seeds = blobs.sample(2, seed=1)  # two labelled rows a label: a weak model
    X_u, _, _ = blobs.sample(60, seed=2)
    X_te, _, y_te = blobs.sample(40, seed=3)
    accs = {}
    for weight in (0.0, 0.3):
        clf = RedClassifier(settings=ExpertSettings(subset_size=subset_size, self_training=weight))
        clf.fit_embeddings(*seeds)
        version = clf.model_version
        clf.observe_embeddings(X_u)
        assert clf.model_version == version  # kept, not learned: the weights move at the next solve
        assert clf.n_unlabelled == (len(X_u) if weight else 0)
        clf.refit()
        accs[weight] = _accuracy(clf, X_te, y_te)
    assert accs[0.3] > accs[0.0] + 0.02, accs


def test_the_pool_is_a_capped_fifo() -> None:
    pool = UnlabelledPool(dim=2, cap=5)
    rows = np.arange(26, dtype=np.float32).reshape(13, 2)
    for lo, hi in [(0, 2), (2, 6), (6, 7), (7, 13)]:
        pool.add(rows[lo:hi])
        kept = rows[max(0, hi - 5) : hi]
        np.testing.assert_array_equal(pool.arrays(), kept)
    snapshot = pool.arrays()
    pool.add(rows[:3])
    assert snapshot[0, 0] == 16.0  # a snapshot is a copy: later adds never change it
    assert len(pool) == 5
    with pytest.raises(InvalidDataError):
        pool.add(np.zeros((1, 3), np.float32))
    UnlabelledPool(dim=2, cap=0).add(rows)  # cap 0 keeps nothing, and says nothing


def test_the_pool_keeps_the_newest_rows_when_one_add_grows_and_wraps_it() -> None:
    """Growing the buffer and wrapping past the cap in one add kept zeros and lost real rows."""
    pool = UnlabelledPool(dim=1, cap=2000)
    pool.add(np.arange(1, 1025, dtype=np.float32)[:, None])  # the buffer is exactly full (1,024 rows)
    pool.add(np.arange(1025, 2025, dtype=np.float32)[:, None])  # grows to the cap and wraps past it
    np.testing.assert_array_equal(pool.arrays()[:, 0], np.arange(25, 2025, dtype=np.float32))


def test_the_pool_is_the_newest_rows_oldest_first_whatever_the_adds() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        cap = int(rng.integers(1, 3000))
        pool, seen, n = UnlabelledPool(dim=1, cap=cap), np.zeros((0, 1), np.float32), 0
        for _ in range(int(rng.integers(1, 6))):
            k = int(rng.integers(0, 2 * cap + 2))
            rows = np.arange(n, n + k, dtype=np.float32)[:, None]
            n += k
            pool.add(rows)
            seen = np.concatenate([seen, rows])[-cap:]
            np.testing.assert_array_equal(pool.arrays(), seen)
            assert len(pool) == len(seen)


def test_the_pool_survives_save_and_load(tmp_path: Path) -> None:
    blobs = make_blobs(n_labels=6, dim=12, noise=0.3, seed=5)
    clf = RedClassifier(settings=ExpertSettings(unlabelled_max=50)).fit_embeddings(*blobs.sample(3, seed=1))
    X_u, _, _ = blobs.sample(20, seed=2)  # 120 rows: the newest 50 stay
    clf.observe_embeddings(X_u)
    assert clf.n_unlabelled == 50
    clf.save(tmp_path / "m")
    back = RedClassifier.load(tmp_path / "m")
    np.testing.assert_array_equal(back._unlabelled.arrays(), X_u[-50:])  # type: ignore[union-attr]
    clf.refit()
    back.refit()
    np.testing.assert_array_equal(_weights(clf), _weights(back))


def test_background_resolves_learn_the_pool_the_same_on_every_copy() -> None:
    blobs = make_blobs(n_labels=10, dim=16, noise=0.3, seed=9)
    seeds = blobs.sample(2, seed=1)
    X, texts, y = blobs.sample(30, seed=2)
    settings = ExpertSettings(resolve_every=20, resolve_background=True)

    def run(observe: bool) -> RedClassifier:
        clf = RedClassifier(settings=settings).fit_embeddings(*seeds)
        order = np.random.default_rng(0).permutation(len(X))
        for lo in range(0, len(X), 30):  # a fifth labelled (as if judged), the rest unlabelled
            rows = order[lo : lo + 6]
            clf.learn_embeddings(X[rows], [texts[i] for i in rows], y[rows])
            if observe:
                clf.observe_embeddings(X[order[lo + 6 : lo + 30]])
        clf.settle()
        return clf

    a, b, plain = run(True), run(True), run(False)
    assert a.resolves >= 2
    np.testing.assert_array_equal(_weights(a), _weights(b))  # a function of the rows and their order
    assert not np.array_equal(_weights(a), _weights(plain))  # and the unlabelled rows did move it


def test_observe_checks_its_input() -> None:
    blobs = make_blobs(n_labels=4, dim=8, seed=1)
    clf = RedClassifier()
    with pytest.raises(Exception, match="fit"):
        clf.observe_embeddings(blobs.sample(1)[0])
    clf.fit_embeddings(*blobs.sample(3))
    with pytest.raises(InvalidDataError):
        clf.observe_embeddings(np.zeros((2, 5), np.float32))


def test_what_to_judge_follows_a_twin_that_learns_no_unlabelled_rows(tmp_path: Path) -> None:
    """With self-training the experts rank, but entropy and margin (what the judge is asked about) come
    from a routing twin that gets every labelled row and class op and no unlabelled row: self-training
    makes the experts confident where they should not be, which hid new classes from the judge."""
    blobs = make_blobs(n_labels=8, dim=16, noise=0.35, seed=4)
    seeds = blobs.sample(2, seed=1)
    X, texts, y = blobs.sample(20, seed=2)
    X_u, _, _ = blobs.sample(30, seed=3)

    def run(settings: ExpertSettings, observe: bool) -> RedClassifier:
        clf = RedClassifier(settings=settings).fit_embeddings(*seeds)
        for lo in range(0, len(X), 40):
            clf.learn_embeddings(X[lo : lo + 40], texts[lo : lo + 40], y[lo : lo + 40])
            if observe:
                clf.observe_embeddings(X_u[lo : lo + 40])
            if lo == 40:  # class ops reach the twin too (a new label also empties the pool)
                clf.add_class_embeddings("newcomer", X_u[:3] + 0.0, ["n0", "n1", "n2"])
                clf.remove_class(str(y[-1]))
        clf.refit()
        clf.settle()
        return clf

    s = ExpertSettings(resolve_every=20)
    st, plain = run(s, True), run(s, False)
    r_st, r_plain = st.rank_embeddings(X_u), plain.rank_embeddings(X_u)
    np.testing.assert_array_equal(r_st.margin, r_plain.margin)  # the twin is the plain model, bit for bit
    np.testing.assert_array_equal(r_st.entropy, r_plain.entropy)
    assert not np.array_equal(st.predict_proba_embeddings(X_u), plain.predict_proba_embeddings(X_u))
    st.save(tmp_path / "m")
    back = RedClassifier.load(tmp_path / "m")
    np.testing.assert_array_equal(back.rank_embeddings(X_u).margin, r_plain.margin)
    alone = run(s.model_copy(update={"self_training_router": False}), True)
    assert alone._router is None
    assert not np.array_equal(alone.rank_embeddings(X_u).margin, r_plain.margin)
    alone.save(tmp_path / "m")  # saving a model without a twin over one with it removes the old twin
    assert RedClassifier.load(tmp_path / "m")._router is None
