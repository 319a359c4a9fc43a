"""Shared helpers for the benchmarks: cached embeddings, datasets, k-shot slices, timing, reports.

Embedding a dataset is the slow part of every benchmark (MiniLM: ~100-200 texts/s on 2 cores), so
:func:`cached_embeddings` stores each array once under ``.cache/embeddings/`` (git-ignored)::

    .cache/embeddings/<embedder name>/<key>-<sha1 of the texts, 12 hex>.npy     float32 (n, dim), unit rows

with ``key`` = ``<dataset>-<split>`` for the shared sets, e.g.
``.cache/embeddings/all-MiniLM-L6-v2/clinc150-train-1a2b3c4d5e6f.npy``. The text hash means a changed
dataset or split never reuses a stale array. Usage from a benchmark (run from the repository root as
``python -m bench.bench_x`` or ``python bench/bench_x.py``)::

    from bench.common import dataset_embeddings, k_shot_indices, load_embedder
    emb = load_embedder()                           # or CachedArrayEmbedder("all-MiniLM-L6-v2", 384)
    data = dataset_embeddings(emb, "clinc150")      # {split: Embedded(X, texts, labels)}
    idx = k_shot_indices(data["train"].labels, 10, seed=0)
    Xtr, ytr = data["train"].X[idx], data["train"].y[idx]

Already cached for ``all-MiniLM-L6-v2`` (and for ``all-MiniLM-L6-v2-onnx-int8`` /
``all-MiniLM-L6-v2-static-v2-d256``: clinc150 train/test, banking77 test): ``clinc150-{train,val,test,
oos_train,oos_val,oos_test}``, ``banking77-{train,test}``, ``onet-{train,test}`` (O*NET split of
:func:`driftlabel.models.datasets.load_onet`: 25 % test per occupation, seed 0). Without the model::

    X = np.load(cache_path("all-MiniLM-L6-v2", "clinc150-train", load_dataset("clinc150").train.texts))

Pre-compute every set for one embedder (progress on stderr; a no-op when cached)::

    python -m bench.common --embedder sentence-transformers      # or static / onnx

To load a cached array without the model, :class:`CachedArrayEmbedder` stands in for the embedder
(it has ``name`` and ``dim`` and raises if asked to encode anything not yet cached).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # so `python bench/x.py` can `import bench.common`
    sys.path.insert(0, str(REPO_ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from driftlabel.models.datasets import (  # noqa: E402
    SPLITS,
    Dataset,
    k_shot_indices,
    load_dataset,
)
from driftlabel.models.embeddings import (  # noqa: E402
    Embedder,
    EmbedderSettings,
    encode_in_chunks,
    load_embedder,
)

__all__ = [
    "CACHE_DIR",
    "DATASETS",
    "RESULTS_DIR",
    "CachedArrayEmbedder",
    "Embedded",
    "best_of",
    "cache_path",
    "cached_embeddings",
    "cdf_plot",
    "dataset_embeddings",
    "k_shot_indices",
    "line_plot",
    "load_dataset",
    "load_embedder",
    "logreg_accuracy",
    "machine_info",
    "markdown_table",
    "write_report",
]

CACHE_DIR = Path(os.environ.get("DRIFTLABEL_BENCH_CACHE", REPO_ROOT / ".cache" / "embeddings"))
RESULTS_DIR = REPO_ROOT / "bench" / "results"
DATASETS = ("clinc150", "banking77", "onet")


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def texts_hash(texts: Sequence[str]) -> str:
    """12 hex digits of sha1 over the texts (NUL-separated): the cache key's content part."""
    h = hashlib.sha1()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:12]


def cache_path(embedder_name: str, key: str, texts: Sequence[str]) -> Path:
    """Where :func:`cached_embeddings` keeps the array for these texts."""
    return CACHE_DIR / _safe(embedder_name) / f"{_safe(key)}-{texts_hash(texts)}.npy"


class CachedArrayEmbedder:
    """Stands in for an embedder when only its cached arrays are wanted (no model load)."""

    def __init__(self, name: str, dim: int) -> None:
        self.name = name
        self.dim = dim

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        raise RuntimeError(
            f"{self.name}: these texts are not cached; run `python -m bench.common` or pass the real embedder"
        )

    def warmup(self) -> None:
        return None


