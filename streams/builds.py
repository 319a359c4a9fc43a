"""Model builds off the worker's model thread: the niced child process that re-forms subsets and fits
grown seed runs, and the seed run's one build path (first fit and refits alike).

Why a child process, not a low-priority thread: a niced thread that holds the GIL when the OS pauses it
stalls every other thread (measured: 139 s re-forming, first-label p99 9.6 s on a busy machine).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from driftlabel.models import RedClassifier
from driftlabel.streams.ports import Embedder

__all__ = ["SeedData", "background_pool", "build_seed_model", "fit_seed_model", "reform_saved_model"]


@dataclass(frozen=True)
class SeedData:
    """A seed run as arrays: the fit's input, taken on the event loop, handed to the build's thread."""

    X: np.ndarray
    texts: list[str]
    labels: list[str]
    descriptions: dict[str, str]
    description_vectors: dict[str, np.ndarray]
    negatives_X: np.ndarray | None
    negatives: list[tuple[str, str]]


def _exit_with_parent(parent: int, every_s: float) -> None:
    """Child process initializer: exit as soon as the process that started it is gone.

    A worker killed with SIGKILL cannot stop its pool, and a spawned pool child holds both ends of its
    call queue, so it never sees EOF: it would wait forever (measured: four 420 MB orphans left by the
    kill -9 chaos run). Polling the parent id works everywhere, costs nothing, and needs no signal."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every_s)
        os._exit(0)

    threading.Thread(target=watch, name="driftlabel-parent-watch", daemon=True).start()


def background_pool(check_parent_every_s: float = 1.0) -> ProcessPoolExecutor:
    """One spawned child process for background re-forming; it exits when this process dies."""
    return ProcessPoolExecutor(
        max_workers=1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_exit_with_parent,
        initargs=(os.getpid(), check_parent_every_s),
    )


def reform_saved_model(src: str, dst: str) -> None:
    """Child process: load the copy saved at ``src``, re-form its subsets, save it to ``dst``.

    Runs at the lowest CPU priority with one BLAS thread, so it takes idle CPU rather than the
    embedder's. (Not a niced *thread* in the worker: a low-priority thread that holds the GIL when the
    OS pauses it stalls every other thread; measured: 139 s re-forming, p99 9.6 s on a busy machine.)"""
    with contextlib.suppress(AttributeError, OSError):
        os.nice(19)
    with threadpool_limits(1):
        model = RedClassifier.load(src, embedder=None)
        model.refit(resubset=True)
        model.save(dst)


def build_seed_model(data: SeedData, settings: Any, embedder: Embedder | None) -> RedClassifier:
    """A model fitted on a seed run; its invalid records are learned after the fit as hard negatives,
    where the log has them (the seed run's one code path, for the first fit and for refits)."""
    model = RedClassifier(embedder=embedder, settings=settings)
    model.fit_embeddings(data.X, data.texts, data.labels, data.descriptions or None, data.description_vectors)
    if data.negatives_X is not None:
        texts = [t for t, _ in data.negatives]
        labels = [lab for _, lab in data.negatives]
        model.learn_embeddings(data.negatives_X, texts, labels, [False] * len(texts))
    return model


def fit_seed_model(data: SeedData, settings: Any, dst: str) -> None:
    """Child process: fit on a seed run at the lowest CPU priority with one BLAS thread; save to ``dst``
    (as :func:`reform_saved_model`, and for the same reason)."""
    with contextlib.suppress(AttributeError, OSError):
        os.nice(19)
    with threadpool_limits(1):
        build_seed_model(data, settings, None).save(dst)
