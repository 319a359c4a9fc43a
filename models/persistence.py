"""Saving and loading a :class:`RedClassifier`: a directory of plain files, no pickle.

::

    model/
      manifest.json   format name + version, model version, embedder name/dim, settings, labels,
                      descriptions, subsets, experts' classes/params, SHA-256 of the two files below
      arrays.npz      experts' weights, stored embeddings, description embeddings (allow_pickle=False)
      texts.json      stored texts and their labels (valid examples and hard negatives)
      router/         with self-training only: the routing twin, a model directory of its own (saved first)

The manifest is written last, so a directory with a manifest is complete; a checksum mismatch, a
missing file, another format or a newer format version is refused with :class:`ModelFileError` saying
what is wrong and what to do. No code is ever executed from a model file.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import ValidationError

from driftlabel.models.errors import ModelFileError
from driftlabel.models.experts import ExpertSettings, SoftmaxExpert
from driftlabel.models.resolve import ResolveJob
from driftlabel.models.store import ExampleStore, UnlabelledPool

if TYPE_CHECKING:
    from driftlabel.models.classifier import RedClassifier
    from driftlabel.models.embeddings import Embedder

__all__ = ["FORMAT", "FORMAT_VERSION", "load_model", "save_model"]

FORMAT = "driftlabel.red-classifier"
FORMAT_VERSION = 2
MIN_FORMAT_VERSION = 2  # 2: experts have one noise class per noise group
MANIFEST, ARRAYS, TEXTS = "manifest.json", "arrays.npz", "texts.json"
ROUTER = "router"  # sub-directory: self-training's routing twin, saved as a model of its own


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def save_model(clf: RedClassifier, path: str | os.PathLike[str]) -> None:
    """Write ``clf`` to the directory ``path`` (created if needed; an older model there is replaced)."""
    from driftlabel import __version__

    st = clf._state()
    if not st["experts"]:
        raise ModelFileError("nothing to save: the model has no labels yet; fit() it first")
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ModelFileError(f"{p} exists and is not a directory; choose a directory path")
    if p.is_dir() and any(p.iterdir()) and not (p / MANIFEST).is_file():
        raise ModelFileError(
            f"{p} is a non-empty directory without a driftlabel manifest; refusing to write into it"
        )
    p.mkdir(parents=True, exist_ok=True)

    arrays: dict[str, np.ndarray] = {}
    experts_meta = _put_experts(arrays, "expert", st["experts"])
    pending_meta: dict[str, Any] | None = None
    job = st["pending"]
    if job is not None:
        # saved as it stands: its result (waited for, not swapped in) and the batches to replay at the swap,
        # so a restarted worker swaps at the same log position with the same weights as one that never stopped
        result = job.future.result()
        pending_meta = {
            "position": job.position,
            "swap_at": job.swap_at,
            "experts": _put_experts(arrays, "pending", result),
            "batches": _put_rows(arrays, "batch", [(bX, None, by, bv) for bX, by, bv in job.batches]),
        }
    buffer_meta = _put_rows(arrays, "buffer", st["buffer"])  # the partial chunk: a restart continues exactly
    boundary_meta = None  # the weights the partial chunk's provisional step started from (redone at its end)
    if st["buffer"] and st["boundary"] is not None:
        ws, rng_state = st["boundary"]
        for i, (W, c, _n) in enumerate(ws):
            arrays[f"boundary{i}_coef"] = np.asarray(W, dtype=np.float64)
            arrays[f"boundary{i}_intercept"] = np.asarray(c, dtype=np.float64)
        boundary_meta = {"n_seen": [float(n) for _, _, n in ws], "rng": rng_state}
    store: ExampleStore = st["store"]
    state = store.state()
    arrays["store_pos_X"] = np.asarray(state["pos_X"], dtype=np.float32)
    arrays["store_pos_representative"] = np.asarray(state["pos_representative"], dtype=bool)
    arrays["store_neg_X"] = np.asarray(state["neg_X"], dtype=np.float32)
    desc_labels = sorted(st["desc_emb"])
    dim = int(st["dim"])
    pool = st["unlabelled"]
    arrays["unlabelled_X"] = pool.arrays() if pool is not None else np.zeros((0, dim), np.float32)
    arrays["desc_X"] = (
        np.stack([st["desc_emb"][k] for k in desc_labels]).astype(np.float32)
        if desc_labels
        else np.zeros((0, dim), np.float32)
    )
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    arrays_bytes = buf.getvalue()
    texts_bytes = json.dumps(
        {
            "pos_y": state["pos_y"],
            "pos_texts": state["pos_texts"],
            "neg_y": state["neg_y"],
            "neg_texts": state["neg_texts"],
        },
        ensure_ascii=False,
    ).encode("utf-8")
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "driftlabel_version": __version__,
        "model_version": st["model_version"],
        "embedder": {"name": st["embedder_name"], "dim": dim},
        "settings": clf.settings.model_dump(mode="json"),
        "labels": st["labels"],
        "descriptions": st["descriptions"],
        "description_labels": desc_labels,
        "subsets": st["subsets"],
        "noise_groups": st["noise_groups"],
        "schedule": {
            "position": st["position"],
            "resolved_at": st["resolved_at"],
            "resolves": st["resolves"],
            "rng": st["rng"],
            "pending": pending_meta,
            "synthetic": st["synthetic"],
            "buffer": buffer_meta,
            "boundary": boundary_meta,
        },
        "experts": experts_meta,
        "store": {
            "max_per_label": store.max_per_label,
            "max_negatives_per_label": store.max_negatives_per_label,
        },
        "files": {ARRAYS: _sha256(arrays_bytes), TEXTS: _sha256(texts_bytes)},
    }
    manifest_path = p / MANIFEST
    if manifest_path.exists():  # invalidate the old model first so a crash mid-save is never half-loaded
        manifest_path.unlink()
    router = getattr(clf, "_router", None)  # self-training's routing twin: a model of its own, inside
    if router is not None:
        save_model(router, p / ROUTER)
    elif (p / ROUTER).exists():
        shutil.rmtree(p / ROUTER)
    _write_atomic(p / ARRAYS, arrays_bytes)
    _write_atomic(p / TEXTS, texts_bytes)
    _write_atomic(manifest_path, json.dumps(manifest, indent=1, ensure_ascii=False).encode("utf-8"))


def _put_experts(arrays: dict[str, np.ndarray], prefix: str, experts: Sequence[Any]) -> list[dict[str, Any]]:
    """Experts' weights into ``arrays`` (float64: a restart continues bit for bit), their metadata back."""
    meta: list[dict[str, Any]] = []
    for i, expert in enumerate(experts):
        if not isinstance(expert, SoftmaxExpert):
            raise ModelFileError(
                f"{prefix} {i} is a {type(expert).__name__}; only softmax experts can be saved"
            )
        if expert.coef_ is None:
            raise ModelFileError(f"{prefix} {i} was never trained; call refit() before saving")
        arrays[f"{prefix}{i}_coef"] = expert.coef_.astype(np.float64)
        arrays[f"{prefix}{i}_intercept"] = expert.intercept_.astype(np.float64)
        meta.append(
            {
                "kind": "softmax",
                "params": expert.get_params(),
                "classes": [str(c) for c in expert.classes_.tolist()],
                "n_seen": expert.n_seen_,
            }
        )
    return meta


