"""Label subsets: label embeddings, greedy least-similar grouping, placement of new labels, UMAP."""

from __future__ import annotations

import math

import numpy as np
import pytest

from driftlabel.models import InvalidDataError, greedy_subsets, label_embeddings, place_label, reduce_labels


def _unit(X: np.ndarray) -> np.ndarray:
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def test_label_embedding_is_normalised_mean_blended_with_description() -> None:
    X = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    E = label_embeddings(X, ["a", "a", "b"], ["a", "b"])
    np.testing.assert_allclose(E[0], _unit(np.array([[0.5, 0.5, 0]]))[0])
    np.testing.assert_allclose(E[1], [0, 0, 1.0])
    E2 = label_embeddings(
        X, ["a", "a", "b"], ["a", "b"], {"b": np.array([1.0, 0, 0])}, description_weight=0.5
    )
    np.testing.assert_allclose(E2[1], _unit(np.array([[0.5, 0, 0.5]]))[0])
    # a label known only from its description is its description
    E3 = label_embeddings(X[:2], ["a", "a"], ["a", "c"], {"c": np.array([0, 0, 2.0])})
    np.testing.assert_allclose(E3[1], [0, 0, 1.0])


def test_label_embedding_refuses_labels_without_data() -> None:
    with pytest.raises(InvalidDataError, match="neither examples nor a description"):
        label_embeddings(np.eye(3), ["a", "a", "a"], ["a", "b"])
    with pytest.raises(InvalidDataError, match="not in the label list"):
        label_embeddings(np.eye(3), ["a", "a", "z"], ["a"])


@pytest.mark.parametrize(
    "n_labels, n", [(1, 8), (5, 8), (8, 8), (9, 8), (37, 8), (1000, 8), (30, 1), (30, 3)]
)
def test_greedy_subsets_partition_with_bounded_sizes(n_labels: int, n: int) -> None:
    Z = np.random.default_rng(1).normal(size=(n_labels, 6))
    groups = greedy_subsets(Z, n)
    flat = sorted(i for g in groups for i in g)
    assert flat == list(range(n_labels))  # a partition
    assert len(groups) == math.ceil(n_labels / n)
    assert max(len(g) for g in groups) <= n
    assert max(len(g) for g in groups) - min(len(g) for g in groups) <= 1  # balanced
    assert greedy_subsets(Z, n) == groups  # deterministic


def test_greedy_subsets_separate_similar_labels() -> None:
    """8 pairs of near-duplicate labels into subsets of 4: no pair may share a subset."""
    rng = np.random.default_rng(0)
    base = _unit(rng.normal(size=(8, 16)))
    twins = _unit(base + 0.01 * rng.normal(size=base.shape))
    Z = np.concatenate([base, twins])  # label i and i+8 are twins
    for g in greedy_subsets(Z, 4):
        assert len({i % 8 for i in g}) == len(g)


def test_place_label_least_similar_subset_with_room_else_new() -> None:
    e = np.array([1.0, 0.0, 0.0])
    members = [
        np.array([[0.9, 0.1, 0.0]]),
        np.array([[0.0, 1.0, 0.0]]),
        np.array([[0.0, 0.0, 1.0], [0.0, 0.6, 0.8]]),
    ]
    members = [_unit(m) for m in members]
    assert place_label(e, members, n=2) == 1  # subset 2 is as dissimilar but full
    assert place_label(e, members, n=3) in (1, 2)
    assert place_label(e, members[:1], n=1) == 1  # all full: a new subset


def test_reduce_labels_skips_umap_for_few_labels() -> None:
    E = _unit(np.random.default_rng(0).normal(size=(10, 32)))
    np.testing.assert_array_equal(reduce_labels(E, min_labels=24), E)


@pytest.mark.slow
def test_umap_reduction_is_deterministic_for_a_seed() -> None:
    E = _unit(np.random.default_rng(0).normal(size=(60, 32)))
    Z1 = reduce_labels(E, n_components=5, seed=3, min_labels=24)
    Z2 = reduce_labels(E, n_components=5, seed=3, min_labels=24)
    assert Z1.shape == (60, 5)
    np.testing.assert_allclose(Z1, Z2)
