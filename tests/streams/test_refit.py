"""Refits and background re-formings of the model host (``ModelHost``: ``stream.refit_every``,
``stream.reform_every``), without Kafka.

A small real ``RedClassifier`` on synthetic clusters; the embedder is a deterministic lookup of those
cluster points by text (it honours the Embedder contract: ``name``, ``dim``, ``encode``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from pydantic import ValidationError

from driftlabel.models import ExpertSettings, RedClassifier
from driftlabel.streams.host import GENERATION, ModelHost, SeedSet
from driftlabel.streams.messages import ControlMessage, TrainingMessage
from driftlabel.streams.metrics import ServiceMetrics
from driftlabel.streams.schedule import Op, plan_step, refit_cuts
from driftlabel.streams.settings import MetricsSettings, StreamSettings

LABELS = ["alpha", "beta", "gamma", "delta"]
T = TypeVar("T")
DIM = 16


class ClusterEmbedder:
    """Text ``"<label> <i>"`` -> a point of that label's cluster, the same for the same text."""

    name = "test-cluster-16"
    dim = DIM

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        C = rng.normal(size=(len(LABELS), DIM))
        self.centers = C / np.linalg.norm(C, axis=1, keepdims=True)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        for i, t in enumerate(texts):
            lab = t.partition(" ")[0]
            c = self.centers[LABELS.index(lab)] if lab in LABELS else np.zeros(DIM)
            rng = np.random.default_rng(_seed(t))
            v = c + 0.15 * rng.normal(size=DIM)
            out[i] = v / np.linalg.norm(v)
        return out

    def warmup(self) -> None:
        return None


def _seed(text: str) -> int:
    return int(hashlib.blake2b(text.encode(), digest_size=4).hexdigest(), 16)


def _records(start: int, n: int, valid: bool = True) -> list[TrainingMessage]:
    out = []
    for i in range(start, start + n):
        lab = LABELS[i % len(LABELS)]
        text = f"{lab} {i}"
        label = lab if valid else LABELS[(i + 1) % len(LABELS)]  # a wrong candidate, rejected
        out.append(TrainingMessage(id=f"t{i}", text=text, label=label, source="judge", valid=valid))
    return out


def _host(
    refit_every: int | None,
    metrics: ServiceMetrics | None = None,
    reform_every: int = 0,
    reform_in: str = "thread",
) -> ModelHost:
    host = ModelHost(
        ClusterEmbedder(),
        ExpertSettings(subset_size=2),
        cache_size=100,
        refit_every=refit_every,
        on_refit=metrics.observe_refit if metrics is not None else None,
        reform_every=reform_every,
        on_reform=metrics.observe_reform if metrics is not None else None,
        reform_in=reform_in,
    )
    seed = SeedSet()
    seed.add_training(_records(0, 12))
    host._fit(seed)
    return host


def _assert_same_model(a: Any, b: Any, top_k: int = 2, n: int = 20) -> None:
    """Two classifiers rank ``n`` probe texts per label alike, score for score."""
    X = ClusterEmbedder().encode([f"{lab} {i}" for i in range(900, 900 + n) for lab in LABELS])
    ra, rb = a.rank_embeddings(X, top_k=top_k), b.rank_embeddings(X, top_k=top_k)
    assert ra.labels == rb.labels
    np.testing.assert_array_equal(np.asarray(ra.scores), np.asarray(rb.scores))


def _counter(metrics: ServiceMetrics, name: str) -> float:
    v = metrics.registry.get_sample_value(name)
    return float(v) if v is not None else 0.0


def test_refit_after_every_n_valid_examples(caplog: pytest.LogCaptureFixture) -> None:
    metrics = ServiceMetrics(MetricsSettings())
    host = _host(refit_every=10, metrics=metrics)
    assert host.valid_since_refit == 0  # the seed fit does not count
    host._learn(_records(100, 6))  # 6 < 10: incremental only
    assert host.refits == 0 and host.valid_since_refit == 6

    with caplog.at_level(logging.INFO, logger="driftlabel.streams.host"):
        host._learn(_records(200, 6))  # the 10th valid example: learn 4, refit, learn the other 2
    assert host.refits == 1 and host.valid_since_refit == 2  # learn 6, learn 4, refit, learn 2
    assert any("refit after 10 new valid examples" in r.getMessage() for r in caplog.records)
    assert _counter(metrics, "driftlabel_refits_total") == 1.0
    assert _counter(metrics, "driftlabel_refit_seconds_count") == 1.0
    assert host.refit_seconds > 0

    host._learn(_records(300, 25))  # 2 + 25 crosses 10 and 20: two refits, 7 counted after them
    assert host.refits == 3 and host.valid_since_refit == 7
    assert _counter(metrics, "driftlabel_refits_total") == 3.0