def _representative(arrays: dict[str, np.ndarray], n: int) -> np.ndarray | None:
    """The stored examples' representative flags; None for files written before they were recorded."""
    flags = arrays.get("store_pos_representative")
    if flags is None:
        return None
    if flags.shape != (n,):
        raise ModelFileError(f"representative flags: shape {flags.shape} for {n} stored examples")
    return flags.astype(bool)


def _get_experts(
    arrays: dict[str, np.ndarray], prefix: str, metas: Sequence[dict[str, Any]], dim: int
) -> list[SoftmaxExpert]:
    experts = []
    for i, meta in enumerate(metas):
        if meta.get("kind", "softmax") != "softmax":
            raise ModelFileError(f"{prefix} {i} has unknown kind {meta.get('kind')!r}")
        e = SoftmaxExpert(**meta["params"])
        e.classes_ = np.array(meta["classes"], dtype=object)
        e.coef_ = arrays[f"{prefix}{i}_coef"].astype(np.float64)
        e.intercept_ = arrays[f"{prefix}{i}_intercept"].astype(np.float64)
        e.n_seen_ = float(meta["n_seen"])
        if e.coef_.shape != (dim, len(e.classes_)) or e.intercept_.shape != (len(e.classes_),):
            raise ModelFileError(
                f"{prefix} {i}: weight shapes {e.coef_.shape}/{e.intercept_.shape} do not match its classes"
            )
        experts.append(e)
    return experts


Rows = tuple[np.ndarray, "list[str] | None", np.ndarray, np.ndarray]


