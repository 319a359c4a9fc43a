"""RedClassifier: combination, learning, label management, persistence, bad input; one real-model test."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from driftlabel.models import (
    NOISE,
    OUT_OF_SCOPE,
    ExpertSettings,
    InvalidDataError,
    ModelError,
    ModelFileError,
    RedClassifier,
    UnknownLabelError,
    noise_class,
)
from driftlabel.models.persistence import FORMAT_VERSION

from .conftest import Blobs, HashEmbedder, make_blobs


def test_fit_builds_bounded_subsets_and_one_expert_each(fitted: RedClassifier, blobs: Blobs) -> None:
    assert fitted.labels == sorted(blobs.labels)
    assert fitted.n_subsets == math.ceil(20 / 4)
    assert sorted(lab for s in fitted.subsets for lab in s) == fitted.labels
    assert all(len(s) <= 4 for s in fitted.subsets)
    assert fitted.n_examples == 20 * 15
    assert fitted.model_version == 1
    for subset, expert in zip(fitted.subsets, fitted._experts, strict=True):
        noise = [noise_class(g) for g in range(fitted.settings.noise_groups)]
        assert expert.classes_.tolist() == [*subset, *noise]


def test_ranking_is_consistent_and_accurate(fitted: RedClassifier, blobs: Blobs) -> None:
    X, _, y = blobs.sample(10, seed=7)
    r = fitted.rank_embeddings(X, top_k=3)
    assert len(r) == len(X)
    assert np.mean(np.array(r.labels) == y) > 0.95
    for row, top1, score, marg in zip(r.candidates, r.labels, r.scores, r.margin, strict=True):
        probs = [p for _, p in row]
        assert len(row) == 3 and probs == sorted(probs, reverse=True)
        assert row[0][0] == top1 or top1 == OUT_OF_SCOPE
        assert score == pytest.approx(probs[0]) and marg == pytest.approx(probs[0] - probs[1])
    P = fitted.predict_proba_embeddings(X)
    np.testing.assert_allclose(P.sum(axis=1), 1.0, rtol=1e-6)
    ent = -(P * np.log(P)).sum(axis=1)
    np.testing.assert_allclose(r.entropy, ent, rtol=1e-5)


def test_combination_is_the_product_of_experts(fitted: RedClassifier, blobs: Blobs) -> None:
    """The one-matmul scores equal log p_s(L) - log p_s(noise) computed expert by expert, where
    p_s(noise) sums the expert's noise classes (one per group of similar other labels)."""
    X, _, _ = blobs.sample(3, seed=8)
    Z = fitted.log_odds(X)
    for subset, expert in zip(fitted.subsets, fitted._experts, strict=True):
        P = expert.predict_proba_many(X)
        classes = expert.classes_.tolist()
        for lab in subset:
            p_noise = P[:, [j for j, c in enumerate(classes) if c.startswith(NOISE)]].sum(axis=1)
            want = np.log(P[:, classes.index(lab)]) - np.log(p_noise)
            np.testing.assert_allclose(Z[:, fitted.labels.index(lab)], want, rtol=1e-4, atol=1e-4)


def test_out_of_scope_is_off_by_default(fitted: RedClassifier) -> None:
    far = -np.mean(fitted.store.arrays()[0], axis=0, keepdims=True)
    far = np.repeat(far / np.linalg.norm(far), 2, axis=0)
    assert fitted.settings.oos == "off"
    assert not fitted.rank_embeddings(far).out_of_scope.any()


def test_out_of_scope_nearest_flags_far_texts_and_few_known_ones(fitted: RedClassifier) -> None:
    fitted.settings = fitted.settings.model_copy(update={"oos": "nearest", "oos_quantile": 0.05})
    far = -np.mean(fitted.store.arrays()[0], axis=0, keepdims=True)
    far = np.repeat(far / np.linalg.norm(far), 2, axis=0)
    r = fitted.rank_embeddings(far)
    assert r.out_of_scope.all() and r.labels == [OUT_OF_SCOPE, OUT_OF_SCOPE]
    Xs = fitted.store.arrays()[0]
    noisy = Xs + np.random.default_rng(0).normal(0, 0.02, Xs.shape).astype(np.float32)
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    assert fitted.rank_embeddings(noisy).out_of_scope.mean() <= 0.1  # calibrated: few in-scope flagged


