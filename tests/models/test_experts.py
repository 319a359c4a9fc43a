"""Experts: one contract test over every implementation, plus the numpy learner's specific promises."""

from __future__ import annotations

import copy
import inspect

import numpy as np
import pytest

from driftlabel.models import Expert, InvalidDataError, RiverExpert, SoftmaxExpert, UnknownLabelError
from driftlabel.models.experts import fit_joint

from .conftest import make_blobs

EXPERTS = [
    pytest.param(lambda: SoftmaxExpert(l2=1.0, learning_rate=1.0, epochs=2), id="softmax"),
    pytest.param(lambda: RiverExpert(learning_rate=0.1, epochs=2), id="river"),
]


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    b = make_blobs(n_labels=5, dim=16, noise=0.1, seed=2)
    Xtr, _, ytr = b.sample(30, seed=1)
    Xte, _, yte = b.sample(20, seed=2)
    return Xtr, ytr, Xte, yte


@pytest.mark.parametrize("factory", EXPERTS)
def test_expert_contract(factory, data) -> None:
    Xtr, ytr, Xte, yte = data
    expert = factory()
    assert isinstance(expert, Expert)
    # parameters are stored under their own names, and clone() copies them, not the state
    params = expert.get_params()
    assert set(params) == set(inspect.signature(type(expert)).parameters)
    assert all(getattr(expert, k) == v for k, v in params.items())
    # incremental learning from micro-batches
    order = np.random.default_rng(0).permutation(len(Xtr))
    for _ in range(3):
        for start in range(0, len(order), 32):
            rows = order[start : start + 32]
            assert expert.learn_many(Xtr[rows], ytr[rows]) is expert
    assert sorted(expert.classes_.tolist()) == sorted(set(ytr.tolist()))
    P = expert.predict_proba_many(Xte)
    assert P.shape == (len(Xte), len(expert.classes_))
    np.testing.assert_allclose(P.sum(axis=1), 1.0, rtol=1e-6)
    assert np.all(P >= 0)
    acc = np.mean(expert.predict_many(Xte) == yte)
    assert acc > 0.9, f"{type(expert).__name__} learnt only {acc:.2f} on separable blobs"
    clone = expert.clone()
    assert clone.get_params() == params and len(clone.classes_) == 0
    # full refit and class management
    expert.fit_many(Xtr, ytr)
    assert np.mean(expert.predict_many(Xte) == yte) > 0.9
    expert.add_class("brand_new")
    assert "brand_new" in expert.classes_.tolist()
    assert expert.predict_proba_many(Xte).shape == (len(Xte), len(set(ytr.tolist())) + 1)
    expert.remove_class("brand_new")
    assert "brand_new" not in expert.classes_.tolist()
    with pytest.raises(UnknownLabelError):
        expert.remove_class("never_there")
    # bad input is refused with a clear error
    with pytest.raises(InvalidDataError):
        expert.learn_many(Xtr[:3], ytr[:2])
    with pytest.raises(InvalidDataError):
        expert.learn_many(Xtr[:2] * np.nan, ytr[:2])


def test_softmax_full_refit_matches_scikit_learn(data) -> None:
    """Same objective as LogisticRegression(C=1/l2): same predictions, near-identical probabilities."""
    from sklearn.linear_model import LogisticRegression

    Xtr, ytr, Xte, _ = data
    ours = SoftmaxExpert(l2=0.5, max_iter=500).fit_many(Xtr, ytr)
    ref = LogisticRegression(C=2.0, max_iter=2000, tol=1e-8).fit(Xtr, ytr)
    order = [list(ours.classes_).index(c) for c in ref.classes_]
    np.testing.assert_allclose(ours.predict_proba_many(Xte)[:, order], ref.predict_proba(Xte), atol=2e-3)


def test_softmax_sample_weights_act_like_repetition(data) -> None:
    Xtr, ytr, Xte, _ = data
    a = SoftmaxExpert(max_iter=500).fit_many(
        Xtr[:40], ytr[:40], sample_weight=np.r_[np.full(20, 2.0), np.ones(20)]
    )
    b = SoftmaxExpert(max_iter=500).fit_many(np.r_[Xtr[:20], Xtr[:40]], np.r_[ytr[:20], ytr[:40]])
    np.testing.assert_allclose(a.predict_proba_many(Xte), b.predict_proba_many(Xte), atol=2e-3)


