"""Combining the experts: one matmul per micro-batch, a product of experts, a ranked candidate list.

Expert ``s`` gives ``p_s(L | x)`` for its labels and ``p_s(noise | x)`` = the sum over its noise classes
(one per group of similar other labels). Because every expert's noise is built the same way (other
subsets' examples at ``noise_ratio`` x the mean label size), the ratio ``p_s(L|x) / p_s(noise|x)``
estimates ``p(L|x) / p(not s|x)`` on the same scale in every expert, so the combination is the product
of experts

    P(L | x)  ∝  p_s(L | x) / p_s(noise | x)  =  exp(z_L),   z_L = w_L · x + b_L - logsumexp_g(w_g · x + b_g)

normalised over all labels (with a temperature). For linear experts all columns are stacked once into a
``(dim, n_columns)`` matrix, so scoring a micro-batch is one matmul plus a log-sum-exp over the noise
groups, whatever the number of experts. ``out_of_scope`` is "every expert says noise", i.e. every ``z_L``
is below 0 (or ``oos_threshold``). Non-linear experts (river) fall back to per-expert probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from driftlabel.models.experts import Expert, is_noise
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
    """All experts' columns stacked into one linear map (built once per model version).

    Expert ``s`` has its labels' columns and one column per noise group. The log-odds of label ``L`` of
    subset ``s`` against that expert's noise is ``z_L - logsumexp_g(z_noise_g)``: one matmul over every
    expert's columns, one gather of the noise block ``(n, S, G)``, one log-sum-exp over the groups.
    """

    def __init__(
        self, labels: Sequence[str], subsets: Sequence[Sequence[str]], experts: Sequence[Expert], dim: int
    ) -> None:
        self.labels = list(labels)
        pos = {lab: i for i, lab in enumerate(self.labels)}
        L = len(self.labels)
        blocks_w: list[np.ndarray] = []
        blocks_b: list[np.ndarray] = []
        self.label_col = np.zeros(L, dtype=np.intp)
        self.label_expert = np.zeros(L, dtype=np.intp)
        self.covered = np.zeros(L, dtype=bool)  # a label no expert covers can never win
        noise_cols: list[list[int]] = []
        self._fallback: list[tuple[Expert, np.ndarray, np.ndarray, np.ndarray]] = []
        offset = 0
        for subset, expert in zip(subsets, experts, strict=True):
            classes = expert.classes_.tolist()
            noise = [j for j, c in enumerate(classes) if is_noise(c)]
            if not noise:
                continue
            cols = [j for j, c in enumerate(classes) if not is_noise(c) and c in pos and c in subset]
            targets = np.array([pos[classes[j]] for j in cols], dtype=np.intp)
            coef = getattr(expert, "coef_", None)
            if coef is None:
                self._fallback.append((expert, np.array(cols, dtype=np.intp), targets, np.array(noise)))
                self.covered[targets] = True
                continue
            si = len(noise_cols)
            blocks_w.append(np.asarray(coef, dtype=np.float32))
            blocks_b.append(np.asarray(getattr(expert, "intercept_"), dtype=np.float32))  # noqa: B009
            self.label_col[targets] = offset + np.array(cols, dtype=np.intp)
            self.label_expert[targets] = si
            self.covered[targets] = True
            noise_cols.append([offset + j for j in noise])
            offset += len(classes)
        self.W = np.concatenate(blocks_w, axis=1) if blocks_w else np.zeros((dim, 0), dtype=np.float32)
        self.b = np.concatenate(blocks_b) if blocks_b else np.zeros(0, dtype=np.float32)
        G = max((len(c) for c in noise_cols), default=1)
        # pad experts with fewer noise groups by repeating a column, then mask it out of the log-sum-exp
        padded = [c + [c[0]] * (G - len(c)) for c in noise_cols]
        self.noise_idx = np.array(padded, dtype=np.intp).reshape(-1, G)
        self.noise_pad = np.array(
            [[0.0] * len(c) + [-np.inf] * (G - len(c)) for c in noise_cols], dtype=np.float32
        ).reshape(-1, G)
        self._linear = self.covered.copy()
        for _, _, targets, _ in self._fallback:
            self._linear[targets] = False

    def log_odds(self, X: np.ndarray) -> np.ndarray:
        """``z[i, L]`` = log p_s(L|x_i) - log p_s(noise|x_i) for every label, shape (n, n_labels)."""
        X = np.asarray(X, dtype=np.float32)
        n = len(X)
        Z = np.full((n, len(self.labels)), -np.inf, dtype=np.float32)
        if self.W.shape[1]:
            A = X @ self.W
            A += self.b
            N = A[:, self.noise_idx] + self.noise_pad  # (n, S, G)
            m = N.max(axis=2)
            lse = m + np.log(np.exp(N - m[:, :, None]).sum(axis=2))
            lin = np.flatnonzero(self._linear)
            Z[:, lin] = A[:, self.label_col[lin]] - lse[:, self.label_expert[lin]]
        for expert, cols, targets, noise in self._fallback:
            P = np.clip(expert.predict_proba_many(X), 1e-12, 1.0)
            Z[:, targets] = np.log(P[:, cols]) - np.log(P[:, noise].sum(axis=1, keepdims=True))
        return Z


def make_ranking(
    Z: np.ndarray,
    labels: Sequence[str],
    top: int = 5,
    temperature: float = 1.0,
    oos_threshold: float | None = None,
    out_of_scope: np.ndarray | None = None,
) -> Ranking:
    """Turn log-odds into a :class:`Ranking` (probabilities, candidates, entropy, margin, out-of-scope).

    Out of scope: the rows of ``out_of_scope`` when given, else every log-odds below ``oos_threshold``
    ("every expert says noise"), else none.
    """
    n = len(Z)
    P = softmax(np.asarray(Z, dtype=np.float64) / temperature) if n else np.zeros((0, len(labels)))
    k = max(1, min(top, len(labels)))
    idx, vals = top_k(P, max(k, 2) if len(labels) > 1 else 1)
    if out_of_scope is not None:
        oos = np.asarray(out_of_scope, dtype=bool).reshape(n)
    elif oos_threshold is not None and n:
        oos = Z.max(axis=1) < oos_threshold
    else:
        oos = np.zeros(n, dtype=bool)
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