def test_a_looser_similarity_line_for_new_class_candidates(fitted: RedClassifier) -> None:
    """``oos_similarity_threshold(q)``: the store's own q-quantile, so a larger q draws the line higher
    (more texts count as far: stream.proposal_far_quantile), each cached apart from the out-of-scope one."""
    Xs = fitted.store.arrays()[0]
    base = fitted.oos_similarity_threshold()
    assert base == fitted.oos_similarity_threshold(fitted.settings.oos_quantile)
    loose = fitted.oos_similarity_threshold(0.3)
    assert loose >= base and fitted.oos_similarity_threshold() == base
    loo = np.sort((Xs @ Xs.T - 2 * np.eye(len(Xs))).max(axis=1))  # every row here: <= 512 stored
    assert np.mean(loo < loose) == pytest.approx(0.3, abs=0.05)
    with pytest.raises(InvalidDataError):
        fitted.oos_similarity_threshold(1.0)


def test_out_of_scope_centroid_flags_far_texts_and_few_known_ones(fitted: RedClassifier) -> None:
    fitted.settings = fitted.settings.model_copy(update={"oos": "centroid", "oos_quantile": 0.05})
    Xs = fitted.store.arrays()[0]
    far = -np.mean(Xs, axis=0, keepdims=True)
    far = np.repeat(far / np.linalg.norm(far), 2, axis=0)
    r = fitted.rank_embeddings(far)
    assert r.out_of_scope.all() and r.labels == [OUT_OF_SCOPE, OUT_OF_SCOPE]
    noisy = Xs + np.random.default_rng(0).normal(0, 0.02, Xs.shape).astype(np.float32)
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    assert fitted.rank_embeddings(noisy).out_of_scope.mean() <= 0.1  # calibrated: few in-scope flagged