def cached_embeddings(
    embedder: Embedder, texts: Sequence[str], key: str, *, progress: bool = True
) -> np.ndarray:
    """Embeddings of ``texts``: from the disk cache, or computed with progress and saved atomically."""
    path = cache_path(embedder.name, key, texts)
    if path.is_file():
        x = np.load(path)
        if x.shape == (len(texts), embedder.dim) and x.dtype == np.float32:
            return x
        print(f"{path}: shape {x.shape} does not match; recomputing", file=sys.stderr)
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    x = encode_in_chunks(
        embedder, list(texts), chunk_size=512, progress=progress, desc=f"{embedder.name} {key}"
    )
    dt = time.perf_counter() - t0
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    with tmp.open("wb") as fh:
        np.save(fh, x)
    tmp.replace(path)
    if progress:
        print(f"{embedder.name} {key}: {len(texts)} texts in {dt:.1f}s -> {path}", file=sys.stderr)
    return x


@dataclass(frozen=True)
class Embedded:
    """One split with its embeddings: ``X`` (n, dim) float32, ``texts``, ``y`` (object array of labels)."""

    X: np.ndarray
    texts: list[str]
    y: np.ndarray

    @property
    def labels(self) -> np.ndarray:
        return self.y

    def __len__(self) -> int:
        return len(self.texts)

    def take(self, idx: np.ndarray) -> Embedded:
        return Embedded(self.X[idx], [self.texts[i] for i in idx], self.y[idx])


def dataset_embeddings(
    embedder: Embedder, dataset: str | Dataset, splits: Sequence[str] | None = None, *, progress: bool = True
) -> dict[str, Embedded]:
    """Every non-empty split of a dataset, embedded (cached): ``{"train": Embedded, "test": ..., ...}``."""
    ds = load_dataset(dataset) if isinstance(dataset, str) else dataset
    out: dict[str, Embedded] = {}
    for s in splits or SPLITS:
        split = ds.split(s)
        if len(split):
            x = cached_embeddings(embedder, split.texts, f"{ds.name}-{s}", progress=progress)
            out[s] = Embedded(x, split.texts, np.asarray(split.labels, dtype=object))
    return out


def logreg_accuracy(
    Xtr: np.ndarray, ytr: np.ndarray, Xte: np.ndarray, yte: np.ndarray, C: float = 10.0
) -> float:
    """The reference baseline: scikit-learn LogisticRegression on the embeddings, test accuracy."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=C, max_iter=2000)
    clf.fit(Xtr, ytr)
    return float(np.mean(clf.predict(Xte) == yte))


def best_of(fn: Callable[[], Any], repeats: int = 3) -> tuple[float, Any]:
    """Best wall time of ``repeats`` calls (the least disturbed by other load) and the last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def machine_info() -> str:
    """One line on where and under what load a figure was measured."""
    try:
        load = "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except OSError:  # pragma: no cover
        load = "load average n/a"
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        cpus = os.cpu_count() or 0
    return f"{platform.machine()} {cpus} CPUs, Python {platform.python_version()}, {load} (machine shared)"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; floats shown with 1-3 significant decimals by the caller."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines)


def write_report(name: str, title: str, body: str, out_dir: Path | None = None) -> Path:
    """Write ``<out_dir>/<name>.md`` (default ``bench/results``) with a title, the machine line and the
    body; returns the path."""
    out_dir = RESULTS_DIR if out_dir is None else out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.md"
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    path.write_text(f"# {title}\n\n_{stamp}; {machine_info()}_\n\n{body.rstrip()}\n", encoding="utf-8")
    return path


def line_plot(
    name: str,
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    logx: bool = False,
) -> Path:
    """``bench/results/<name>.png``: one line per series ``{label: (xs, ys)}`` (accuracy vs k, rate vs
    batch size, ...). Returns the path; embed it in the report as ``![title](<name>.png)``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for label, (xs, ys) in series.items():
        ax.plot(list(xs), list(ys), marker="o", label=label)
    if logx:
        ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend()
    fig.tight_layout()
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def cdf_plot(name: str, samples: dict[str, Sequence[float]], *, xlabel: str, title: str) -> Path:
    """``bench/results/<name>.png``: the empirical CDF of each sample set (e.g. latencies in ms)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for label, xs in samples.items():
        v = np.sort(np.asarray(list(xs), dtype=float))
        if len(v):
            ax.step(v, np.arange(1, len(v) + 1) / len(v), where="post", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("share of items")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(samples) > 1:
        ax.legend()
    fig.tight_layout()
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Pre-compute the cached embeddings of every shared dataset for one embedder kind."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--embedder", default="sentence-transformers", choices=["sentence-transformers", "static", "onnx"]
    )
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS), choices=list(DATASETS))
    args = parser.parse_args(argv)
    emb = load_embedder(EmbedderSettings(kind=args.embedder))
    emb.warmup()
    for name in args.datasets:
        data = dataset_embeddings(emb, name)
        print(f"{name}: " + ", ".join(f"{s}={e.X.shape}" for s, e in data.items()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
