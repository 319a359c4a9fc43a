"""A static (model2vec-style) embedder distilled from the packaged MiniLM: a table lookup per token.

For streams too busy for a transformer: every WordPiece token of the model's vocabulary is run through
the sentence-transformer ONCE (as the one-token sentence ``[CLS] tok [SEP]``, mean-pooled), the table
is rotated/reduced by PCA and each row weighted by a SIF factor ``a / (a + p(token))`` with ``p`` from
Zipf's law on the vocabulary rank (frequent tokens such as "the" say little about the class). A text's
vector is then the mean of its tokens' rows: no attention, no torch at inference, tens of thousands of
texts per second on one core. Context is lost, so accuracy drops a few points; see docs/embedders.md.

The table (30,522 x 256 float16 ~ 15 MB) is built on first use (about a minute, with progress) and kept
under ``<cache_dir>/static/`` keyed by the source model, dimension and recipe version; nothing is
committed to the repository.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from driftlabel.models.embeddings import (
    PACKAGED_MODEL_NAME,
    CachedEmbedder,
    EmbedderSettings,
    default_cache_dir,
    l2_normalize,
    packaged_model_path,
)
from driftlabel.models.errors import ModelFileError

__all__ = [
    "RECIPE_VERSION",
    "SIF_COEFFICIENT",
    "TABLE_VERSION",
    "StaticEmbedder",
    "distill_token_vectors",
    "sif_weights",
]

log = logging.getLogger(__name__)

#: Version of the distilled table on disk (pooling + PCA); bump to force a rebuild.
TABLE_VERSION = 1
#: Version of the embedder as a whole (table + weighting), part of its ``name``: vectors from different
#: recipes must never be mixed in one model.
RECIPE_VERSION = 2
#: SIF smoothing ``a``: smaller = frequent tokens weigh less. model2vec uses 1e-4; 3e-3 measured best here
#: (LogisticRegression, 10-shot, seed 0: CLINC150 85.2 % vs 78.0 % at 1e-4 and 83.3 % unweighted;
#: BANKING77 75.8 % vs 75.5 % at 1e-3 and 74.4 % at 1e-2).
SIF_COEFFICIENT = 3e-3
#: BERT's uncased vocabulary lists whole words by frequency from id 1996 ("the"); lower ids are
#: [PAD]/[unused]/specials and single characters.
_FIRST_WORD_ID = 1996
_SINGLE_CHAR_RANK = 50


def sif_weights(vocab_size: int, coefficient: float = SIF_COEFFICIENT) -> np.ndarray:
    """Per-token weight ``a / (a + p)``, ``p`` Zipfian in vocabulary rank (ids >= 1996 are by frequency)."""
    ids = np.arange(vocab_size)
    if vocab_size > _FIRST_WORD_ID:
        rank = np.where(ids >= _FIRST_WORD_ID, ids - _FIRST_WORD_ID + 1, _SINGLE_CHAR_RANK).astype(np.float64)
    else:  # not a BERT vocabulary: assume ids are frequency-ordered
        rank = ids.astype(np.float64) + 1.0
    p = (1.0 / rank) / np.sum(1.0 / np.arange(1, vocab_size + 1))
    return (coefficient / (coefficient + p)).astype(np.float32)


def _source_fingerprint(model_dir: Path) -> str:
    """Identify the source model by its config files and weight sizes (cheap; no full-weight hash)."""
    h = hashlib.sha1()
    for f in sorted(model_dir.rglob("*")):
        if f.is_file() and f.suffix in (".json", ".txt", ".safetensors", ".bin"):
            h.update(str(f.relative_to(model_dir)).encode())
            h.update(str(f.stat().st_size).encode())
            if f.suffix == ".json" and f.stat().st_size < 1_000_000:
                h.update(f.read_bytes())
    return h.hexdigest()[:12]


def distill_token_vectors(
    model_dir: Path,
    dim: int | None,
    *,
    batch_size: int = 512,
    threads: int | None = None,
    progress: bool = True,
) -> np.ndarray:
    """The unweighted table: every vocabulary token through the model, then PCA to ``dim``; float32."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from tokenizers import Tokenizer

    from driftlabel.models.embeddings import SentenceTransformerEmbedder

    st = SentenceTransformerEmbedder(model_dir, cache_size=0, threads=threads)
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    vocab_size = tok.get_vocab_size()
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    if cls_id is None or sep_id is None:
        raise ModelFileError(
            f"{model_dir}: the static embedder needs a BERT-style tokenizer with [CLS]/[SEP]"
        )
    transformer = st.model[0].auto_model
    t0 = time.perf_counter()
    rows = np.empty((vocab_size, st.dim), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, vocab_size, batch_size):
            ids = torch.arange(start, min(start + batch_size, vocab_size))
            inp = torch.stack([torch.full_like(ids, cls_id), ids, torch.full_like(ids, sep_id)], dim=1)
            hidden = transformer(input_ids=inp, attention_mask=torch.ones_like(inp)).last_hidden_state
            # mean over [CLS] tok [SEP] = sentence-transformers' mean pooling of the one-token sentence
            rows[start : start + len(ids)] = hidden.mean(dim=1).numpy()
            if progress:
                done = start + len(ids)
                print(
                    f"\rdistilling static embedder: {done}/{vocab_size} tokens "
                    f"({100 * done / vocab_size:.0f}%)",
                    end="\n" if done == vocab_size else "",
                    file=sys.stderr,
                )
    log.info("embedded %d tokens in %.1fs", vocab_size, time.perf_counter() - t0)
    centered = rows - rows.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(centered, full_matrices=False)  # PCA: rotate (and optionally cut) to main axes
    k = st.dim if dim is None else min(dim, st.dim)
    reduced = centered @ vt[:k].T
    return reduced.astype(np.float32)