def test_refit_points_do_not_depend_on_batching() -> None:
    """The same records in other batches refit after the same records: the schedule is in the log."""
    recs = _records(100, 7) + _records(200, 5, valid=False) + _records(300, 30)
    a, b = _host(refit_every=8), _host(refit_every=8)
    a._learn(recs)
    for i in range(0, len(recs), 5):
        b._learn(recs[i : i + 5])
    assert a.refits == b.refits == 4 and a.valid_since_refit == b.valid_since_refit == 5
    assert refit_cuts(np.array([True, True, False, True], dtype=bool), 1, 3) == [(0, 2), (2, 4)]


def test_hard_negatives_do_not_count() -> None:
    host = _host(refit_every=5)
    host._learn(_records(100, 20, valid=False))
    assert host.refits == 0 and host.valid_since_refit == 0
    mixed = _records(200, 4) + _records(300, 10, valid=False)
    host._learn(mixed)
    assert host.refits == 0 and host.valid_since_refit == 4
    host._learn(_records(400, 1) + _records(500, 3, valid=False))
    assert host.refits == 1 and host.valid_since_refit == 0


def test_a_step_plan_cuts_where_refits_and_re_formings_fall_due() -> None:
    unlabelled = np.array([0, 0, 1, 1, 0, 0, 0, 0], dtype=bool)
    valid = np.array([1, 1, 0, 0, 1, 0, 1, 1], dtype=bool)
    # 1 valid counted toward a refit every 3, none toward a re-forming every 4
    assert plan_step(unlabelled, valid, 1, 3, 0, 4) == [
        Op("learn", 0, 2), Op("refit"), Op("observe", 2, 4), Op("learn", 4, 7), Op("reform"),
        Op("learn", 7, 8), Op("refit"),
    ]  # fmt: skip
    never = plan_step(unlabelled, valid, 0, 0, 0, 0)
    assert never == [Op("learn", 0, 2), Op("observe", 2, 4), Op("learn", 4, 8)]
    assert plan_step(unlabelled[:0], valid[:0], 0, 3, 0, 4) == []


def test_advancing_over_no_records_moves_only_the_position() -> None:
    host = _host(refit_every=None)
    before = host.state()
    asyncio.run(host.advance(40))
    asyncio.run(host.learn([], position=41, live=True))
    assert host.state() == {**before, "position": 41} and host.version == 41
    host.close()


def test_refit_every_zero_disables() -> None:
    host = _host(refit_every=0)
    for k in range(5):
        host._learn(_records(100 * (k + 1), 50), position=k + 1)
    assert host.refits == 0 and host.valid_since_refit == 250
    assert host.version == 5  # the log position: the classifier's own change counter does not matter


def test_default_comes_from_stream_settings() -> None:
    assert StreamSettings().refit_every == 0  # no blocking refit by default: updates are exact
    assert StreamSettings().reform_every > 0  # re-forming runs in the background instead
    assert StreamSettings(refit_every=50).refit_every == 50
    with pytest.raises(ValueError):
        StreamSettings(refit_every=-1)
    host = ModelHost(ClusterEmbedder(), refit_every=None)
    assert host.refit_every == 0
    host.close()


