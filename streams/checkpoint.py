"""Checkpoints: the model directory (``RedClassifier.save``) plus the ``training``/``control`` offsets it
includes.

A restarted or new worker loads the newest checkpoint and replays the two topics from the stored
offsets, so it converges to the model every other worker has. Layout::

    <checkpoint_dir>/ckpt-<µs since epoch>-<worker>/
        model/              RedClassifier.save(...)
        seen.npy            uint64 digests of the log records already learned (the dedupe of replays)
        checkpoint.json     {"format", "created", "worker", "topic_prefix", "model_version", "offsets",
                             "state": the host's counters (log position, generation, refit schedule)}

A checkpoint is written under a temporary name and renamed when complete, so a crash never leaves a
half-written one that looks valid; corrupt or foreign ones are skipped with a warning.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from driftlabel.streams.errors import CheckpointError

__all__ = [
    "FORMAT",
    "Checkpoint",
    "list_checkpoints",
    "prune_checkpoints",
    "read_checkpoint",
    "write_checkpoint",
]

log = logging.getLogger(__name__)

FORMAT = "driftlabel-checkpoint/2"
#: older formats this version still reads (no state: counters start at 0, no dedupe digests)
READABLE = (FORMAT, "driftlabel-checkpoint/1")
_NAME = re.compile(r"^ckpt-(\d{13,})-[\w.-]+$")

#: offsets[topic][partition] = the next offset to read (everything before it is in the model)
Offsets = dict[str, dict[int, int]]


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    offsets: Offsets
    model_version: int
    created: float
    worker: str
    state: dict[str, Any] | None = None

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    def seen(self) -> np.ndarray:
        """The digests of the learned log records (empty for a format-1 checkpoint)."""
        f = self.path / "seen.npy"
        if not f.is_file():
            return np.zeros(0, dtype=np.uint64)
        try:
            return np.asarray(np.load(f, allow_pickle=False), dtype=np.uint64)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{f}: unreadable ({exc})") from exc


def _safe(worker: str) -> str:
    return re.sub(r"[^\w.-]", "_", worker) or "worker"


def write_checkpoint(
    root: Path,
    model: Any,
    offsets: Offsets,
    *,
    worker: str,
    topic_prefix: str,
    keep: int = 3,
    state: dict[str, Any] | None = None,
    seen: np.ndarray | None = None,
    model_version: int | None = None,
) -> Checkpoint:
    """Save ``model``, ``offsets``, the host ``state`` and the ``seen`` digests as a new checkpoint under
    ``root``; prune to the newest ``keep``. ``model_version`` defaults to the model's own."""
    version = int(model.model_version if model_version is None else model_version)
    root.mkdir(parents=True, exist_ok=True)
    created = time.time()
    stamp = int(created * 1_000_000)  # microseconds: names sort by time
    while any(root.glob(f"ckpt-{stamp:016d}-*")):
        stamp += 1
    name = f"ckpt-{stamp:016d}-{_safe(worker)}"
    tmp = root / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        model.save(tmp / "model")
        if seen is not None:
            np.save(tmp / "seen.npy", np.asarray(seen, dtype=np.uint64), allow_pickle=False)
        meta = {
            "format": FORMAT,
            "created": created,
            "worker": worker,
            "topic_prefix": topic_prefix,
            "model_version": version,
            "offsets": {t: {str(p): int(o) for p, o in parts.items()} for t, parts in offsets.items()},
            "state": dict(state or {}),
        }
        (tmp / "checkpoint.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
        final = root / name
        os.replace(tmp, final)
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(
            f"could not write a checkpoint under {root}: {exc}; check free space and rights"
        ) from exc
    prune_checkpoints(root, keep)
    return Checkpoint(final, offsets, version, created, worker, dict(state or {}))


def read_checkpoint(path: Path, topic_prefix: str | None = None) -> Checkpoint:
    """Read and check one checkpoint's metadata (not the model)."""
    try:
        meta = json.loads((path / "checkpoint.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable checkpoint.json ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") not in READABLE:
        raise CheckpointError(f"{path}: not a {FORMAT} checkpoint")
    if topic_prefix is not None and meta.get("topic_prefix") != topic_prefix:
        raise CheckpointError(
            f"{path}: written for topic prefix {meta.get('topic_prefix')!r}, not {topic_prefix!r}; "
            "use a separate checkpoint_dir per topic set"
        )
    if not (path / "model").is_dir():
        raise CheckpointError(f"{path}: the model directory is missing")
    try:
        offsets = {t: {int(p): int(o) for p, o in parts.items()} for t, parts in meta["offsets"].items()}
        state = meta.get("state")
        if state is not None and not isinstance(state, dict):
            raise TypeError(f"state must be an object, got {type(state).__name__}")
        return Checkpoint(
            path, offsets, int(meta["model_version"]), float(meta["created"]), str(meta["worker"]), state
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{path}: malformed checkpoint.json ({exc!r})") from exc


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, newest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def prune_checkpoints(root: Path, keep: int) -> None:
    for old in list_checkpoints(root)[keep:]:
        shutil.rmtree(old, ignore_errors=True)