def _centroid_scores(Xs: np.ndarray, y: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Brute force: mean of the cosine to the nearest stored row and to the nearest label mean."""
    labs = sorted(set(y.tolist()))
    C = np.stack([Xs[y == lab].mean(axis=0) for lab in labs])
    C /= np.linalg.norm(C, axis=1, keepdims=True)
    return 0.5 * ((X @ Xs.T).max(axis=1) + (X @ C.T).max(axis=1))


def test_scope_similarity_centroid_is_the_mean_of_nearest_example_and_nearest_centroid(
    fitted: RedClassifier,
) -> None:
    fitted.settings = fitted.settings.model_copy(update={"oos": "centroid"})
    Xs, y, _ = fitted.store.arrays()
    X = np.random.default_rng(1).normal(size=(7, Xs.shape[1])).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    np.testing.assert_allclose(fitted.scope_similarity(X), _centroid_scores(Xs, y, X), rtol=1e-5, atol=1e-5)
    fitted.settings = fitted.settings.model_copy(update={"oos": "nearest"})
    np.testing.assert_allclose(fitted.scope_similarity(X), fitted.nearest_similarity(X))


def test_label_centroids_tell_a_known_class_edge_from_elsewhere(fitted: RedClassifier) -> None:
    """``label_centroid_similarity``: the cosine to the nearest label mean; ``own_centroid_similarity(q)``:
    the q-quantile of the stored rows' cosine to their own label's mean (stream.proposal_known_quantile)."""
    Xs, y, _ = fitted.store.arrays()
    labs = sorted(set(y.tolist()))
    C = np.stack([Xs[y == lab].mean(axis=0) for lab in labs])
    C /= np.linalg.norm(C, axis=1, keepdims=True)
    X = np.random.default_rng(2).normal(size=(5, Xs.shape[1])).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    np.testing.assert_allclose(fitted.label_centroid_similarity(X), (X @ C.T).max(axis=1), atol=1e-5)
    own = np.array([Xs[i] @ C[labs.index(y[i])] for i in range(len(Xs))])
    assert fitted.own_centroid_similarity(0.75) == pytest.approx(float(np.quantile(own, 0.75)), abs=1e-5)
    assert fitted.own_centroid_similarity(0.25) <= fitted.own_centroid_similarity(0.75)
    edge = Xs[y == labs[0]][:8].mean(axis=0, keepdims=True)  # a group of one label's own texts
    edge /= np.linalg.norm(edge)
    assert fitted.label_centroid_similarity(edge)[0] >= fitted.own_centroid_similarity(0.75)
    assert fitted.label_centroid_similarity(X).max() < fitted.own_centroid_similarity(0.75)  # elsewhere
    sim, line = fitted.known_class_edge(edge[0], 0.75)  # the pair the worker's check compares
    assert sim == pytest.approx(float(fitted.label_centroid_similarity(edge)[0])) and sim >= line
    with pytest.raises(InvalidDataError):
        fitted.own_centroid_similarity(1.0)


def test_scope_threshold_is_the_quantile_of_leave_one_out_scores(fitted: RedClassifier) -> None:
    """Each stored row scored against the store without it (its own label's mean without it too)."""
    fitted.settings = fitted.settings.model_copy(update={"oos": "centroid", "oos_quantile": 0.2})
    Xs, y, _ = fitted.store.arrays()
    assert len(Xs) <= 2048  # every row is sampled
    loo = []
    for i in range(len(Xs)):
        keep = np.arange(len(Xs)) != i
        loo.append(_centroid_scores(Xs[keep], y[keep], Xs[i : i + 1])[0])
    assert fitted.scope_threshold() == pytest.approx(float(np.quantile(loo, 0.2)), abs=1e-5)


def test_scope_threshold_samples_the_fit_rows_against_the_whole_store(
    fitted: RedClassifier, blobs: Blobs
) -> None:
    """Learned rows (the loop's uncertain picks) are scored against, never sampled for calibration."""
    fitted.settings = fitted.settings.model_copy(update={"oos": "centroid", "oos_quantile": 0.2})
    n_fit = fitted.n_examples
    X, texts, y = blobs.sample(10, seed=11)
    fitted.learn_embeddings(X, [f"learned {t}" for t in texts], y)
    Xs, ys, stored = fitted.store.arrays()
    rep = fitted.store.representative()
    assert len(Xs) == n_fit + len(X) and rep.sum() == n_fit
    assert not any(stored[i].startswith("learned") for i in np.flatnonzero(rep))
    loo = []
    for i in np.flatnonzero(rep):
        keep = np.arange(len(Xs)) != i
        loo.append(_centroid_scores(Xs[keep], ys[keep], Xs[i : i + 1])[0])
    assert fitted.scope_threshold() == pytest.approx(float(np.quantile(loo, 0.2)), abs=1e-5)


def test_scope_threshold_survives_save_and_load(fitted: RedClassifier, blobs: Blobs, tmp_path: Path) -> None:
    X, texts, y = blobs.sample(10, seed=12)
    fitted.learn_embeddings(X, [f"learned {t}" for t in texts], y)
    fitted.save(tmp_path / "model")
    loaded = RedClassifier.load(tmp_path / "model")
    assert loaded.store.representative().tolist() == fitted.store.representative().tolist()
    for clf in (fitted, loaded):
        clf.settings = clf.settings.model_copy(update={"oos": "centroid"})
    assert loaded.scope_threshold() == pytest.approx(fitted.scope_threshold(), abs=1e-6)


def test_scope_centroids_follow_the_store(fitted: RedClassifier) -> None:
    """Learned rows move their label's centroid: the cache is keyed on the store's arrays."""
    fitted.settings = fitted.settings.model_copy(update={"oos": "centroid"})
    Xs, y, _ = fitted.store.arrays()
    probe = np.random.default_rng(2).normal(size=(1, Xs.shape[1])).astype(np.float32)
    probe /= np.linalg.norm(probe)  # far from every label: its centroid term is small now
    fitted.scope_similarity(probe)  # fills the cache
    n = int(np.sum(y == y[0]))
    fitted.learn_embeddings(np.repeat(probe, n, axis=0), [f"probe {i}" for i in range(n)], [str(y[0])] * n)
    Xs, y, _ = fitted.store.arrays()
    np.testing.assert_allclose(
        fitted.scope_similarity(probe), _centroid_scores(Xs, y, probe), rtol=1e-5, atol=1e-5
    )


def test_out_of_scope_when_every_expert_says_noise(fitted: RedClassifier) -> None:
    fitted.settings = fitted.settings.model_copy(update={"oos": "noise"})
    far = -np.mean(fitted.store.arrays()[0], axis=0, keepdims=True)  # opposite of all the data
    far = np.repeat(far / np.linalg.norm(far), 2, axis=0)
    Z = fitted.log_odds(far)
    r = fitted.rank_embeddings(far)
    assert np.array_equal(r.out_of_scope, Z.max(axis=1) < 0)
    assert all(lab == OUT_OF_SCOPE for lab, oos in zip(r.labels, r.out_of_scope, strict=True) if oos)
    assert all(len(c) == 5 and c[0][0] in fitted.labels for c in r.candidates)  # candidates stay real labels


def test_learn_adapts_to_drift_and_bumps_the_version(blobs: Blobs, settings: ExpertSettings) -> None:
    X, texts, y = blobs.sample(15)
    # the drift is learnt by re-solves (every 16 rows here); gradient steps alone are deliberately small
    settings = settings.model_copy(update={"resolve_every": 16})
    clf = RedClassifier(settings=settings).fit_embeddings(X, texts, y)
    # label_00 drifts: its texts now sit next to a fresh direction
    drift = make_blobs(n_labels=1, dim=32, noise=0.08, seed=50)
    Xd, _, _ = drift.sample(60, seed=3)
    yd = np.full(len(Xd), "label_00", dtype=object)
    before = np.mean(np.array(clf.predict_embeddings(Xd[40:])) == "label_00")
    v0 = clf.model_version
    for start in range(0, 40, 8):
        clf.learn_embeddings(Xd[start : start + 8], [f"drift {i}" for i in range(8)], yd[start : start + 8])
    clf.settle()
    assert clf.model_version >= v0 + 5 and clf.resolves >= 1
    after = np.mean(np.array(clf.predict_embeddings(Xd[40:])) == "label_00")
    assert after > max(before, 0.8)
    Xt, _, yt = blobs.sample(5, seed=9)
    assert np.mean(np.array(clf.predict_embeddings(Xt)) == yt) > 0.9  # the rest is not forgotten
    assert clf.n_examples == 20 * 15 + 40


def test_learn_with_hard_negatives_pushes_label_down(fitted: RedClassifier, blobs: Blobs) -> None:
    X, _, y = blobs.sample(1, seed=11)
    x, lab = X[:1], str(y[0])
    col = fitted.labels.index(lab)
    before = fitted.predict_proba_embeddings(x)[0, col]
    for _ in range(4):
        fitted.learn_embeddings(np.repeat(x, 4, axis=0), ["bad"] * 4, [lab] * 4, valid=[False] * 4)
    assert fitted.predict_proba_embeddings(x)[0, col] < before
    assert fitted.store.n_negatives == 16
    fitted.refit()  # hard negatives survive a full refit
    assert fitted.predict_proba_embeddings(x)[0, col] < before


def test_learn_with_an_unknown_label_adds_it(fitted: RedClassifier) -> None:
    Xn, texts, _ = make_blobs(n_labels=1, dim=32, seed=77).sample(8)
    fitted.learn_embeddings(Xn, texts, ["fresh"] * 8)
    assert "fresh" in fitted.labels
    assert np.mean(np.array(fitted.predict_embeddings(Xn)) == "fresh") > 0.8


def test_add_class_places_without_reshuffling(fitted: RedClassifier) -> None:
    before = fitted.subsets
    Xn, texts, _ = make_blobs(n_labels=1, dim=32, seed=123).sample(10)
    fitted.add_class_embeddings("newcomer", Xn, texts)
    after = fitted.subsets
    assert len(after) == len(before) + 1  # all subsets of 4 were full
    assert after[:-1] == before and after[-1] == ["newcomer"]
    assert np.mean(np.array(fitted.predict_embeddings(Xn)) == "newcomer") > 0.8
    # a second new label fills the new subset rather than opening yet another
    Xm, texts_m, _ = make_blobs(n_labels=1, dim=32, seed=124).sample(10)
    fitted.add_class_embeddings("second", Xm, texts_m)
    assert fitted.subsets[-1] == ["newcomer", "second"]
    assert fitted.subsets[:-1] == before


def test_add_class_needs_examples_or_description(fitted: RedClassifier) -> None:
    v = fitted.model_version
    with pytest.raises(InvalidDataError, match="needs examples or a description"):
        fitted.add_class_embeddings("empty", np.zeros((0, 32), np.float32), [])
    assert fitted.model_version == v and "empty" not in fitted.labels


@pytest.mark.parametrize(
    "bad, match",
    [(np.full(32, np.nan, np.float32), "NaN"), (np.zeros(5, np.float32), "shape"), ("words", "numbers")],
)
def test_a_bad_description_embedding_is_refused_before_anything_changes(
    fitted: RedClassifier, blobs: Blobs, tmp_path: Path, bad: object, match: str
) -> None:
    """A NaN description row spread to every weight; a wrong shape failed half-way, and the model then
    saved but would not load."""
    X, texts, y = blobs.sample(3)
    v, labels, described = fitted.model_version, fitted.labels, dict(fitted._desc_emb)
    with pytest.raises(InvalidDataError, match=match):
        fitted.add_class_embeddings("newcomer", X[:0], [], "about it", bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidDataError, match=match):
        fitted.add_class_embeddings("newcomer", X[:2], texts[:2], "about it", bad)  # type: ignore[arg-type]
    assert (fitted.model_version, fitted.labels, fitted._desc_emb.keys()) == (v, labels, described.keys())
    assert "newcomer" not in fitted.descriptions
    fitted.save(tmp_path / "m")
    assert RedClassifier.load(tmp_path / "m").labels == labels
    with pytest.raises(InvalidDataError, match=match):
        fitted.fit_embeddings(X, texts, y, {"label_00": "about it"}, {"label_00": bad})  # type: ignore[dict-item]
    assert fitted.model_version == v and fitted.labels == labels


@pytest.mark.parametrize("texts", [[None, "a", "b"], ["", "a", "b"], ["  ", "a", "b"]])
def test_fit_embeddings_refuses_empty_texts_like_fit(blobs: Blobs, texts: list[str]) -> None:
    X, _, y = blobs.sample(1)
    with pytest.raises(InvalidDataError, match="empty or non-string"):
        RedClassifier().fit_embeddings(X[:3], texts, y[:3])


def test_text_api_with_descriptions(hash_embedder: HashEmbedder) -> None:
    texts = [
        "my card has not arrived yet",
        "when will my new card arrive",
        "card delivery is late",
        "what is the exchange rate",
        "exchange rate for euros",
        "rate to convert dollars",
        "I want to close my account",
        "please delete my account",
        "how do I close the account",
    ]
    labels = ["card_arrival"] * 3 + ["exchange_rate"] * 3 + ["close_account"] * 3
    clf = RedClassifier(hash_embedder, ExpertSettings(subset_size=2)).fit(
        texts, labels, descriptions={"exchange_rate": "questions about the exchange rate"}
    )
    assert clf.predict(["has my card arrived"]) == ["card_arrival"]
    proba = clf.predict_proba(["exchange rate for dollars"])[0]
    assert set(proba) == set(clf.labels) and max(proba, key=proba.__getitem__) == "exchange_rate"
    assert clf.descriptions == {"exchange_rate": "questions about the exchange rate"}
    clf.describe_class("close_account", "the customer wants to close their account")
    assert clf.descriptions["close_account"].startswith("the customer")
    clf.add_class(
        "refund", description="asking for a refund", examples=["I want a refund", "refund my money"]
    )
    assert clf.predict(["can I get a refund"]) == ["refund"]
    e = hash_embedder.encode(["card arrive"])[0]
    assert clf.nearest_examples("card_arrival", e, c=2)[0] in texts[:3]
    r = clf.rank(["my new card has not arrived"], top_k=2)
    assert r.candidates[0][0][0] == "card_arrival"
    clf.learn(["where is my card"], ["card_arrival"])
    assert clf.n_examples == 9 + 2 + 1


def test_remove_and_describe_unknown_labels(fitted: RedClassifier, blobs: Blobs) -> None:
    v = fitted.model_version
    fitted.remove_class("label_03")
    assert "label_03" not in fitted.labels and fitted.model_version == v + 1
    assert sorted(lab for s in fitted.subsets for lab in s) == fitted.labels
    X, _, y = blobs.sample(5, seed=4)
    keep = y != "label_03"
    assert "label_03" not in fitted.predict_embeddings(X)
    assert np.mean(np.array(fitted.predict_embeddings(X[keep])) == y[keep]) > 0.95
    with pytest.raises(UnknownLabelError):
        fitted.remove_class("label_03")
    with pytest.raises(UnknownLabelError):
        fitted.describe_class("nope", "x")
    with pytest.raises(UnknownLabelError):
        fitted.nearest_examples("nope", X[0])


def test_store_cap_bounds_memory(blobs: Blobs) -> None:
    X, texts, y = blobs.sample(15)
    clf = RedClassifier(settings=ExpertSettings(subset_size=4, max_examples_per_label=10)).fit_embeddings(
        X, texts, y
    )
    assert clf.n_examples == 20 * 10
    clf.learn_embeddings(X[:15], [f"newer {i}" for i in range(15)], y[:15])
    assert clf.store.count(str(y[0])) == 10
    assert clf.store.label_examples(str(y[0]))[1][-1] == "newer 14"  # newest kept


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda c, X: c.learn_embeddings(X[:2], ["a"], ["label_00", "label_01"]), "one label per text"),
        (lambda c, X: c.learn_embeddings(X[:2], ["a"], ["label_00"]), "one embedding per text"),
        (lambda c, X: c.learn_embeddings(X[:1], [""], ["label_00"]), "empty"),
        (lambda c, X: c.learn_embeddings(X[:1], ["t"], [OUT_OF_SCOPE]), "reserved"),
        (lambda c, X: c.learn_embeddings(X[:1], ["t"], ["label_00"], valid=["yes"]), "bool"),
        (lambda c, X: c.rank_embeddings(X[:, :5]), "shape"),
        (lambda c, X: c.learn_embeddings(X[:1] * np.nan, ["t"], ["label_00"]), "NaN"),
        (lambda c, X: c.rank_embeddings([["a"] * X.shape[1]]), "numbers"),
        (lambda c, X: c.learn_embeddings([["a"] * X.shape[1]], ["t"], ["label_00"]), "numbers"),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(fitted: RedClassifier, blobs: Blobs, call, match) -> None:
    X, _, _ = blobs.sample(1)
    v, n = fitted.model_version, fitted.n_examples
    with pytest.raises(InvalidDataError, match=match):
        call(fitted, X)
    assert (fitted.model_version, fitted.n_examples) == (v, n)


def test_unfitted_model_says_what_to_do() -> None:
    with pytest.raises(ModelError, match="fit"):
        RedClassifier().rank_embeddings(np.zeros((1, 4), np.float32))


# -- persistence --------------------------------------------------------------------------------------


def _saved(fitted: RedClassifier, tmp_path: Path) -> Path:
    fitted.learn_embeddings(
        fitted.store.arrays()[0][:2], ["neg a", "neg b"], ["label_01", "label_01"], [False, False]
    )
    fitted._descriptions["label_02"] = "a described label"
    fitted._desc_emb["label_02"] = fitted.store.arrays()[0][0]
    path = tmp_path / "model"
    fitted.save(path)
    return path


def test_save_load_round_trip(fitted: RedClassifier, blobs: Blobs, tmp_path: Path) -> None:
    path = _saved(fitted, tmp_path)
    assert sorted(p.name for p in path.iterdir()) == ["arrays.npz", "manifest.json", "texts.json"]
    loaded = RedClassifier.load(path)
    X, _, _ = blobs.sample(4, seed=5)
    np.testing.assert_allclose(loaded.log_odds(X), fitted.log_odds(X), atol=1e-5)
    assert loaded.labels == fitted.labels and loaded.subsets == fitted.subsets
    assert loaded.model_version == fitted.model_version
    assert loaded.descriptions == fitted.descriptions
    assert loaded.n_examples == fitted.n_examples and loaded.store.n_negatives == 2
    assert loaded.settings == fitted.settings
    assert loaded.nearest_examples("label_05", X[0], 3) == fitted.nearest_examples("label_05", X[0], 3)
    # the loaded model keeps learning, and saving again over the same directory works
    loaded.learn_embeddings(X[:3], ["a", "b", "c"], ["label_00"] * 3)
    loaded.save(path)
    assert RedClassifier.load(path).model_version == fitted.model_version + 3  # one per learned row


@pytest.mark.parametrize(
    "damage, match",
    [
        (
            lambda p: (p / "arrays.npz").write_bytes((p / "arrays.npz").read_bytes()[:-10] + b"0" * 10),
            "checksum",
        ),
        (lambda p: (p / "texts.json").unlink(), "missing"),
        (lambda p: (p / "manifest.json").write_text("{not json"), "not valid JSON"),
        (lambda p: (p / "manifest.json").unlink(), "no manifest.json"),
    ],
)
def test_load_refuses_corrupt_files(fitted: RedClassifier, tmp_path: Path, damage, match) -> None:
    path = _saved(fitted, tmp_path)
    damage(path)
    with pytest.raises(ModelFileError, match=match):
        RedClassifier.load(path)


def _edit_manifest(path: Path, **changes: object) -> None:
    m = json.loads((path / "manifest.json").read_text())
    m.update(changes)
    (path / "manifest.json").write_text(json.dumps(m))


def test_load_refuses_foreign_or_future_files(fitted: RedClassifier, tmp_path: Path) -> None:
    path = _saved(fitted, tmp_path)
    _edit_manifest(path, format_version=99)
    with pytest.raises(ModelFileError, match="format version 99"):
        RedClassifier.load(path)
    _edit_manifest(path, format="someone-elses-model", format_version=FORMAT_VERSION)
    with pytest.raises(ModelFileError, match="not a driftlabel"):
        RedClassifier.load(path)
    _edit_manifest(path, format="driftlabel.red-classifier", subsets=[["label_00"]])
    with pytest.raises(ModelFileError, match="partition"):
        RedClassifier.load(path)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("hello")
    with pytest.raises(ModelFileError, match="not a driftlabel model"):
        RedClassifier.load(tmp_path / "foreign")
    with pytest.raises(ModelFileError, match="refusing to write"):
        fitted.save(tmp_path / "foreign")


def test_load_refuses_a_different_embedder(
    fitted: RedClassifier, tmp_path: Path, hash_embedder: HashEmbedder
) -> None:
    path = _saved(fitted, tmp_path)
    with pytest.raises(ModelFileError, match="embedder"):
        RedClassifier.load(path, embedder=hash_embedder)  # 64-d, the model is 32-d


# -- the real thing -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_minilm_on_a_clinc150_slice(embedder, data_dir, tmp_path: Path) -> None:
    """12 CLINC150 intents, 10 examples each, real packaged MiniLM: fit, rank, learn, save/load, classify."""
    from driftlabel.models.datasets import load_clinc150

    ds = load_clinc150(data_dir)
    intents = sorted(set(ds.train.labels))[:: len(set(ds.train.labels)) // 12][:12]
    pick = [i for i, lab in enumerate(ds.train.labels) if lab in intents]
    tr = [i for n, i in enumerate(pick) if n % 10 < 1]  # 10 of 100 per intent
    te = [i for i, lab in enumerate(ds.test.labels) if lab in intents][::3]
    clf = RedClassifier(embedder, ExpertSettings(subset_size=4, oos="nearest")).fit(
        [ds.train.texts[i] for i in tr], [ds.train.labels[i] for i in tr]
    )
    assert clf.n_subsets == 3
    texts_te = [ds.test.texts[i] for i in te]
    y_te = np.array([ds.test.labels[i] for i in te])
    r = clf.rank(texts_te)
    acc = np.mean(np.array([c[0][0] for c in r.candidates]) == y_te)
    assert acc > 0.8, f"accuracy {acc:.2f} on 12 CLINC intents"
    oos = clf.rank(ds.oos_test.texts[:100])
    assert oos.out_of_scope.mean() > r.out_of_scope.mean()  # out-of-scope texts look out of scope more often
    clf.learn([ds.train.texts[i] for i in pick[1:40:10]], [ds.train.labels[i] for i in pick[1:40:10]])
    clf.save(tmp_path / "m")
    again = RedClassifier.load(tmp_path / "m", embedder=embedder)
    assert again.predict(texts_te[:10]) == clf.predict(texts_te[:10])


def test_joint_incremental_step_equals_expert_by_expert(blobs: Blobs) -> None:
    """The one-matmul update of all experts is the same arithmetic as each expert's own learn_many."""
    X, texts, y = blobs.sample(15)
    X2, t2, y2 = blobs.sample(4, seed=21)
    valid = np.ones(len(y2), dtype=bool)
    valid[::7] = False  # with some hard negatives
    out = []
    for joint in (True, False):
        clf = RedClassifier(settings=ExpertSettings(subset_size=4, joint_updates=joint, replay=0.0))
        clf.fit_embeddings(X, texts, y)
        clf.learn_embeddings(X2, t2, y2, valid=valid.tolist())
        out.append(clf.log_odds(X2))
    np.testing.assert_allclose(out[0], out[1], atol=1e-6)