def test_same_batches_same_model_and_the_count_is_checkpointed(tmp_path: Path) -> None:
    """Replay determinism: two hosts learning the same records refit at the same points and agree; a
    host loaded from a checkpoint goes on counting where the saved one was."""
    batches = [_records(100, 7), _records(200, 3) + _records(250, 2, valid=False), _records(300, 9)]
    a, b = _host(refit_every=8), _host(refit_every=8)
    for batch in batches:
        a._learn(batch, position=3)
        b._learn(batch, position=3)
    assert a.refits == b.refits == 2
    assert a.state() == b.state() and a.version == b.version == 3
    X = ClusterEmbedder().encode([f"{lab} {i}" for i in range(900, 920) for lab in LABELS])
    ra = a.model.rank_embeddings(X, top_k=2)
    rb = b.model.rank_embeddings(X, top_k=2)
    assert ra.labels == rb.labels
    np.testing.assert_allclose(np.asarray(ra.scores), np.asarray(rb.scores), rtol=1e-6, atol=1e-7)

    a._learn(_records(400, 5), position=4)
    assert a.valid_since_refit == 0 and a.refits == 3  # 19 + 5 valid: refits after the 8th, 16th, 24th
    a.model.save(tmp_path / "model")
    c = ModelHost(ClusterEmbedder(), refit_every=8)
    asyncio.run(c.load(tmp_path / "model", a.state()))
    assert c.state() == a.state() and c.version == 4
    for h in (a, b, c):
        h.close()


async def _labels_while_held(
    host: ModelHost, work: Coroutine[Any, Any, T], gate: threading.Event, n: int = 4
) -> tuple[list[tuple[int, int]], T]:
    """Start ``work``, which waits behind ``gate`` off the model thread; label ``n`` times meanwhile
    (each returns while it waits, from the live model as it was); then release it. Returns the labels'
    (version, classes) and what ``work`` returned."""
    before = host.live
    task = asyncio.create_task(work)
    seen = []
    for _ in range(n):
        _, _, version, n_classes = await asyncio.wait_for(host.predict(["alpha 901"], 2), 10)
        seen.append((version, n_classes))
        await asyncio.sleep(0.01)
    assert not task.done() and host.live is before
    gate.set()
    return seen, await task


def test_reform_runs_on_a_copy_and_swaps_atomically(monkeypatch: pytest.MonkeyPatch) -> None:
    """While the copy is half built, the live model labels and learns; the swap replays what it learned
    meanwhile and the next prediction comes from the finished copy, with a higher version."""
    real_refit = RedClassifier.refit
    gate = threading.Event()
    building: list[Any] = []

    def slow_refit(self: Any, resubset: bool = False) -> None:
        if not resubset:
            return real_refit(self, resubset)
        self.half_built = True
        building.append(self)
        assert gate.wait(30)
        real_refit(self, resubset=True)
        self.half_built = False
        return None

    monkeypatch.setattr(RedClassifier, "refit", slow_refit)
    metrics = ServiceMetrics(MetricsSettings())
    host = _host(refit_every=0, metrics=metrics, reform_every=10)
    live = host.model
    host._learn(_records(100, 10), position=22)  # the 10th valid example: copy + background job
    assert host.reforming and host.version == 22 and host.generation == 0
    deadline = time.monotonic() + 30
    while not building:  # the background thread reaches the (slow) re-forming
        assert time.monotonic() < deadline
        time.sleep(0.01)
    probes = [f"{lab} {i}" for i in range(900, 905) for lab in LABELS]
    for k in range(3):  # labelling goes on, from the live (whole) model, while the copy is half built
        _, ranking, version, _ = host._predict(probes, 2)
        assert host.model is live and not getattr(host.model, "half_built", False)
        assert version == 22 + k and len(ranking.labels) == len(probes)
        host._learn(_records(200 + 10 * k, 3), position=23 + k)  # and learning too, remembered
    assert len(building) == 1 and building[0] is not live and building[0].half_built
    assert host.reform is not None and len(host.reform.replay) == 3
    assert not host._swap()  # not finished: nothing changes
    gate.set()
    host.reform.future.result(timeout=60)
    assert host._swap()
    assert host.model is building[0] and not host.model.half_built
    assert host.version == GENERATION + 25 > 25  # the next generation: higher than any before
    assert host.model.n_examples == live.n_examples  # the changes made meanwhile were replayed
    _, _, version, _ = host._predict(probes, 2)
    assert version == GENERATION + 25
    assert _counter(metrics, "driftlabel_reforms_total") == 1.0
    host.close()