def test_hard_negatives_push_the_probability_down(data) -> None:
    Xtr, ytr, _, _ = data
    expert = SoftmaxExpert().fit_many(Xtr, ytr)
    x, lab = Xtr[:1], ytr[:1]
    before = expert.predict_proba_many(x)[0, list(expert.classes_).index(lab[0])]
    for _ in range(5):
        expert.learn_many(np.repeat(x, 8, axis=0), np.repeat(lab, 8), valid=np.zeros(8, dtype=bool))
    after = expert.predict_proba_many(x)[0, list(expert.classes_).index(lab[0])]
    assert after < before - 0.2
    # and a full refit with the negative keeps it down compared with the refit without it
    refit = SoftmaxExpert().fit_many(
        np.r_[Xtr, x], np.r_[ytr, lab], valid=np.r_[np.ones(len(Xtr), bool), False]
    )
    assert refit.predict_proba_many(x)[0, list(refit.classes_).index(lab[0])] < before


def test_new_labels_appear_as_new_classes_without_losing_old_ones(data) -> None:
    Xtr, ytr, Xte, yte = data
    expert = SoftmaxExpert().fit_many(Xtr, ytr)
    acc_before = np.mean(expert.predict_many(Xte) == yte)
    new = make_blobs(n_labels=1, dim=16, noise=0.1, seed=99)
    Xn, _, yn = new.sample(10)
    yn = np.full(len(yn), "new", dtype=object)
    replay = np.random.default_rng(0).choice(len(Xtr), 10, replace=False)  # old examples replayed
    for _ in range(5):
        expert.learn_many(np.r_[Xn, Xtr[replay]], np.r_[yn, ytr[replay]])
    assert "new" in expert.classes_.tolist()
    assert np.mean(expert.predict_many(Xn) == "new") > 0.8
    assert np.mean(expert.predict_many(Xte) == yte) >= acc_before - 0.05


def test_unfitted_expert_refuses_to_predict() -> None:
    with pytest.raises(InvalidDataError, match="no classes"):
        SoftmaxExpert().predict_proba_many(np.zeros((1, 4)))


def _joint_problem() -> tuple[list[SoftmaxExpert], dict[str, np.ndarray]]:
    """Three experts over 3, 2 and 3 classes; shared rows (weights differ per expert) and private rows."""
    b = make_blobs(n_labels=6, dim=12, noise=0.3, seed=4)
    X, _, _ = b.sample(12, seed=5)
    rng = np.random.default_rng(6)
    experts = [SoftmaxExpert(l2=0.5, max_iter=500, tol=1e-8) for _ in range(3)]
    for e, classes in zip(experts, [["a", "b", "c"], ["d", "e"], ["f", "g", "h"]], strict=True):
        for c in classes:
            e.add_class(c)
    n_sh = 40
    t_sh = np.stack([rng.integers(0, len(e.classes_), n_sh) for e in experts], axis=1)
    w_sh = rng.uniform(0.0, 2.0, (n_sh, 3)) * (rng.random((n_sh, 3)) > 0.2)
    m = len(X) - n_sh
    owner = rng.integers(0, 3, m)
    t_pr = np.array([rng.integers(0, len(experts[o].classes_)) for o in owner.tolist()])
    v_pr = rng.random(m) > 0.15  # some hard negatives
    arrays = {
        "X_shared": X[:n_sh], "t_shared": t_sh, "w_shared": w_sh, "X_private": X[n_sh:], "owner": owner,
        "t_private": t_pr, "w_private": rng.uniform(0.5, 1.5, m), "v_private": v_pr,
    }  # fmt: skip
    return experts, arrays


def test_joint_fit_solves_every_expert_as_it_would_alone() -> None:
    """The joint objective is the sum of the experts' own: each ends at its own optimum (float32 matmuls)."""
    experts, a = _joint_problem()
    fit_joint(experts, **a, max_iter=1000, tol=1e-7)
    for s, e in enumerate(experts):
        alone = SoftmaxExpert(l2=0.5, max_iter=1000, tol=1e-10)
        for c in e.classes_.tolist():
            alone.add_class(c)
        priv = a["owner"] == s
        names = alone.classes_
        X = np.concatenate([a["X_shared"], a["X_private"][priv]])
        y = np.concatenate([names[a["t_shared"][:, s]], names[a["t_private"][priv]]])
        w = np.concatenate([a["w_shared"][:, s], a["w_private"][priv]])
        v = np.concatenate([np.ones(len(a["X_shared"]), bool), a["v_private"][priv]])
        alone.fit_many(X, y, w, v)
        assert e.coef_ is not None and alone.coef_ is not None
        np.testing.assert_allclose(e.predict_proba_many(X), alone.predict_proba_many(X), atol=2e-3)
        assert e.n_seen_ == pytest.approx(float(w.sum()))


