"""Fixtures of the models tests: synthetic label clusters, a tiny deterministic embedder, a fitted model.

Most tests work on embeddings directly (``*_embeddings`` methods) with well-separated synthetic clusters,
so they check behaviour in milliseconds; the text-level API is exercised with :class:`HashEmbedder`
(a real, deterministic bag-of-words embedder, not a mock of MiniLM) and, in the slow integration test,
with the real packaged MiniLM on a slice of CLINC150.
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pytest

from driftlabel.models import ExpertSettings, RedClassifier


class HashEmbedder:
    """Bag of hashed words, L2-normalised: texts sharing words are similar. Honours the Embedder contract."""

    name = "test-hash-64"
    dim = 64

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in re.findall(r"\w+", t.lower()):
                h = int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little")
                out[i, h % self.dim] += 1.0 if (h >> 32) & 1 else -1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms > 0, norms, 1.0)

    def warmup(self) -> None:
        return None


@dataclass
class Blobs:
    """Synthetic labelled clusters on the unit sphere."""

    centers: np.ndarray
    labels: list[str]
    noise: float
    seed: int

    def sample(self, per_label: int, seed: int | None = None) -> tuple[np.ndarray, list[str], np.ndarray]:
        rng = np.random.default_rng(self.seed + 1 if seed is None else seed)
        idx = np.repeat(np.arange(len(self.labels)), per_label)
        X = self.centers[idx] + self.noise * rng.normal(size=(len(idx), self.centers.shape[1]))
        X /= np.linalg.norm(X, axis=1, keepdims=True)
        y = np.array(self.labels, dtype=object)[idx]
        texts = [f"{lab} example {i}" for i, lab in enumerate(y.tolist())]
        return X.astype(np.float32), texts, y


def make_blobs(n_labels: int = 20, dim: int = 32, noise: float = 0.08, seed: int = 0) -> Blobs:
    rng = np.random.default_rng(seed)
    C = rng.normal(size=(n_labels, dim))
    C /= np.linalg.norm(C, axis=1, keepdims=True)
    return Blobs(C, [f"label_{i:02d}" for i in range(n_labels)], noise, seed)


@pytest.fixture(scope="module")
def blobs() -> Blobs:
    return make_blobs()


@pytest.fixture
def settings() -> ExpertSettings:
    return ExpertSettings(subset_size=4)


@pytest.fixture(scope="module")
def _fitted_once(blobs: Blobs) -> RedClassifier:
    X, texts, y = blobs.sample(15)
    return RedClassifier(settings=ExpertSettings(subset_size=4)).fit_embeddings(X, texts, y)


@pytest.fixture
def fitted(_fitted_once: RedClassifier) -> RedClassifier:
    """20 labels x 15 examples, subsets of 4 (so 5 experts), fitted on embeddings; a fresh copy per test."""
    return copy.deepcopy(_fitted_once)


@pytest.fixture
def hash_embedder() -> HashEmbedder:
    return HashEmbedder()
