"""kill -9 of a worker at random moments while texts stream, restarted each time (quick size).

One module-scoped run: a real broker, the simulated expert, one ``driftlabel worker`` (static embedder,
30 CLINC150 classes seeded with 10 examples each, 30 % judged), 1,000 texts at 40/s and two SIGKILLs at
seeded random moments. The tests then read the raw topics: every id one final label, no training record
twice, nothing accepted without a verdict, and the final model equal to a from-scratch replay of the
same ``training``/``control`` log by a worker that was never killed.
The full size (20,000 texts, a kill every ~30 s) is ``driftlabel bench reliability``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from driftlabel.bench import chaos

pytestmark = pytest.mark.slow

N_TEXTS = 1000
RATE = 40.0


@pytest.fixture(scope="module")
def killed(chaos_broker: Any, clinc_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    work = tmp_path_factory.mktemp("kill")
    rows = chaos.clinc_rows(clinc_file, classes=30)
    cluster = chaos.Cluster(work, clinc_file, broker=chaos_broker, stream_env={"judge_target_share": "0.3"})
    cluster.start()
    try:
        cluster.send(cluster.names.training, chaos.seed_training(rows["train"]))
        worker = cluster.worker("w0")
        worker.start()
        values, _ = chaos.text_values(rows["train"][300:] + rows["test"], N_TEXTS, "k")
        duration = N_TEXTS / RATE
        rng = random.Random(7)
        kill_at = sorted(rng.uniform(0.2 * duration, 0.8 * duration) for _ in range(2))
        run = chaos.kill_run(cluster, [worker], values, RATE, kill_at, timeout_s=240)
        yield cluster, worker, run, rows
    finally:
        cluster.stop()


def test_every_id_gets_a_final_label(killed: Any) -> None:
    _, worker, run, _ = killed
    assert run.kills == 2 and worker.starts == 3
    assert not run.delivery.lost, f"{len(run.delivery.lost)} of {N_TEXTS} ids never got a final label"


def test_no_id_gets_two_final_labels(killed: Any) -> None:
    _, _, run, _ = killed
    assert not run.delivery.duplicated, f"{len(run.delivery.duplicated)} ids have >1 final label"


def test_no_training_record_twice(killed: Any) -> None:
    _, _, run, _ = killed
    assert not run.duplicated_training, list(run.duplicated_training.items())[:5]


def test_nothing_accepted_without_a_verdict(killed: Any) -> None:
    _, _, run, _ = killed
    assert not run.accepted_without_verdict, run.accepted_without_verdict[:10]


def test_service_recovers_after_each_kill(killed: Any) -> None:
    _, _, run, _ = killed
    assert len(run.recovery_s) == 2 and all(np.isfinite(run.recovery_s)), run.recovery_s


def test_final_model_equals_a_replay_without_kills(killed: Any) -> None:
    """Stop the killed worker (final checkpoint); a never-killed worker in another group replays the same
    log from scratch; both checkpoints must hold the same model: same version, same predictions."""
    from driftlabel.models import EmbedderSettings, RedClassifier, load_embedder

    cluster, worker, _, rows = killed
    cluster.fault("down")  # the reference re-reads old texts: it must not add judged pairs of its own
    try:
        live = _settled_version(worker)
        assert worker.stop() is not None
        ref = cluster.worker("ref")
        ref.env["DRIFTLABEL_KAFKA_GROUP_ID"] = f"{cluster.prefix}ref"
        ref.start()
        replayed = _settled_version(ref)  # it replays the whole training + control log
        ref.stop()
    finally:
        cluster.fault(None)
    a, b = chaos.newest_model(cluster.work / "ckpt-w0"), chaos.newest_model(cluster.work / "ckpt-ref")
    assert a is not None and b is not None, "a worker left no checkpoint"
    emb = load_embedder(EmbedderSettings(kind="static"))
    ma, mb = RedClassifier.load(a, embedder=emb), RedClassifier.load(b, embedder=emb)
    probes = [t for t, _ in rows["val"]]
    pa, pb = ma.predict(probes), mb.predict(probes)
    differ = sum(x != y for x, y in zip(pa, pb, strict=True))
    truth = [lab for _, lab in rows["val"]]
    acc = [float(np.mean([p == t for p, t in zip(pp, truth, strict=True)])) for pp in (pa, pb)]
    assert live == replayed, f"live model_version {live} (killed worker) vs {replayed} (replay)"
    assert (ma.n_examples, ma.labels) == (mb.n_examples, mb.labels), (ma.n_examples, mb.n_examples)
    assert differ == 0, (
        f"{differ} of {len(probes)} predictions differ; versions {ma.model_version} (killed) vs "
        f"{mb.model_version} (replay); accuracy {acc[0]:.3f} vs {acc[1]:.3f}"
    )
    assert ma.model_version == mb.model_version


def _settled_version(w: chaos.Worker, quiet_s: float = 4.0, timeout_s: float = 60.0) -> float:
    """The worker's ``driftlabel_model_version`` once it has not changed for ``quiet_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    last, since = w.metric("driftlabel_model_version"), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        v = w.metric("driftlabel_model_version")
        if v != last:
            last, since = v, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return v
    return last