def _put_rows(arrays: dict[str, np.ndarray], prefix: str, rows: Sequence[Rows]) -> list[dict[str, Any]]:
    """Micro-batches of (X, texts or None, labels, valid) into ``arrays``; their labels/texts back."""
    meta: list[dict[str, Any]] = []
    for j, (X, texts, y, v) in enumerate(rows):
        arrays[f"{prefix}{j}_X"] = np.asarray(X, dtype=np.float32)
        arrays[f"{prefix}{j}_valid"] = np.asarray(v, dtype=bool)
        meta.append(
            {
                "labels": [str(t) for t in np.asarray(y).tolist()],
                "texts": None if texts is None else list(texts),
            }
        )
    return meta


def _get_rows(arrays: dict[str, np.ndarray], prefix: str, metas: Sequence[Any]) -> list[Rows]:
    out: list[Rows] = []
    for j, m in enumerate(metas):
        labels, texts = (
            (m, None) if isinstance(m, list) else (m["labels"], m.get("texts"))
        )  # list: older files
        y = np.array([str(t) for t in labels], dtype=object)
        out.append((arrays[f"{prefix}{j}_X"], None if texts is None else [str(t) for t in texts], y,
                    arrays[f"{prefix}{j}_valid"].astype(bool)))  # fmt: skip
    return out


def _load_pending(meta: dict[str, Any], arrays: dict[str, np.ndarray], dim: int) -> ResolveJob:
    """A saved pending re-solve: its finished result and the batches learned since its snapshot."""
    experts = _get_experts(arrays, "pending", meta["experts"], dim)
    future: concurrent.futures.Future[list[Any]] = concurrent.futures.Future()
    future.set_result(experts)
    batches = [(X, y, v) for X, _, y, v in _get_rows(arrays, "batch", meta["batches"])]
    return ResolveJob(int(meta["position"]), int(meta["swap_at"]), future, batches)


def _read_checked(p: Path, name: str, manifest: dict[str, Any]) -> bytes:
    f = p / name
    if not f.is_file():
        raise ModelFileError(f"{f} is missing; the model directory is incomplete: save it again")
    data = f.read_bytes()
    want = manifest.get("files", {}).get(name)
    if want != _sha256(data):
        raise ModelFileError(
            f"{f} does not match its checksum in {MANIFEST}: the file is corrupt or was edited; save it again"
        )
    return data


def load_model(path: str | os.PathLike[str], embedder: Embedder | None = None) -> RedClassifier:
    """Read a directory written by :func:`save_model` (see the module docstring for what is checked)."""
    from driftlabel.models.classifier import RedClassifier

    p = Path(path)
    mpath = p / MANIFEST
    if not p.is_dir():
        raise ModelFileError(f"{p} is not a directory; pass the directory given to save()")
    if not mpath.is_file():
        raise ModelFileError(f"{p} has no {MANIFEST}: not a driftlabel model (or an interrupted save)")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{mpath} is not valid JSON ({exc}); the model file is corrupt") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        fmt = manifest.get("format") if isinstance(manifest, dict) else None
        raise ModelFileError(f"{mpath} is not a driftlabel R.E.D. model manifest (format {fmt!r})")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < MIN_FORMAT_VERSION:
        raise ModelFileError(
            f"{p}: model format version {version!r} is not supported "
            f"(this driftlabel reads {MIN_FORMAT_VERSION}..{FORMAT_VERSION}); "
            "use the driftlabel that wrote it, or retrain (`driftlabel train`)"
        )
    arrays_bytes = _read_checked(p, ARRAYS, manifest)
    texts_bytes = _read_checked(p, TEXTS, manifest)
    try:
        clf = _build(manifest, arrays_bytes, texts_bytes, embedder, RedClassifier)
        if (p / ROUTER / MANIFEST).is_file():
            clf._router = load_model(p / ROUTER, embedder)
        return clf
    except ModelFileError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, ValidationError) as exc:
        raise ModelFileError(
            f"{p}: inconsistent model files ({type(exc).__name__}: {exc}); save the model again"
        ) from exc


