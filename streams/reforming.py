"""Re-forming the label subsets without a pause: the part of :class:`~driftlabel.streams.host.ModelHost`
that copies the model, re-forms the copy in the background, replays onto it what the live model learned
meanwhile, and swaps it in with the next generation (the design: the host's module docstring)."""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from threadpoolctl import threadpool_limits

from driftlabel.models import RedClassifier
from driftlabel.streams.builds import background_pool, reform_saved_model
from driftlabel.streams.messages import ControlMessage, TrainingMessage
from driftlabel.streams.ports import Classifier, Embedder
from driftlabel.streams.schedule import trigger_points

__all__ = ["Reform", "Reforming"]

log = logging.getLogger("driftlabel.streams.host")
T = TypeVar("T")


@dataclass
class Reform:
    """A re-forming in flight: the copy, its background job, the live changes to replay onto it."""

    copy: Any
    started_at: int  # log position of the copy
    future: Future[tuple[Any, float]]
    replay: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)
    replayed: int = 0  # changes already replayed onto the finished copy, off the model thread
    catching_up: Future[None] | None = None  # that replay, while it runs
    t0: float = field(default_factory=time.perf_counter)


class Reforming:
    """Mixin of ``ModelHost``: the re-forming methods. The host provides the state below and the
    model-thread primitives; every method here that changes the model runs on the model thread."""

    reform: Reform | None
    reform_in: str
    reform_every: int
    valid_since_reform: int
    position: int
    generation: int
    changes_since_checkpoint: int
    on_reform: Callable[[float, float], None] | None
    embedder: Embedder
    model: Classifier | None
    _bg: ThreadPoolExecutor
    _side: ThreadPoolExecutor
    _proc: ProcessPoolExecutor | None

    @property
    def version(self) -> int:  # pragma: no cover - the host's
        raise NotImplementedError

    async def run(self, fn: Callable[..., T], *args: Any) -> T:  # pragma: no cover - the host's
        raise NotImplementedError

    def copy_model(self, model: Classifier | None = None) -> Classifier:  # pragma: no cover - the host's
        raise NotImplementedError

    @staticmethod
    def _retire(old: Classifier | None) -> None:  # pragma: no cover - the host's
        raise NotImplementedError

    @staticmethod
    def _apply_control(model: Classifier, msg: ControlMessage) -> None:  # pragma: no cover - the host's
        raise NotImplementedError

    def _remember(self, op: str, args: tuple[Any, ...]) -> None:
        """A change of the live model, to be replayed onto a copy being re-formed."""
        if self.reform is not None:
            self.reform.replay.append((op, args))

    @property
    def reforming(self) -> bool:
        return self.reform is not None

    def _begin_reform(self, clone: Classifier | None = None) -> None:
        """Model thread: copy the model as it is now (or take ``clone``, a copy of it made elsewhere) and
        re-form the copy in the background."""
        if self.reform is not None:  # the learner settles one before the next is due; be safe anyway
            self._wait_reform(self.reform)
            self._swap()
        self.valid_since_reform = 0
        clone = self.copy_model() if clone is None else clone
        if self.reform_in == "process":
            job = self._process_job(clone)
        else:

            def job() -> tuple[Any, float]:
                t0 = time.perf_counter()
                with threadpool_limits(1):  # one core: the embedder keeps the other (measured: 14 s -> 6 s)
                    clone.refit(resubset=True)
                return clone, time.perf_counter() - t0

        self.reform = Reform(copy=clone, started_at=self.position, future=self._bg.submit(job))
        log.info(
            "re-forming the label subsets in the background (%s; copy at log position %d)",
            self.reform_in, self.position,
        )  # fmt: skip

    def _process_job(self, clone: Classifier) -> Callable[[], tuple[Any, float]]:
        """The re-forming in a child process: no share of this process's GIL, lowest CPU priority."""
        if self._proc is None:
            self._proc = background_pool()
        proc = self._proc
        embedder = self.embedder

        def job() -> tuple[Any, float]:
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix="driftlabel-reform-") as tmp:
                src, dst = Path(tmp) / "in", Path(tmp) / "out"
                clone.save(src)
                proc.submit(reform_saved_model, str(src), str(dst)).result()
                new = RedClassifier.load(dst, embedder=embedder)
            return new, time.perf_counter() - t0

        return job

    @staticmethod
    def _wait_reform(reform: Reform) -> None:
        reform.future.result()

    def _swap(self) -> bool:
        """Model thread: if the re-formed copy is done, replay the live changes onto it and swap it in."""
        reform = self.reform
        if reform is None or not reform.future.done():
            return False
        self.reform = None
        new, background_s = reform.future.result()  # a failure in the background raises here
        if reform.catching_up is not None:
            reform.catching_up.result()  # finished unless its awaiting task was cancelled: never twice
        t0 = time.perf_counter()
        self._replay(new, reform.replay[reform.replayed :])
        swap_s = time.perf_counter() - t0
        self._retire(self.model)
        self.model = new
        self.generation += 1
        self.changes_since_checkpoint += 1
        log.info(
            "swapped in the re-formed model: %d subsets, %d changes replayed, v%d (background %.1fs, "
            "swap %.2fs)", new.n_subsets, len(reform.replay), self.version, background_s, swap_s,
        )  # fmt: skip
        if self.on_reform is not None:
            self.on_reform(background_s, swap_s)
        return True

    def _replay(self, new: Classifier, changes: Sequence[tuple[str, tuple[Any, ...]]]) -> None:
        """Apply the live model's logged ``changes`` to the re-formed copy ``new``, in order."""
        for op, args in changes:
            if op == "learn":
                new.learn_embeddings(*args)
            elif op == "observe":
                new.observe_embeddings(*args)
            elif op == "refit":
                new.refit()
            else:
                self._apply_control(new, args[0])

    async def _catch_up(self, reform: Reform) -> None:
        """Replay the changes logged so far onto the finished copy on the build thread, so the swap job
        on the model thread replays only what came after. The caller (the learner) makes no change
        meanwhile, so that is nothing. A re-forming runs ~22 s at O*NET, and the records learned in that
        time were replayed in the swap job: as long a hold as learning them took (a young label's column
        re-solve alone is 0.15-0.5 s there). Labelling goes on with the live model meanwhile."""
        if reform.future.cancelled() or reform.future.exception() is not None:
            return  # the swap raises it
        new, _ = reform.future.result()
        upto = len(reform.replay)
        if upto <= reform.replayed:
            return

        def replay() -> None:
            self._replay(new, reform.replay[reform.replayed : upto])
            reform.replayed = upto

        reform.catching_up = self._side.submit(replay)
        await asyncio.wrap_future(reform.catching_up)

    async def maybe_swap(self) -> bool:
        """Swap in a finished re-forming (cheap when there is none)."""
        reform = self.reform
        if reform is None or not reform.future.done():
            return False
        await self._catch_up(reform)
        return await self.run(self._swap)

    async def settle_reform(self) -> None:
        """Wait (off the model thread: labelling goes on) for the re-forming in flight, then swap it in."""
        reform = self.reform
        if reform is None:
            return
        await asyncio.wrap_future(reform.future)
        await self._catch_up(reform)
        await self.run(self._swap)

    def reform_due(self, records: Sequence[TrainingMessage]) -> bool:
        """Would learning ``records`` start a re-forming?"""
        valid = np.array([r.valid for r in records], dtype=bool)
        return bool(trigger_points(valid, self.valid_since_reform, self.reform_every))

    async def request_reform(self) -> None:
        """Re-form now (the caller must call this at a point of the log, e.g. on a control op, so that
        every worker re-forms at the same record)."""
        await self.settle_reform()
        await self.run(self._begin_reform)
