"""Combining the experts: one matmul per micro-batch, a product of experts, a ranked candidate list.

Expert ``s`` gives ``p_s(L | x)`` for its labels and ``p_s(noise | x)``. Because every expert's noise class
is built the same way (other subsets' examples at ``noise_ratio`` x the mean label size), the ratio
``p_s(L|x) / p_s(noise|x)`` estimates ``p(L|x) / p(not s|x)`` on the same scale in every expert, so the
combination is the product of experts

    P(L | x)  ∝  p_s(L | x) / p_s(noise | x)  =  exp(z_L),   z_L = (w_L - w_noise_s) · x + (b_L - b_noise_s)

normalised over all labels (with a temperature). For linear experts the differences ``w_L - w_noise_s``
are stacked once into a ``(dim, n_labels)`` matrix, so scoring a micro-batch is one matmul whatever the
number of experts. ``out_of_scope`` is "every expert says noise", i.e. every ``z_L`` is below 0 (or
``oos_threshold``). Non-linear experts (river) fall back to ``log p_s(L) - log p_s(noise)`` per expert.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from driftlabel.models.experts import NOISE, Expert
from driftlabel.models.uncertainty import entropy, softmax, top_k

__all__ = ["OUT_OF_SCOPE", "CombinedExperts", "Ranking", "make_ranking"]

OUT_OF_SCOPE = "out_of_scope"


@dataclass(frozen=True)
class Ranking:
    """Per-text results of one micro-batch (row i of every field belongs to text i)."""

    labels: list[str]
    """Top-1 label, or ``"out_of_scope"`` when every expert said noise."""
    scores: np.ndarray
    """Top-1 probability (over the known labels)."""
    candidates: list[list[tuple[str, float]]]
    """Best ``top_k`` labels with probabilities, best first (always real labels, also when out of scope)."""
    entropy: np.ndarray
    """Entropy (nats) of the full distribution over labels."""
    margin: np.ndarray
    """p1 - p2."""
    out_of_scope: np.ndarray
    """True where every expert said noise."""

    def __len__(self) -> int:
        return len(self.labels)


class CombinedExperts:
    """The experts' label-vs-noise log-odds stacked into one linear map (built once per model version)."""

    def __init__(
        self, labels: Sequence[str], subsets: Sequence[Sequence[str]], experts: Sequence[Expert], dim: int
    ) -> None:
        self.labels = list(labels)
        pos = {lab: i for i, lab in enumerate(self.labels)}
        L = len(self.labels)
        self.W = np.zeros((dim, L), dtype=np.float32)
        self.b = np.full(L, -np.inf, dtype=np.float32)  # a label no expert covers can never win
        self._fallback: list[tuple[Expert, np.ndarray, np.ndarray, int]] = []
        for subset, expert in zip(subsets, experts, strict=True):
            classes = expert.classes_.tolist()
            if NOISE not in classes:
                continue
            noise = classes.index(NOISE)
            cols = [j for j, c in enumerate(classes) if c != NOISE and c in pos and c in subset]
            targets = np.array([pos[classes[j]] for j in cols], dtype=np.intp)
            coef = getattr(expert, "coef_", None)
            if coef is not None:
                intercept = np.asarray(getattr(expert, "intercept_"))  # noqa: B009
                self.W[:, targets] = coef[:, cols] - coef[:, [noise]]
                self.b[targets] = intercept[cols] - intercept[noise]
            else:
                self._fallback.append((expert, np.array(cols, dtype=np.intp), targets, noise))
                self.b[targets] = 0.0

    def log_odds(self, X: np.ndarray) -> np.ndarray:
        """``z[i, L]`` = log p_s(L|x_i) - log p_s(noise|x_i) for every label, shape (n, n_labels)."""
        Z = np.asarray(X, dtype=np.float32) @ self.W
        Z += self.b
        for expert, cols, targets, noise in self._fallback:
            P = np.clip(expert.predict_proba_many(X), 1e-12, 1.0)
            Z[:, targets] = np.log(P[:, cols]) - np.log(P[:, [noise]])
        return Z


def make_ranking(
    Z: np.ndarray, labels: Sequence[str], top: int = 5, temperature: float = 1.0, oos_threshold: float = 0.0
) -> Ranking:
    """Turn log-odds into a :class:`Ranking` (probabilities, candidates, entropy, margin, out-of-scope)."""
    n = len(Z)
    P = softmax(np.asarray(Z, dtype=np.float64) / temperature) if n else np.zeros((0, len(labels)))
    k = max(1, min(top, len(labels)))
    idx, vals = top_k(P, max(k, 2) if len(labels) > 1 else 1)
    oos = Z.max(axis=1) < oos_threshold if n else np.zeros(0, dtype=bool)
    lab_arr = np.asarray(labels, dtype=object)
    top1 = lab_arr[idx[:, 0]] if n else np.zeros(0, dtype=object)
    final = np.where(oos, OUT_OF_SCOPE, top1).tolist()
    marg = vals[:, 0] - vals[:, 1] if vals.shape[1] > 1 else np.ones(n)
    names = lab_arr[idx[:, :k]].tolist()
    probs = vals[:, :k].tolist()
    cands = [list(zip(nr, pr, strict=True)) for nr, pr in zip(names, probs, strict=True)]
    return Ranking(
        labels=final,
        scores=vals[:, 0].copy() if n else np.zeros(0),
        candidates=cands,
        entropy=entropy(P),
        margin=np.asarray(marg),
        out_of_scope=np.asarray(oos, dtype=bool),
    )
