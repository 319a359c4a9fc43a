"""Label subsets: embed each label, reduce with UMAP, group mutually least-similar labels greedily.

R.E.D. gives each expert labels that are *unlike* each other, so that each expert's job is easy and the
hard distinctions (between similar labels) are made across experts, each of which has seen the other as
noise. Steps:

1. :func:`label_embeddings`: a label is the mean of its examples' embeddings, with its description's
   embedding blended in when one is given; rows are L2-normalised.
2. :func:`reduce_labels`: UMAP (cosine metric, seeded, so deterministic) to a few dimensions, which makes
   the similarity reflect the label manifold rather than raw 384-d cosine. With few labels UMAP is
   meaningless (it needs neighbours), so below ``min_labels`` the raw embeddings are used.
3. :func:`greedy_subsets`: ``ceil(L / n)`` subsets; the most confusable labels are placed first, each into
   the subset (with room) whose most similar member is least similar to it.
4. :func:`place_label`: a label added later goes to the least similar subset with room, or a new subset,
   leaving every other label where it is.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import sparse

from driftlabel.models.errors import InvalidDataError

__all__ = [
    "cluster_labels",
    "greedy_subsets",
    "label_embeddings",
    "nearest_label",
    "place_label",
    "reduce_labels",
    "similarity",
]


def _normalize(E: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(E, axis=1, keepdims=True)
    return np.asarray(E / np.where(norms > 0, norms, 1.0))


def label_embeddings(
    X: np.ndarray,
    y: Sequence[str] | np.ndarray,
    labels: Sequence[str],
    descriptions: Mapping[str, np.ndarray] | None = None,
    description_weight: float = 0.3,
) -> np.ndarray:
    """One unit vector per label: mean example embedding, blended with the description embedding.

    A label with no example but a description is its description's embedding; with neither it is an error.
    """
    X = np.asarray(X, dtype=np.float64)
    y_arr = np.asarray(y, dtype=object).astype(str)
    labels = list(labels)
    pos = {lab: i for i, lab in enumerate(labels)}
    uniq, inv = np.unique(y_arr, return_inverse=True)
    missing = [u for u in uniq.tolist() if u not in pos]
    if missing:
        raise InvalidDataError(f"examples have labels not in the label list: {missing[:5]}")
    rows = np.array([pos[u] for u in uniq.tolist()], dtype=np.intp)[inv.reshape(-1)]
    # per-label sums as a sparse one-hot product (np.add.at took 28 ms of an O*NET add_class's 190)
    onehot = sparse.csr_matrix(
        (np.ones(len(rows)), (rows, np.arange(len(rows)))), shape=(len(labels), len(rows))
    )
    sums = np.asarray(onehot @ X)
    counts = np.bincount(rows, minlength=len(labels)).astype(np.float64)
    E = _normalize(sums / np.maximum(counts, 1.0)[:, None])
    for lab, vec in (descriptions or {}).items():
        if lab not in pos:
            continue
        i = pos[lab]
        d = np.asarray(vec, dtype=np.float64).reshape(-1)
        d = d / (np.linalg.norm(d) or 1.0)
        E[i] = d if counts[i] == 0 else (1.0 - description_weight) * E[i] + description_weight * d
    empty = [labels[i] for i in np.flatnonzero(np.linalg.norm(E, axis=1) == 0)]
    if empty:
        raise InvalidDataError(f"labels with neither examples nor a description: {empty[:5]}; give each one")
    return _normalize(E)


def reduce_labels(
    E: np.ndarray, n_components: int = 8, n_neighbors: int = 15, seed: int = 0, min_labels: int = 24
) -> np.ndarray:
    """UMAP-reduced label coordinates (deterministic for ``seed``); raw embeddings below ``min_labels``."""
    n = len(E)
    if n < max(min_labels, n_components + 2):
        return np.asarray(E, dtype=np.float64)
    import umap

    reducer = umap.UMAP(
        n_components=n_components,
        n_neighbors=min(n_neighbors, n - 1),
        metric="cosine",
        random_state=seed,  # fixes the seed and forces single-threaded, hence reproducible, layout
        init="spectral" if n > n_components + 1 else "random",
        min_dist=0.1,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Z = reducer.fit_transform(np.asarray(E, dtype=np.float32))
    return np.asarray(Z, dtype=np.float64)


def similarity(Z: np.ndarray) -> np.ndarray:
    """Pairwise similarity of label coordinates: negative Euclidean distance (higher = more alike).

    Euclidean fits UMAP's output space; on unit vectors it is a monotone function of cosine similarity.
    """
    sq = np.sum(Z * Z, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * Z @ Z.T, 0.0)
    return np.asarray(-np.sqrt(d2))


def greedy_subsets(Z: np.ndarray, n: int = 8) -> list[list[int]]:
    """Partition label indices into ``ceil(L/n)`` subsets of mutually least-similar labels.

    Labels are placed most-confusable first (highest similarity to their nearest neighbour), each into the
    subset with room whose closest member is farthest from it. ``M[i, s]`` keeps label i's highest
    similarity to subset s, updated per placement, so the whole run is O(L^2) numpy, fine at 1,000 labels.
    Deterministic: ties break by index.
    """
    if n < 1:
        raise InvalidDataError("subset size n must be at least 1")
    L = len(Z)
    if L == 0:
        return []
    m = math.ceil(L / n)
    S = similarity(Z)
    np.fill_diagonal(S, -np.inf)
    nearest = S.max(axis=1) if L > 1 else np.zeros(1)
    order = np.argsort(-nearest, kind="stable")
    M = np.full((L, m), -np.inf)
    sizes = np.zeros(m, dtype=int)
    subsets: list[list[int]] = [[] for _ in range(m)]
    for i in order.tolist():
        score = np.where(sizes < n, M[i], np.inf)
        # least similar subset; among equally empty ones, the smallest (keeps sizes balanced)
        best = int(np.lexsort((sizes, score))[0])
        subsets[best].append(i)
        sizes[best] += 1
        M[:, best] = np.maximum(M[:, best], S[:, i])
    return [sorted(s) for s in subsets if s]


def place_label(e: np.ndarray, E_members: Sequence[np.ndarray], n: int) -> int:
    """Index of the subset a new label goes to, or ``len(E_members)`` for a new subset.

    ``E_members[s]`` holds the (unit) label embeddings of subset s. The chosen subset is the one with room
    whose most similar member is least similar to ``e`` (cosine in embedding space: the UMAP map is not
    refitted, so that no other label moves).
    """
    best, best_score = len(E_members), np.inf
    for s, members in enumerate(E_members):
        if len(members) >= n:
            continue
        score = float(np.max(np.asarray(members) @ e)) if len(members) else -np.inf
        if score < best_score:
            best, best_score = s, score
    return best


def cluster_labels(E: np.ndarray, k: int, seed: int = 0, iterations: int = 50) -> np.ndarray:
    """Spherical k-means of label embeddings into ``min(k, n)`` groups of similar labels (deterministic).

    The groups are the experts' noise classes: a noise class per group of similar labels lets an expert
    say "this is one of those other labels" with a direction per group instead of one for all of them.
    """
    E = _normalize(np.asarray(E, dtype=np.float64))
    n = len(E)
    k = max(1, min(k, n))
    if k == 1:
        return np.zeros(n, dtype=np.intp)
    rng = np.random.default_rng(seed)
    # k-means++ seeding on cosine distance
    centers = [int(rng.integers(n))]
    d = 1.0 - E @ E[centers[0]]
    for _ in range(1, k):
        p = np.maximum(d, 0.0)
        total = p.sum()
        nxt = int(rng.choice(n, p=p / total)) if total > 0 else int(rng.integers(n))
        centers.append(nxt)
        d = np.minimum(d, 1.0 - E @ E[nxt])
    C = E[centers].copy()
    assign = np.full(n, -1, dtype=np.intp)
    for _ in range(iterations):
        new = np.argmax(E @ C.T, axis=1)
        if np.array_equal(new, assign):
            break
        assign = new
        for j in range(k):
            members = E[assign == j]
            C[j] = members.sum(axis=0) if len(members) else E[int(rng.integers(n))]
        C = _normalize(C)
    return assign.astype(np.intp)


def nearest_label(e: np.ndarray, E: np.ndarray) -> int:
    """Index of the row of ``E`` most similar (cosine) to ``e``."""
    return int(np.argmax(_normalize(np.asarray(E, dtype=np.float64)) @ _normalize(np.asarray(e)[None, :])[0]))
