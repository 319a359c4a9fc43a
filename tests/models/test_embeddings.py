"""Embedders: one contract checked over every implementation, plus the cache, settings and factory.

The contract runs on the real models (packaged MiniLM, its static distillation, the int8 ONNX file);
the cache's bookkeeping is checked with a small counting backend so that "misses in ONE call" is visible.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from driftlabel.config import ConfigError, load_settings
from driftlabel.models.embeddings import (
    CachedEmbedder,
    Embedder,
    EmbedderSettings,
    SentenceTransformerEmbedder,
    embedder_for_name,
    encode_in_chunks,
    l2_normalize,
    load_embedder,
)
from driftlabel.models.errors import InvalidDataError, ModelFileError

TEXTS = [
    "book a flight to paris for tomorrow",
    "reserve a plane ticket to paris",
    "what will the weather be like this weekend",
    "how much money is in my checking account",
    "",
    "ok",
]


@pytest.fixture(scope="module")
def static_embedder() -> Iterator[Embedder]:
    """The distilled static embedder (its table is built once per machine, then read from the user cache)."""
    from driftlabel.models.static import StaticEmbedder

    emb = StaticEmbedder(progress=False)
    emb.warmup()
    yield emb


@pytest.fixture(scope="module")
def onnx_embedder() -> Iterator[Embedder]:
    from driftlabel.models.onnx import OnnxEmbedder

    emb = OnnxEmbedder()
    emb.warmup()
    yield emb


IMPLEMENTATIONS = [
    "embedder",
    pytest.param("static_embedder", marks=pytest.mark.slow),
    "onnx_embedder",
]


@pytest.fixture(params=IMPLEMENTATIONS)
def any_embedder(request: pytest.FixtureRequest) -> Embedder:
    emb = request.getfixturevalue(request.param)
    if isinstance(emb, CachedEmbedder):
        emb.cache_clear()
    return emb


# -- the contract, over every implementation ---------------------------------------------------------
def test_contract_attributes(any_embedder: Embedder) -> None:
    assert isinstance(any_embedder, Embedder)
    assert isinstance(any_embedder.name, str) and any_embedder.name
    assert isinstance(any_embedder.dim, int) and any_embedder.dim > 0


def test_contract_shape_dtype_unit_norm(any_embedder: Embedder) -> None:
    X = any_embedder.encode(TEXTS)
    assert X.shape == (len(TEXTS), any_embedder.dim)
    assert X.dtype == np.float32
    assert np.all(np.isfinite(X))
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-5)


def test_contract_deterministic_and_batch_independent(any_embedder: Embedder) -> None:
    a = any_embedder.encode(TEXTS)
    if isinstance(any_embedder, CachedEmbedder):
        any_embedder.cache_clear()
    b = any_embedder.encode(TEXTS[::-1])[::-1]  # other order, other padding, from the model again
    alone = any_embedder.encode([TEXTS[2]])
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(alone[0], a[2], atol=1e-5)


def test_contract_cache_hits_return_the_same_rows(any_embedder: Embedder) -> None:
    first = any_embedder.encode(TEXTS[:3])
    again = any_embedder.encode([TEXTS[1], TEXTS[0], TEXTS[1], TEXTS[2]])
    np.testing.assert_array_equal(again, first[[1, 0, 1, 2]])
    if isinstance(any_embedder, CachedEmbedder):
        info = any_embedder.cache_info()
        assert info.hits >= 4 and info.size >= 3


def test_contract_empty_and_bad_input(any_embedder: Embedder) -> None:
    empty = any_embedder.encode([])
    assert empty.shape == (0, any_embedder.dim) and empty.dtype == np.float32
    with pytest.raises(InvalidDataError, match="single string"):
        any_embedder.encode("a bare string")  # a str is a Sequence[str] to the type checker
    with pytest.raises(InvalidDataError, match="#1"):
        any_embedder.encode(["fine", 42])  # type: ignore[list-item,unused-ignore]


def test_contract_paraphrases_are_closer_than_unrelated(any_embedder: Embedder) -> None:
    X = any_embedder.encode(TEXTS[:4])
    sim = X @ X.T
    assert sim[0, 1] > sim[0, 2] + 0.1
    assert sim[0, 1] > sim[0, 3] + 0.1


def test_contract_warmup_does_not_fill_the_cache(any_embedder: Embedder) -> None:
    any_embedder.warmup()
    if isinstance(any_embedder, CachedEmbedder):
        assert any_embedder.cache_info().size == 0


# -- cache bookkeeping, with a counting backend ------------------------------------------------------
class CountingEmbedder(CachedEmbedder):
    """Deterministic fake backend (vector from the text's bytes) that records every model call."""

    name = "test-counting"
    dim = 8

    def __init__(self, cache_size: int) -> None:
        super().__init__(cache_size=cache_size)
        self.calls: list[list[str]] = []

    def _embed(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        rows = [
            np.frombuffer((t + "\0" * 8).encode()[:8], dtype=np.uint8).astype(np.float32) + 1 for t in texts
        ]
        return l2_normalize(np.stack(rows))


def test_cache_encodes_all_misses_in_one_call_and_dedupes() -> None:
    emb = CountingEmbedder(cache_size=100)
    emb.encode(["a", "b"])
    out = emb.encode(["b", "c", "d", "c", "a"])
    assert emb.calls == [["a", "b"], ["c", "d"]]
    np.testing.assert_array_equal(out[1], out[3])
    assert emb.cache_info().hits == 3 and emb.cache_info().misses == 4


def test_cache_is_bounded_lru() -> None:
    emb = CountingEmbedder(cache_size=2)
    emb.encode(["a", "b"])
    emb.encode(["a"])  # a is now the most recent
    emb.encode(["c"])  # evicts b
    assert emb.cache_info().size == 2
    emb.encode(["a", "b"])
    assert emb.calls[-1] == ["b"]


def test_cache_can_be_disabled() -> None:
    emb = CountingEmbedder(cache_size=0)
    emb.encode(["a", "a"])
    emb.encode(["a"])
    assert emb.calls == [["a", "a"], ["a"]]
    assert emb.cache_info().size == 0


def test_returned_rows_are_copies() -> None:
    emb = CountingEmbedder(cache_size=10)
    x = emb.encode(["a"])
    x[:] = 0
    assert np.linalg.norm(emb.encode(["a"])[0]) == pytest.approx(1.0)


def test_encode_in_chunks_reports_progress() -> None:
    emb = CountingEmbedder(cache_size=0)
    seen: list[tuple[int, int]] = []
    X = encode_in_chunks(
        emb, [str(i) for i in range(25)], chunk_size=10, progress=lambda d, t: seen.append((d, t))
    )
    assert X.shape == (25, 8)
    assert seen == [(10, 25), (20, 25), (25, 25)]


# -- settings and factory ----------------------------------------------------------------------------
def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings(EmbedderSettings).kind == "onnx"  # the default: MiniLM as int8 ONNX
    monkeypatch.setenv("DRIFTLABEL_EMBEDDER_KIND", "sentence-transformers")
    monkeypatch.setenv("DRIFTLABEL_EMBEDDER_CACHE_SIZE", "7")
    s = load_settings(EmbedderSettings)
    assert (s.kind, s.cache_size, s.batch_size) == ("sentence-transformers", 7, 64)


def test_settings_are_validated_and_frozen() -> None:
    with pytest.raises(ConfigError, match="KIND"):
        load_settings(EmbedderSettings, kind="word2vec")
    with pytest.raises(ConfigError):
        load_settings(EmbedderSettings, batch_sise=3)
    s = load_settings(EmbedderSettings)
    with pytest.raises(ValueError):
        s.batch_size = 3


def test_missing_model_path_is_a_clear_error(tmp_path: object) -> None:
    with pytest.raises(ModelFileError, match="does not exist"):
        SentenceTransformerEmbedder(f"{tmp_path}/nowhere")
    with pytest.raises(ModelFileError, match="not found"):
        load_embedder(EmbedderSettings(kind="onnx", model_path=f"{tmp_path}/nowhere.onnx"))


def test_onnx_agrees_with_torch(embedder: Embedder, onnx_embedder: Embedder) -> None:
    a, b = embedder.encode(TEXTS), onnx_embedder.encode(TEXTS)
    assert float(np.min(np.sum(a * b, axis=1))) > 0.98  # int8 weights: near-identical vectors


def test_embedder_for_name_rebuilds_packaged_embedders(embedder: Embedder, onnx_embedder: Embedder) -> None:
    assert embedder_for_name(onnx_embedder.name).name == onnx_embedder.name
    with pytest.raises(ModelFileError, match="DRIFTLABEL_EMBEDDER"):
        embedder_for_name("someone-elses-model")


def test_sif_weights_downweight_frequent_tokens() -> None:
    from driftlabel.models.static import sif_weights

    w = sif_weights(30522)
    assert w.shape == (30522,) and w.dtype == np.float32
    assert np.all((w > 0) & (w <= 1))
    the, word, rare = 1996, 5000, 30000  # BERT ids: "the", a mid-frequency word, a rare piece
    assert w[the] < w[word] < w[rare]


@pytest.mark.slow
def test_embedder_for_name_rebuilds_the_static_embedder(static_embedder: Embedder) -> None:
    assert static_embedder.name.startswith("all-MiniLM-L6-v2-static-")
    again = embedder_for_name(static_embedder.name)
    np.testing.assert_array_equal(again.encode(TEXTS[:2]), static_embedder.encode(TEXTS[:2]))


def test_load_embedder_shares_one_instance_per_settings() -> None:
    a = load_embedder(EmbedderSettings(kind="onnx"))
    assert load_embedder(EmbedderSettings(kind="onnx")) is a
    assert load_embedder(EmbedderSettings(kind="onnx"), shared=False) is not a


def test_onnx_runs_cut_by_padded_tokens() -> None:
    from driftlabel.models.onnx import _runs

    lengths = np.array([3, 4, 4, 5, 9, 30])
    order = np.array([5, 0, 4, 1, 2, 3])
    runs = _runs(lengths, 16, 64, order)
    # each run: at least one text, size x longest <= 16 where it holds more than one
    assert [r.tolist() for r in runs] == [[5, 0, 4], [1], [2], [3]]
    assert sum(len(r) for r in runs) == len(order)
    assert [r.tolist() for r in _runs(lengths, 10_000, 2, order)] == [[5, 0], [4, 1], [2, 3]]


def test_onnx_vectors_do_not_depend_on_how_texts_are_grouped(onnx_embedder: Embedder) -> None:
    """Sorting and cutting into runs changes the work, never a text's vector or the row order."""
    from driftlabel.models.onnx import OnnxEmbedder

    texts = [*TEXTS, "a much longer text that pads every short one " * 12, "ok"]
    one_per_run = OnnxEmbedder(tokens_per_run=1, cache_size=0)
    a, b = onnx_embedder.encode(texts), one_per_run.encode(texts)
    assert a.shape == (len(texts), onnx_embedder.dim)
    np.testing.assert_allclose((a * b).sum(axis=1), 1.0, atol=1e-4)
    with pytest.raises(ValueError, match="tokens_per_run"):
        OnnxEmbedder(tokens_per_run=0)


def test_tokens_per_run_comes_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTLABEL_EMBEDDER_TOKENS_PER_RUN", "96")
    emb = load_embedder(load_settings(EmbedderSettings), shared=False)
    assert getattr(emb, "tokens_per_run", None) == 96