def _build(
    manifest: dict[str, Any],
    arrays_bytes: bytes,
    texts_bytes: bytes,
    embedder: Embedder | None,
    cls: type[RedClassifier],
) -> RedClassifier:
    emb_meta = manifest["embedder"]
    dim = int(emb_meta["dim"])
    if embedder is not None and (
        embedder.dim != dim or (emb_meta["name"] and embedder.name != emb_meta["name"])
    ):
        raise ModelFileError(
            f"the model was trained with embedder {emb_meta['name']!r} ({dim}-d) but {embedder.name!r} "
            f"({embedder.dim}-d) was given; pass the same embedder or retrain"
        )
    settings = ExpertSettings(**manifest["settings"])
    with np.load(io.BytesIO(arrays_bytes), allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    texts = json.loads(texts_bytes.decode("utf-8"))
    labels = [str(x) for x in manifest["labels"]]
    subsets = [[str(x) for x in s] for s in manifest["subsets"]]
    if sorted(lab for s in subsets for lab in s) != sorted(labels) or len(set(labels)) != len(labels):
        raise ModelFileError("manifest subsets do not partition the labels; the model file is inconsistent")
    for i, meta in enumerate(manifest["experts"]):
        if meta.get("kind") != "softmax":
            raise ModelFileError(f"expert {i} has unknown kind {meta.get('kind')!r}")
    experts = _get_experts(arrays, "expert", manifest["experts"], dim)
    if len(experts) != len(subsets):
        raise ModelFileError(
            f"{len(experts)} experts for {len(subsets)} subsets; the model file is inconsistent"
        )
    pos_X, neg_X, desc_X = arrays["store_pos_X"], arrays["store_neg_X"], arrays["desc_X"]
    for name, X, n in (
        ("stored examples", pos_X, len(texts["pos_texts"])),
        ("hard negatives", neg_X, len(texts["neg_texts"])),
    ):
        if X.ndim != 2 or X.shape != (n, dim):
            raise ModelFileError(f"{name}: array shape {X.shape} does not match {n} texts of dim {dim}")
    sm = manifest["store"]
    store = ExampleStore.from_state(
        dim,
        int(sm["max_per_label"]),
        int(sm["max_negatives_per_label"]),
        (pos_X, texts["pos_y"], texts["pos_texts"]),
        (neg_X, texts["neg_y"], texts["neg_texts"]),
        _representative(arrays, len(texts["pos_texts"])),
    )
    desc_labels = [str(x) for x in manifest["description_labels"]]
    if desc_X.shape != (len(desc_labels), dim):
        raise ModelFileError(f"description embeddings: shape {desc_X.shape} for {len(desc_labels)} labels")
    clf = cls(embedder=embedder, settings=settings)
    clf._embedder_name = emb_meta["name"]
    clf._dim = dim
    clf._labels = labels
    clf._descriptions = {str(k): str(v) for k, v in manifest["descriptions"].items()}
    clf._desc_emb = {k: desc_X[i] for i, k in enumerate(desc_labels)}
    clf._subsets = subsets
    clf._noise_group = {str(k): int(v) for k, v in manifest["noise_groups"].items()}
    if set(clf._noise_group) != set(labels):
        raise ModelFileError("manifest noise groups do not cover the labels; the model file is inconsistent")
    clf._experts = list(experts)
    clf._store = store
    clf._model_version = int(manifest["model_version"])
    sched = manifest.get("schedule")
    if isinstance(sched, dict):  # older files have none: the schedule restarts at 0
        clf._position = int(sched.get("position", 0))
        clf._resolved_at = int(sched.get("resolved_at", 0))
        clf._resolves = int(sched.get("resolves", 0))
        if isinstance(sched.get("rng"), dict):
            clf._rng.bit_generator.state = sched["rng"]
        if isinstance(sched.get("buffer"), list):
            clf._buffer = [(X, t or [], y, v) for X, t, y, v in _get_rows(arrays, "buffer", sched["buffer"])]
            clf._buffered = sum(len(b[0]) for b in clf._buffer)
        bm = sched.get("boundary")
        if isinstance(bm, dict):
            clf._boundary = (
                [
                    (arrays[f"boundary{i}_coef"], arrays[f"boundary{i}_intercept"], float(n))
                    for i, n in enumerate(bm["n_seen"])
                ],
                bm["rng"],
            )
        if isinstance(sched.get("synthetic"), dict):
            clf._synthetic = {str(k): [str(t) for t in v] for k, v in sched["synthetic"].items()}
        if isinstance(sched.get("pending"), dict):
            clf._pending = _load_pending(sched["pending"], arrays, dim)
    Xu = arrays.get("unlabelled_X", np.zeros((0, dim), np.float32))  # files before self-training have none
    if Xu.ndim != 2 or Xu.shape[1] != dim:
        raise ModelFileError(f"unlabelled rows: array shape {Xu.shape} does not match dim {dim}")
    clf._unlabelled = UnlabelledPool.from_rows(dim, settings.unlabelled_max, Xu)
    return clf