def test_joint_fit_is_deterministic_and_warm_starts() -> None:
    experts, a = _joint_problem()
    twin = copy.deepcopy(experts)
    fit_joint(experts, **a, max_iter=60)
    fit_joint(twin, **a, max_iter=60)
    for e, t in zip(experts, twin, strict=True):
        assert e.coef_ is not None and t.coef_ is not None
        assert e.coef_.tobytes() == t.coef_.tobytes() and e.intercept_.tobytes() == t.intercept_.tobytes()
    # from its own optimum, a warm re-solve stops at once and stays there
    fit_joint(experts, **a, max_iter=2000, tol=1e-7)
    before = [e.coef_.copy() for e in experts if e.coef_ is not None]
    iterations = fit_joint(experts, **a, max_iter=50, tol=1e-4)
    assert iterations <= 5
    for e, W in zip(experts, before, strict=True):
        np.testing.assert_allclose(e.coef_, W, atol=1e-3)


def test_fit_columns_moves_only_the_given_classes_to_the_full_optimum(data) -> None:
    """A young label's re-solve: the freed columns reach where a full refit puts them, the others stay
    bit for bit; freeing every column is a full refit (hard negatives included)."""
    Xtr, ytr, Xte, _ = data
    rng = np.random.default_rng(3)
    v = rng.random(len(ytr)) > 0.2
    w = rng.uniform(0.5, 1.5, len(ytr))
    full = SoftmaxExpert(l2=0.5, max_iter=1000, tol=1e-10).fit_many(Xtr, ytr, w, v)
    assert full.coef_ is not None
    classes = full.classes_.tolist()
    e = copy.deepcopy(full)
    assert e.coef_ is not None
    freed = [classes[1], classes[3]]
    cols = [1, 3]
    e.coef_[:, cols] = 0.0
    e.intercept_[cols] = 0.0
    kept = np.delete(e.coef_, cols, axis=1).copy()
    e.fit_columns(Xtr, ytr, freed, w, v, max_iter=1000)
    assert e.coef_ is not None
    np.testing.assert_array_equal(np.delete(e.coef_, cols, axis=1), kept)
    np.testing.assert_allclose(e.coef_, full.coef_, atol=1e-3)  # float32 matmuls, as fit_joint
    np.testing.assert_allclose(e.intercept_, full.intercept_, atol=1e-3)
    fresh = SoftmaxExpert(l2=0.5, max_iter=1000, tol=1e-10)
    for c in classes:
        fresh.add_class(c)
    fresh.fit_columns(Xtr, ytr, classes, w, v)
    np.testing.assert_allclose(fresh.predict_proba_many(Xte), full.predict_proba_many(Xte), atol=1e-4)
    with pytest.raises(UnknownLabelError):
        e.fit_columns(Xtr, ytr, ["no such class"])


def test_joint_fit_with_free_columns_solves_each_expert_over_its_own_rows() -> None:
    experts, a = _joint_problem()
    fit_joint(experts, **a, max_iter=200)
    free = [np.array([1]), np.array([], dtype=np.intp), np.array([0, 2])]
    alone = copy.deepcopy(experts)
    untouched = copy.deepcopy(experts[1])
    fit_joint(experts, **a, max_iter=500, tol=1e-9, free=free)
    assert experts[1].coef_ is not None and untouched.coef_ is not None
    assert experts[1].coef_.tobytes() == untouched.coef_.tobytes()
    for s in (0, 2):
        e = alone[s]
        names = e.classes_
        priv = a["owner"] == s
        sh = a["w_shared"][:, s] > 0
        X = np.concatenate([a["X_shared"][sh], a["X_private"][priv]])
        y = np.concatenate([names[a["t_shared"][sh, s]], names[a["t_private"][priv]]])
        w = np.concatenate([a["w_shared"][sh, s], a["w_private"][priv]])
        v = np.concatenate([np.ones(int(sh.sum()), bool), a["v_private"][priv]])
        e.tol = 1e-9
        e.fit_columns(X, y, names[free[s]].tolist(), w, v, max_iter=500)
        np.testing.assert_allclose(experts[s].coef_, e.coef_, atol=1e-3)
        np.testing.assert_allclose(experts[s].intercept_, e.intercept_, atol=1e-3)
