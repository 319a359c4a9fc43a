"""The worker's new-class proposals: texts no known class covers gather in a pool, and each dense group of
them is named by the judge endpoint and published on the ``proposals`` topic (added through ``control``
when ``auto_add_proposals`` is on).

Two agents feed the pool: the judge agent with the texts the judge left ``unresolved``, and the texts
agent with the unjudged texts of a micro-batch whose nearest stored example is less similar than the
``stream.proposal_far_quantile`` quantile of the store's own leave-one-out similarities
(``stream.proposal_far_texts``). That line is looser than the out-of-scope one, so texts of known classes
gather too: a group whose centroid sits as near a known label's centroid as most stored examples sit to
their own label's is taken for that label's edge and not named at all
(``stream.proposal_known_quantile``), and a group the endpoint names after a known class is not published:
it is that class's wording far from its stored examples, and the texts of it the experts rank first under
that class too are learned as it (``stream.proposal_learn_known``). Each naming call is paid from the
judge budget (``charge``). With no text routed (``judge_target_share`` 0) the endpoint is still asked to
name each group; ``stream.proposals = false`` makes no call at all. The pool and its group search are
``models.emerging``'s; this module only wires them to the host, the judge endpoint and the topics. The
pool lives in memory: a restart empties it, and the texts still unplaced gather again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

import numpy as np
import orjson

from driftlabel.judge.errors import KnownClassProposedError
from driftlabel.models.emerging import NoveltyPool, Proposal
from driftlabel.streams.host import ModelHost
from driftlabel.streams.judging import JudgeCaller
from driftlabel.streams.messages import TrainingMessage
from driftlabel.streams.metrics import ServiceMetrics
from driftlabel.streams.settings import StreamSettings

__all__ = ["NewClassProposals"]

log = logging.getLogger(__name__)

Publish = Callable[[bytes, bytes], Awaitable[None]]
Teach = Callable[[list[TrainingMessage]], Awaitable[None]]


class NewClassProposals:
    """Pools unplaced texts and proposes each dense group of them as a new class."""

    def __init__(
        self,
        stream: StreamSettings,
        host: ModelHost,
        judge: JudgeCaller,
        metrics: ServiceMetrics,
        worker_id: str,
        publish_proposal: Publish,
        publish_control: Publish,
        charge: Callable[[float], None] | None = None,
        publish_training: Teach | None = None,
    ) -> None:
        self.stream = stream
        self.charge = charge  # a naming call counts against the judge budget (JudgeRateController.charge)
        self.host = host
        self.judge = judge
        self.metrics = metrics
        self.worker_id = worker_id
        self.publish_proposal = publish_proposal
        self.publish_control = publish_control
        self.publish_training = publish_training
        self.pool = NoveltyPool(stream.proposal_min_size, stream.proposal_similarity)
        self.n_proposals = 0
        self._lock = asyncio.Lock()  # the texts and judge agents both pool texts
        self._naming: set[asyncio.Task[None]] = set()  # far groups, named off the texts agent's path
        # ids pooled as unresolved, newest last (bounded like the pool): the judge rejected their candidates
        self._unresolved: dict[str, None] = {}

    async def gather_unresolved(self, item_id: str, text: str) -> None:
        """Pool an unresolved text; propose every dense group the pool then holds."""
        X = await self.host.embed([text])
        self._unresolved[item_id] = None
        while len(self._unresolved) > self.pool.capacity:
            del self._unresolved[next(iter(self._unresolved))]
        for group in await self.pool_texts(X, [text], [item_id]):
            await self.propose(group)

    async def gather_far(
        self, ids: Sequence[str], texts: Sequence[str], X: np.ndarray, unjudged: np.ndarray
    ) -> None:
        """Pool the unjudged texts of a batch that no stored example is near; a dense group of them is
        proposed in the background (naming it is a judge call: labelling goes on meanwhile)."""
        rows = np.flatnonzero(unjudged)
        if not len(rows):
            return
        far = rows[await self.host.far_from_store(X[rows], self.stream.proposal_far_quantile)]
        if not len(far):
            return
        groups = await self.pool_texts(X[far], [texts[i] for i in far], [ids[i] for i in far])
        for group in groups:
            task = asyncio.get_running_loop().create_task(self._propose_logged(group))
            self._naming.add(task)
            task.add_done_callback(self._naming.discard)

    async def pool_texts(self, X: np.ndarray, texts: list[str], ids: list[str]) -> list[Proposal]:
        """Add texts to the pool and take out every dense group it then holds (adding k texts is a k x n
        product against the pooled rows; the search, which compacts the pool when it takes a group out,
        runs off the event loop)."""
        async with self._lock:
            self.pool.add(X, texts, ids)
            return await asyncio.get_running_loop().run_in_executor(None, self.pool.find_groups)

    def cancel(self) -> None:
        """Drop the proposals still being named (best effort, as the in-memory pool is)."""
        for task in list(self._naming):
            task.cancel()

    async def _propose_logged(self, group: Proposal) -> None:
        """:meth:`propose` as a background task: a failure is logged, not left in a task nobody awaits."""
        try:
            await self.propose(group)
        except Exception:
            n = len(group.texts)
            log.exception("proposal of %d far texts failed; their class can still be proposed later", n)

    async def teach_known(self, group: Proposal, label: str) -> int:
        """Learn as ``label`` the texts of ``group`` (named after that known class) that the experts also
        rank first under it, except those whose candidates the judge rejected; returns how many.

        Why: such a group is the class's wording far from its stored examples, where the experts are least
        sure. Two opinions agree on each text taught (the endpoint's, for the group, and the experts'), and
        one naming call teaches several (200-270 texts per BANKING77 stream, 4-11 % of them of another
        class, with the simulated expert; ``stream.proposal_learn_known``, docs/models.md)."""
        if not self.stream.proposal_learn_known or self.publish_training is None:
            return 0
        rows = [i for i, item_id in enumerate(group.ids) if item_id and item_id not in self._unresolved]
        if not rows:
            return 0
        top = await self.host.top_labels(group.embeddings[rows])
        records = [
            TrainingMessage(id=group.ids[i], text=group.texts[i], label=label, source="judge")
            for i, first in zip(rows, top, strict=True)
            if first == label
        ]
        if records:
            await self.publish_training(records)
        return len(records)

    async def propose(self, group: Proposal) -> None:
        """Publish a proposal on ``proposals`` (named by the judge endpoint if it can); maybe add it.

        The judge is shown, and ``add_class`` carries, only the group's own texts (:meth:`Proposal.own`:
        not those a stored example is nearer than the group's centroid); a group with none is published
        for a human but not added. A group the endpoint names after a known class is no new class: it is
        counted (``outcome="known"``) and logged, not published. Why: the far line pools texts of known
        classes too, and on a stationary BANKING77 stream such groups would be most of the topic. Most of
        them are told apart before any call (``outcome="near_known"``): their centroid sits as near a
        known label's centroid as most stored examples sit to their own label's."""
        q = self.stream.proposal_known_quantile
        if q > 0:
            sim, line = await self.host.near_known_class(group.centroid, q)
            if sim >= line:  # the edge of a known class: no naming call spent on it
                self.metrics.proposals.labels(outcome="near_known").inc()
                log.info(
                    "group of %d texts: its centroid sits %.3f from a known class's (its own examples: %.3f "
                    "at quantile %.2f); not named",
                    len(group.texts),
                    sim,
                    line,
                    q,
                )
                return
        self.n_proposals += 1
        own = group.own(await self.host.nearest_similarity(group.embeddings))
        examples = (own if own.texts else group).examples(10)
        name: str | None = None
        description: str | None = None
        known = await self.host.labels()
        try:
            propose = getattr(self.judge.judge, "propose_class", None)
            if propose is not None:
                if self.charge is not None:
                    self.charge(1.0)
                name, description = await propose(examples, known_labels=known)
        except KnownClassProposedError as exc:  # more likely the edge of that class, or its new wording
            self.metrics.proposals.labels(outcome="known").inc()
            taught = await self.teach_known(own, exc.label)  # not the texts a stored example is nearer
            log.info(
                "group %d of %d texts: named after the known class %r; %d of them taught to it",
                self.n_proposals,
                len(group.texts),
                exc.label,
                taught,
            )
            return
        except Exception as exc:  # unnamed is still worth a human's look
            log.warning("proposal %d: the judge endpoint did not name it (%s)", self.n_proposals, exc)
        value = {
            "id": f"{self.worker_id}-{self.n_proposals}",
            "name": name,
            "description": description,
            "examples": examples,
            "size": len(group.texts),
            "density": round(group.density, 4),
            "ids": group.ids[:50],
            "ts": time.time(),
        }
        await self.publish_proposal(str(value["id"]).encode(), orjson.dumps(value))
        added = bool(name and self.stream.auto_add_proposals and own.texts)
        if added:
            op = {"op": "add_class", "label": name, "description": description, "examples": own.texts[:50]}
            await self.publish_control(str(name).encode(), orjson.dumps(op))
        self.metrics.proposals.labels(outcome="added" if added else ("named" if name else "unnamed")).inc()
        what = f"class {name!r}" if name else "an unnamed class (a human can name it from the examples)"
        if added:
            what += f", added through control with {len(own.texts[:50])} of its texts"
        elif name and not own.texts:
            what += ", not added: each of its texts sits nearer a known class's example than the group"
        log.warning(  # the default log level shows it: a proposed class wants a human's look
            "proposal %s: %s (%d pooled texts)",
            value["id"],
            what,
            len(group.texts),
        )