class StaticEmbedder(CachedEmbedder):
    """Mean of distilled, SIF-weighted token vectors; unit rows; no transformer at inference."""

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        dim: int | None = 256,
        cache_dir: str | os.PathLike[str] | None = None,
        batch_size: int = 1024,
        cache_size: int = 10_000,
        threads: int | None = None,
        progress: bool = True,
    ) -> None:
        super().__init__(batch_size=batch_size, cache_size=cache_size)
        from tokenizers import Tokenizer

        source = Path(model_path) if model_path is not None else packaged_model_path()
        tok_file = source / "tokenizer.json"
        if not tok_file.is_file():
            raise ModelFileError(
                f"{source} has no tokenizer.json; the static embedder needs a fast (HF) tokenizer"
            )
        source_name = PACKAGED_MODEL_NAME if model_path is None else source.name
        self.name = f"{source_name}-static-v{RECIPE_VERSION}-d{dim or 'full'}"
        root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        fingerprint = _source_fingerprint(source)
        table_name = f"{source_name}-table-v{TABLE_VERSION}-d{dim or 'full'}-{fingerprint}.npy"
        self.table_path = root / "static" / table_name
        table = self._load_or_build(source, dim, threads, progress)
        self.vectors = np.ascontiguousarray(table * sif_weights(len(table))[:, None], dtype=np.float32)
        self.dim = int(self.vectors.shape[1])
        self.tokenizer = Tokenizer.from_file(str(tok_file))
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        unk = self.tokenizer.token_to_id("[UNK]")
        self._unk = 0 if unk is None else unk
        if self.vectors.shape[0] != self.tokenizer.get_vocab_size():
            raise ModelFileError(f"{self.table_path} does not match the tokenizer; delete it to rebuild")

    def _load_or_build(
        self, source: Path, dim: int | None, threads: int | None, progress: bool
    ) -> np.ndarray:
        path = self.table_path
        if path.is_file():
            try:
                table = np.load(path)
            except (OSError, ValueError) as exc:
                raise ModelFileError(f"{path} is corrupt ({exc}); delete it and it will be rebuilt") from exc
            return table.astype(np.float32)
        log.warning("building the static embedding table %s (one-off, about a minute)", path)
        table = distill_token_vectors(source, dim, threads=threads, progress=progress)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        with tmp.open("wb") as fh:
            np.save(fh, table.astype(np.float16))
        tmp.replace(path)
        meta = {
            "source": str(source),
            "dim": table.shape[1],
            "table_version": TABLE_VERSION,
        }
        path.with_suffix(".json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        return table.astype(np.float16).astype(np.float32)  # exactly what a later load sees

    @classmethod
    def from_settings(cls, settings: EmbedderSettings) -> StaticEmbedder:
        return cls(
            settings.model_path,
            dim=settings.static_dim,
            cache_dir=settings.cache_dir,
            batch_size=max(settings.batch_size, 1024),
            cache_size=settings.cache_size,
            threads=settings.threads,
        )

    def _embed(self, texts: list[str]) -> np.ndarray:
        encs = self.tokenizer.encode_batch(texts, add_special_tokens=False)
        ids_per_text = [e.ids or [self._unk] for e in encs]  # an empty text gets [UNK], never a zero row
        lengths = np.fromiter((len(i) for i in ids_per_text), dtype=np.intp, count=len(ids_per_text))
        flat = np.fromiter((t for ids in ids_per_text for t in ids), dtype=np.intp, count=int(lengths.sum()))
        indptr = np.concatenate(([0], np.cumsum(lengths)))
        # a (texts x vocabulary) count matrix times the table: sums rows without materialising the gather
        counts = sp.csr_matrix(
            (np.ones(len(flat), dtype=np.float32), flat, indptr), shape=(len(texts), self.vectors.shape[0])
        )
        return l2_normalize(np.asarray(counts @ self.vectors))  # the mean's direction = the sum's

    def warmup(self) -> None:
        self._embed(["warm up"])
