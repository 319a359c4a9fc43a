"""Uncertainty of ranked predictions: entropy, margin, top-k, all vectorised over a micro-batch.

These are the signals the delegation step thresholds on (send to the judge when entropy is high or the
margin is small), so they are computed on whole probability matrices, never per item.
"""

from __future__ import annotations

import numpy as np

__all__ = ["entropy", "margin", "normalized_entropy", "softmax", "top_k"]


def softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax along ``axis``."""
    z = z - np.max(z, axis=axis, keepdims=True)
    np.exp(z, out=z)
    z /= np.sum(z, axis=axis, keepdims=True)
    return z


def entropy(p: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) of each row of a probability matrix; 0 for a one-hot row."""
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        logp = np.where(p > 0, np.log(np.where(p > 0, p, 1.0)), 0.0)
    return np.asarray(-(p * logp).sum(axis=-1))


def normalized_entropy(p: np.ndarray) -> np.ndarray:
    """Entropy divided by log(number of classes), in [0, 1], comparable across label-set sizes."""
    k = p.shape[-1]
    return entropy(p) / np.log(k) if k > 1 else np.zeros(p.shape[:-1])


def top_k(p: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the ``k`` largest entries of each row, best first.

    ``argpartition`` then a small sort keeps this O(n·C + n·k log k) instead of sorting every row.
    """
    n, c = p.shape
    k = max(0, min(k, c))
    if k == 0:
        return np.zeros((n, 0), dtype=np.intp), np.zeros((n, 0), dtype=p.dtype)
    if k < c:
        part = np.argpartition(-p, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(c), (n, c)).copy()
    vals = np.take_along_axis(p, part, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(vals, order, axis=1)


def margin(p: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 probability per row (1.0 when there is a single class)."""
    if p.shape[-1] < 2:
        return np.ones(p.shape[0])
    _, vals = top_k(p, 2)
    return np.asarray(vals[:, 0] - vals[:, 1], dtype=np.float64)
