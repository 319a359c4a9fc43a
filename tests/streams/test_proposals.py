"""``NewClassProposals.propose`` with small fakes for the host, the judge endpoint and the topics: what a
proposal publishes, which of its texts an ``add_class`` op carries (``Proposal.own``), and which a group
named after a known class teaches it."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import orjson

from driftlabel.judge.errors import KnownClassProposedError
from driftlabel.models.emerging import Proposal
from driftlabel.streams.messages import TrainingMessage
from driftlabel.streams.metrics import ServiceMetrics
from driftlabel.streams.proposals import NewClassProposals
from driftlabel.streams.settings import StreamSettings


class FakeHost:
    """The host calls a proposal makes: how near a known class's centroid it sits, the store similarities
    and the known labels."""

    def __init__(
        self, store_similarity: np.ndarray, known_centroid: float = 0.3, firsts: list[str] | None = None
    ) -> None:
        self.store_similarity = store_similarity
        self.known_centroid = known_centroid  # the group centroid's cosine to the nearest label centroid
        self.firsts = firsts or []  # the experts' first label of the group's texts, in group order
        self.group_embeddings = np.zeros((0, 16), dtype=np.float32)
        self.asked: list[float] = []

    async def embed(self, texts: list[str]) -> np.ndarray:
        return np.tile(np.eye(16, dtype=np.float32)[1], (len(texts), 1))

    async def top_labels(self, X: np.ndarray) -> list[str]:
        rows = np.argmax(X @ self.group_embeddings.T, axis=1)  # each asked text is one of the group's rows
        return [self.firsts[i] for i in rows.tolist()]

    async def near_known_class(self, centroid: np.ndarray, quantile: float) -> tuple[float, float]:
        self.asked.append(quantile)
        return self.known_centroid, 0.8  # 0.8: the stored rows' own-centroid similarity at that quantile

    async def nearest_similarity(self, X: np.ndarray) -> np.ndarray:
        assert len(X) == len(self.store_similarity)
        return self.store_similarity

    async def labels(self) -> list[str]:
        return ["balance", "card_arrival"]


class FakeEndpoint:
    def __init__(self, known: str | None = None) -> None:
        self.shown: list[str] = []
        self.known = known  # name this known class (as Judge.propose_class reports it)

    async def propose_class(self, examples: list[str], known_labels: list[str]) -> tuple[str, str]:
        self.shown = list(examples)
        if self.known is not None:
            assert self.known in known_labels
            raise KnownClassProposedError(f"named the known class {self.known!r}", label=self.known)
        return "pto_request", "asking for time off"


class FakeCaller:
    def __init__(self, known: str | None = None) -> None:
        self.judge = FakeEndpoint(known)


def _group(n_own: int, n_edge: int) -> tuple[Proposal, np.ndarray]:
    """A group whose first ``n_own`` texts sit near its centroid and far from the store, the rest nearer a
    stored example than the centroid."""
    rng = np.random.default_rng(0)
    c = np.eye(16, dtype=np.float32)[0]
    E = c + 0.2 * rng.normal(size=(n_own + n_edge, 16)).astype(np.float32)
    E /= np.linalg.norm(E, axis=1, keepdims=True)
    to_c = E @ c
    store = np.concatenate([to_c[:n_own] - 0.2, to_c[n_own:] + 0.05]).astype(np.float32)
    texts = [f"own {i}" for i in range(n_own)] + [f"edge {i}" for i in range(n_edge)]
    ids = [f"id-{i}" for i in range(len(texts))]
    return Proposal(texts=texts, embeddings=E, centroid=c, density=float(to_c.mean()), ids=ids), store


def _propose(
    group: Proposal,
    store: np.ndarray,
    known: str | None = None,
    known_centroid: float = 0.3,
    settings: StreamSettings | None = None,
    firsts: list[str] | None = None,
    unresolved: tuple[str, ...] = (),
    taught: list[TrainingMessage] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], Any]:
    published: list[dict[str, Any]] = []
    control: list[dict[str, Any]] = []

    async def pub(_key: bytes, value: bytes) -> None:
        published.append(orjson.loads(value))

    async def ctl(_key: bytes, value: bytes) -> None:
        control.append(orjson.loads(value))

    async def teach(records: list[TrainingMessage]) -> None:
        assert taught is not None
        taught.extend(records)

    caller = FakeCaller(known)
    metrics = ServiceMetrics()
    charged: list[float] = []
    host = FakeHost(store, known_centroid, firsts)
    host.group_embeddings = group.embeddings
    proposals = NewClassProposals(
        settings or StreamSettings(auto_add_proposals=True),
        host,  # type: ignore[arg-type]
        caller,  # type: ignore[arg-type]
        metrics,
        "w0",
        pub,
        ctl,
        charged.append,
        teach,
    )

    async def run() -> None:
        for item_id in unresolved:  # the judge rejected these texts' candidates
            await proposals.gather_unresolved(item_id, f"unresolved {item_id}")
        await proposals.propose(group)

    asyncio.run(run())
    named = host.known_centroid < 0.8 or not proposals.stream.proposal_known_quantile
    assert charged == ([1.0] if named else [])  # a naming call is paid from the judge budget
    return published, control, (caller.judge, metrics)


def _proposals(metrics: ServiceMetrics, outcome: str) -> float | None:
    """The proposals counter for ``outcome``, as the metrics page reads it."""
    return metrics.registry.get_sample_value("driftlabel_proposals_total", {"outcome": outcome})


def test_an_added_class_carries_only_the_groups_own_texts() -> None:
    group, store = _group(n_own=9, n_edge=3)
    published, control, (endpoint, metrics) = _propose(group, store)
    assert len(published) == 1 and published[0]["size"] == 12  # the whole group is reported
    assert published[0]["name"] == "pto_request"
    assert all(t.startswith("own") for t in endpoint.shown) and len(endpoint.shown) == 9
    assert control == [
        {
            "op": "add_class",
            "label": "pto_request",
            "description": "asking for time off",
            "examples": group.own(store).texts,
        }
    ]
    assert sorted(control[0]["examples"]) == sorted(f"own {i}" for i in range(9))
    assert _proposals(metrics, "added") == 1


def test_a_group_of_texts_known_classes_cover_is_published_not_added() -> None:
    group, store = _group(n_own=0, n_edge=10)
    published, control, (endpoint, metrics) = _propose(group, store)
    assert published and published[0]["name"] == "pto_request" and published[0]["size"] == 10
    assert len(endpoint.shown) == 10  # a human still sees the group's examples
    assert control == []
    assert _proposals(metrics, "named") == 1 and not _proposals(metrics, "added")


def test_a_group_the_endpoint_names_after_a_known_class_teaches_it_not_a_new_class() -> None:
    """The far line pools texts of known classes too; a group of them named after its class is no new class:
    nothing published or added, one ``known`` on the metrics page (the naming call still paid). It teaches
    that class the group's texts the experts rank first under it too, as judge pairs, except a text whose
    candidates the judge rejected (pooled as unresolved); ``proposal_learn_known = false`` teaches none."""
    group, store = _group(n_own=9, n_edge=0)
    firsts = ["balance"] * 6 + ["card_arrival"] * 3
    taught: list[TrainingMessage] = []
    published, control, (_endpoint, metrics) = _propose(
        group, store, known="balance", firsts=firsts, unresolved=("id-2",), taught=taught
    )
    assert published == [] and control == []
    assert _proposals(metrics, "known") == 1 and not _proposals(metrics, "unnamed")
    assert sorted(t.id for t in taught) == ["id-0", "id-1", "id-3", "id-4", "id-5"]
    by_id = dict(zip(group.ids, group.texts, strict=True))
    assert all(t.label == "balance" and t.source == "judge" and t.valid for t in taught)
    assert all(t.text == by_id[t.id] for t in taught)
    off = StreamSettings(auto_add_proposals=True, proposal_learn_known=False)
    taught = []
    _propose(group, store, known="balance", firsts=firsts, settings=off, taught=taught)
    assert taught == []


def test_a_group_at_a_known_class_edge_is_not_named() -> None:
    """The far line pools the edges of known classes; a group whose centroid sits as near a label's centroid
    as most stored examples sit to their own label's (stream.proposal_known_quantile) costs no call: nothing
    named, published or added, one ``near_known`` on the metrics page. With the check off it is named."""
    group, store = _group(n_own=9, n_edge=0)
    published, control, (endpoint, metrics) = _propose(group, store, known_centroid=0.85)
    assert published == [] and control == [] and endpoint.shown == []
    assert _proposals(metrics, "near_known") == 1 and not _proposals(metrics, "added")
    off = StreamSettings(auto_add_proposals=True, proposal_known_quantile=0.0)
    published, control, (_endpoint, metrics) = _propose(group, store, known_centroid=0.85, settings=off)
    assert len(published) == 1 and len(control) == 1 and _proposals(metrics, "added") == 1
    assert not _proposals(metrics, "near_known")