def test_the_changes_made_during_a_re_forming_are_replayed_off_the_model_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The swap's replay of what the live model learned meanwhile runs on the build thread while labels
    keep coming from the live model; the model thread then swaps with nothing left to replay, and the
    result is the model the inline swap builds."""

    def started(host: ModelHost) -> None:
        host._learn(_records(100, 10), position=22)  # the 10th valid example starts a re-forming
        for k in range(3):
            host._learn(_records(200 + 10 * k, 3), position=23 + k)
        assert host.reform is not None and len(host.reform.replay) == 3
        host.reform.future.result(timeout=60)

    inline = _host(refit_every=0, reform_every=10)
    started(inline)
    assert inline._swap()
    host = _host(refit_every=0, reform_every=10)
    started(host)
    live = host.live
    gate = threading.Event()
    calls: list[tuple[str, int]] = []
    real = ModelHost._replay

    def replay(self: ModelHost, new: Any, changes: Any) -> None:
        calls.append((threading.current_thread().name, len(changes)))
        if changes:
            assert gate.wait(30)
        real(self, new, changes)

    monkeypatch.setattr(ModelHost, "_replay", replay)

    seen, swapped = asyncio.run(_labels_while_held(host, host.maybe_swap(), gate))
    assert seen == [(25, 4)] * 4 and swapped  # the live model, its version, while the copy catches up
    assert [(name.split("_")[0], n) for name, n in calls] == [
        ("driftlabel-build", 3),
        ("driftlabel-model", 0),
    ]
    assert host.version == inline.version == GENERATION + 25 and host.live is not live
    _assert_same_model(host.live, inline.live)
    for h in (host, inline):
        h.close()


@pytest.mark.parametrize(("refit_every", "reform_every"), [(0, 10), (0, 12), (10, 0)])
def test_labelled_records_are_learned_on_a_copy_while_labels_keep_coming(
    monkeypatch: pytest.MonkeyPatch, refit_every: int, reform_every: int
) -> None:
    """The live learner's path: a copy learns on the build thread (predictions meanwhile come from the
    live model, with its version) and is swapped in; the model and the counters are those of learning
    on the model thread. A re-forming due in a step starts from a copy taken at its record; a refit due
    runs on the copy too."""
    steps = [_records(100, 4), _records(110, 3, valid=False), _records(120, 4), _records(130, 4)]
    inline = _host(refit_every=refit_every, reform_every=reform_every)
    host = _host(refit_every=refit_every, reform_every=reform_every)
    host.position = inline.position = 12  # the 12 seed records
    gate = threading.Event()
    real, real_refit = RedClassifier.learn_embeddings, RedClassifier.refit
    where: list[str] = []
    refits: list[str] = []

    def learn(self: Any, *args: Any, **kwargs: Any) -> Any:
        where.append(threading.current_thread().name.split("_")[0])
        if where[-1] == "driftlabel-build" and len(where) == 1:
            assert gate.wait(30)
        return real(self, *args, **kwargs)

    def refit(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not kwargs.get("resubset"):  # a re-forming's refit runs in the background, not in a step
            refits.append(threading.current_thread().name.split("_")[0])
        return real_refit(self, *args, **kwargs)

    monkeypatch.setattr(RedClassifier, "learn_embeddings", learn)
    monkeypatch.setattr(RedClassifier, "refit", refit)

    async def scenario() -> list[tuple[int, int]]:
        first = host.live
        seen, _ = await _labels_while_held(host, host.learn(steps[0], position=16, live=True), gate)
        assert host.live is not first and host.version == 16
        for k, step in enumerate(steps[1:], start=1):
            await host.learn(step, position=16 + sum(map(len, steps[1 : k + 1])), live=True)
        return seen

    assert asyncio.run(scenario()) == [(12, 4)] * 4
    # the last step brings the valid count since the fit from 8 to 12: a re-forming every 12 is due at
    # its last record, one every 10 at its second (learned in two parts, around the copy it starts
    # from); a refit every 10 at its second too (two parts around the refit, on the copy)
    assert where == ["driftlabel-build"] * (3 + (1 if (refit_every, reform_every) == (0, 12) else 2))
    assert refits == (["driftlabel-build"] if refit_every else [])
    position = 12
    for step in steps:
        position += len(step)
        inline._learn(step, position=position)
    assert host.state() == inline.state() and host.version == inline.version == 27
    assert host.reforming == inline.reforming == bool(reform_every)
    for h in (host, inline):
        if h.reform is not None:
            assert len(h.reform.replay) == (1 if reform_every == 10 else 0)  # the step's second part
            h.reform.future.result(timeout=60)
            assert h._swap()
    _assert_same_model(host.live, inline.live)
    for h in (host, inline):
        h.close()


def _feed(host: ModelHost, records: list[TrainingMessage], size: int, eager: bool) -> list[int]:
    """What the learner does: learn in polls of ``size``, settle a re-forming before the next is due,
    and swap when done (``eager``: wait for it at once; else only when it must)."""
    versions = []
    for i in range(0, len(records), size):
        chunk = records[i : i + size]
        if host.reform is not None and host.reform_due(chunk):
            host.reform.future.result(timeout=60)
            host._swap()
        host._learn(chunk, position=i + len(chunk))
        if eager and host.reform is not None:
            host.reform.future.result(timeout=60)
            host._swap()
        versions.append(host.version)
    if host.reform is not None:
        host.reform.future.result(timeout=60)
        host._swap()
    versions.append(host.version)
    return versions


@pytest.mark.parametrize("where", ["thread", "process"])
def test_versions_increase_and_agree_across_two_hosts_fed_the_same_log(where: str) -> None:
    recs = _records(100, 30) + _records(200, 8, valid=False) + _records(300, 30)
    a = _host(refit_every=0, reform_every=12, reform_in=where)
    b = _host(refit_every=0, reform_every=12, reform_in=where)
    va = _feed(a, recs, 7, eager=True)
    vb = _feed(b, recs, 5, eager=False)
    assert va == sorted(va) and vb == sorted(vb)  # versions only grow
    assert a.generation == b.generation == 5  # 60 valid examples, a re-forming every 12
    assert a.state() == b.state() and a.version == b.version == 5 * GENERATION + len(recs)
    assert a.model.subsets == b.model.subsets
    X = ClusterEmbedder().encode([f"{lab} {i}" for i in range(900, 940) for lab in LABELS])
    ra, rb = a.model.rank_embeddings(X, top_k=2), b.model.rank_embeddings(X, top_k=2)
    assert ra.labels == rb.labels
    # the same weights however the log was cut into polls (7 vs 5 here), up to float rounding
    np.testing.assert_allclose(np.asarray(ra.scores), np.asarray(rb.scores), atol=1e-6)
    for h in (a, b):
        h.close()


def test_the_judge_cannot_be_shown_more_candidates_than_a_label_carries() -> None:
    """judge_depth_candidates above top_k was silently cut to top_k; now a clear error says what to raise."""
    assert StreamSettings(judge_depth_candidates=10, top_k=10).judge_depth_candidates == 10
    with pytest.raises(ValidationError, match="DRIFTLABEL_STREAM_TOP_K"):
        StreamSettings(judge_depth_candidates=10)


def _seed_run(n: int, negatives: int = 0) -> SeedSet:
    seed = SeedSet()
    seed.add_training(
        [TrainingMessage(id=r.id, text=r.text, label=r.label, source="seed") for r in _records(0, n)]
    )
    if negatives:
        seed.add_training(
            [
                TrainingMessage(id=r.id, text=r.text, label=r.label, source="seed", valid=False)
                for r in _records(500, negatives, valid=False)
            ]
        )
    return seed


class CountingEmbedder(ClusterEmbedder):
    """Counts the texts it embeds and the threads it is called from."""

    def __init__(self) -> None:
        super().__init__()
        self.texts = 0
        self.threads: set[str] = set()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.texts += len(texts)
        self.threads.add(threading.current_thread().name)
        return super().encode(texts)


def test_a_grown_seed_run_refits_to_the_model_a_fresh_fit_builds() -> None:
    """The background refit of a grown seed run is the model :meth:`fit` builds from the same run (a
    late worker fits it in one go), embeds only the texts it has not embedded yet, and only on the
    model thread."""
    emb = CountingEmbedder()
    grown = ModelHost(emb, ExpertSettings(subset_size=2), reform_in="thread")
    grown._fit(_seed_run(12))
    assert emb.texts == 12
    emb.threads.clear()  # that fit ran here, on the test's thread
    seed = _seed_run(20, negatives=3)
    seed.add_control(
        ControlMessage(op="add_class", label="epsilon", description="epsilon things", examples=["alpha 90"])
    )
    asyncio.run(grown.refit_seed_run(seed, position=24))
    assert emb.texts == 12 + 8 + 3 + 2  # the new examples, the negatives, the description and example
    assert emb.threads == {"driftlabel-model_0"}
    fresh = ModelHost(ClusterEmbedder(), ExpertSettings(subset_size=2))
    fresh._fit(seed, position=24)
    assert grown.state() == fresh.state() and grown.version == 24 and grown.seed_run
    assert sorted(grown.live.labels) == sorted(fresh.live.labels) == sorted([*LABELS, "epsilon"])
    _assert_same_model(grown.live, fresh.live, top_k=3)
    grown.end_seed_run()
    assert not grown.seed_run and not grown._seed_vectors
    grown.close()
    fresh.close()


def test_labelling_goes_on_while_a_seed_run_refits(monkeypatch: pytest.MonkeyPatch) -> None:
    """No pause: while the refit of a grown seed run is being built, predictions come from the previous
    fit with its version; the finished model is swapped in whole (never a half-built one)."""
    host = ModelHost(ClusterEmbedder(), ExpertSettings(subset_size=2), reform_in="thread")
    host._fit(_seed_run(12), position=12)
    gate = threading.Event()
    real_build = host._build

    def slow_build(data: Any) -> Any:
        assert gate.wait(30)
        return real_build(data)

    monkeypatch.setattr(host, "_build", slow_build)

    async def scenario() -> tuple[list[tuple[int, int]], int]:
        seen, _ = await _labels_while_held(host, host.refit_seed_run(_seed_run(30), position=30), gate, 5)
        _, _, after, _ = await host.predict(["alpha 901"], 2)
        return seen, after

    seen, after = asyncio.run(scenario())
    assert [version for version, _ in seen] == [12] * 5 and after == 30
    assert host.live.n_examples == 30
    host.close()


def test_a_seed_run_refit_in_the_child_process_gives_the_same_model() -> None:
    """``reform_in = "process"`` (the worker's default) fits in the niced child process and loads the
    saved model back: the same predictions as the in-process build, with this host's embedder."""
    seed = _seed_run(20, negatives=3)
    out = []
    for where in ("process", "thread"):
        host = ModelHost(ClusterEmbedder(), ExpertSettings(subset_size=2), reform_in=where)
        host._fit(_seed_run(12), position=12)
        asyncio.run(host.refit_seed_run(seed, position=23))
        assert host.version == 23 and host.live.n_examples == 20
        assert host.live.embedder is host.embedder
        X = ClusterEmbedder().encode([f"{lab} {i}" for i in range(900, 920) for lab in LABELS])
        out.append(host.live.rank_embeddings(X, top_k=3))
        host.close()
    assert out[0].labels == out[1].labels
    np.testing.assert_allclose(np.asarray(out[0].scores), np.asarray(out[1].scores), atol=1e-5)


def _add(label: str, n: int = 4, description: str | None = None) -> ControlMessage:
    return ControlMessage(
        op="add_class", label=label, description=description, examples=[f"{label} {i}" for i in range(n)]
    )


def test_add_class_is_applied_on_a_copy_and_matches_the_inline_placement() -> None:
    """``control`` builds a new label on a copy in the background, and learns a known label's examples
    there too: the same model as applying the op on the model thread (same embeddings, same RNG state),
    at the op's log position."""
    a, b = _host(refit_every=0), _host(refit_every=0)
    msgs = [_add("epsilon", description="the fifth"), _add("zeta"), _add("alpha", 2)]  # alpha: known
    for k, msg in enumerate(msgs):
        before = a.live
        asyncio.run(a.control(msg, position=20 + k))
        b._control(msg, position=20 + k)
        assert a.live is not before, f"{msg.label} not applied on a copy"
    assert a.version == b.version == 22 and a.changes_since_checkpoint == b.changes_since_checkpoint
    assert a.live.labels == b.live.labels and "zeta" in a.live.labels
    assert a.live.descriptions == b.live.descriptions
    _assert_same_model(a.live, b.live, top_k=3, n=10)
    a.close()
    b.close()


def test_labelling_goes_on_while_a_new_label_is_placed(monkeypatch: pytest.MonkeyPatch) -> None:
    """No pause for ``add_class``: predictions are served by the previous model (its version, without
    the new label) until the placed copy is swapped in whole; a failed placement leaves it untouched."""
    host = _host(refit_every=0)
    host.position = 12
    gate = threading.Event()
    real = ModelHost._add_class_embedded

    def slow(model: Any, msg: Any, X: Any, d: Any) -> None:
        assert gate.wait(30)
        real(model, msg, X, d)

    monkeypatch.setattr(ModelHost, "_add_class_embedded", staticmethod(slow))
    before = host.live

    async def scenario() -> tuple[list[tuple[int, int]], int, int]:
        seen, _ = await _labels_while_held(host, host.control(_add("epsilon"), position=13), gate, 5)
        _, _, version, n_classes = await host.predict(["alpha 901"], 2)
        return seen, version, n_classes

    seen, version, n_classes = asyncio.run(scenario())
    assert seen == [(12, 4)] * 5 and (version, n_classes) == (13, 5)
    assert host.live is not before and "epsilon" not in before.labels
    monkeypatch.setattr(ModelHost, "_add_class_embedded", staticmethod(real))
    live = host.live
    bad = ControlMessage(op="add_class", label="eta", examples=[])
    with pytest.raises(ValueError):  # no examples and no description: InvalidDataError
        asyncio.run(host.control(bad, position=14))
    assert host.live is live and host.version == 13 and "eta" not in live.labels
    host.close()


def test_a_placed_label_stops_the_old_models_dropped_re_solve() -> None:
    """The live model a control op replaces lets go of its pending re-solve; the copy that replaced it
    dropped it for the new label, so nobody holds it and it stops (it would take a core for nothing)."""
    settings = ExpertSettings(subset_size=2, resolve_every=16, resolve_lag=50.0)
    host = ModelHost(ClusterEmbedder(), settings, reform_in="thread")
    host._fit(_seed_run(12))
    host.end_seed_run()
    host._learn(_records(100, 40))
    job = host.live._pending
    assert job is not None and not job.stop.is_set()
    asyncio.run(host.control(_add("epsilon"), position=5))
    assert job.stop.is_set() and "epsilon" in host.live.labels
    host.close()


def test_the_host_waits_for_a_running_re_solve_off_the_model_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before a save (checkpoint) or a step that reaches a swap point, the host waits for the unfinished
    re-solve on the event loop: predictions keep being served meanwhile."""
    import driftlabel.models.resolve as resolve

    gate = threading.Event()
    real = resolve._solve

    def slow(*args: Any) -> Any:
        assert gate.wait(30)
        return real(*args)

    monkeypatch.setattr(resolve, "_solve", slow)
    settings = ExpertSettings(subset_size=2, resolve_every=16, resolve_lag=1.0)
    host = ModelHost(ClusterEmbedder(), settings, reform_in="thread")
    host._fit(_seed_run(12))
    host.end_seed_run()
    host._learn(_records(100, 20))
    assert host.live.unfinished_resolves()

    async def scenario() -> tuple[int, int]:
        waiting = asyncio.create_task(host.wait_for_resolves())
        served = 0
        for _ in range(5):
            await asyncio.wait_for(host.predict(["alpha 1"], 2), 10)
            served += 1
        assert not waiting.done()
        other = asyncio.create_task(host.wait_for_resolves())
        await asyncio.sleep(0.05)
        other.cancel()  # a shutdown cancels the learner: the wait must not swallow that
        with pytest.raises(asyncio.CancelledError):
            await other
        gate.set()
        return served, await waiting

    assert asyncio.run(scenario()) == (5, 1)
    assert not host.live.unfinished_resolves()
    host.close()


def test_a_long_model_thread_job_is_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """What held labelling shows in the worker's log (``-v``): jobs past ``SLOW_JOB_S``, by name."""
    import driftlabel.streams.host as host_module

    host = _host(refit_every=0)
    caplog.set_level(logging.INFO, logger="driftlabel.streams.host")
    asyncio.run(host.predict(["alpha 1"], 2))
    assert "model thread" not in caplog.text
    monkeypatch.setattr(host_module, "SLOW_JOB_S", 0.0)
    asyncio.run(host.predict(["alpha 1"], 2))
    assert "model thread: _predict ran" in caplog.text
    host.close()
