"""SIGTERM of a worker mid-stream (a rolling deploy, a scale-in), restarted each time (quick size).

The graceful path differs from ``kill -9``: the worker writes a final checkpoint while its learner may
be mid-step, commits the offsets it acknowledged and leaves the group. One module-scoped run (a real
broker, the simulated expert, one ``driftlabel worker``, 600 texts at 40/s, two SIGTERMs at seeded
random moments); then every id has one final label, no training record is written twice, and the
model the restarts built equals a from-scratch replay of the same log.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from driftlabel.bench import chaos

pytestmark = pytest.mark.slow

N_TEXTS = 600
RATE = 40.0


@pytest.fixture(scope="module")
def stopped(chaos_broker: Any, clinc_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    work = tmp_path_factory.mktemp("term")
    rows = chaos.clinc_rows(clinc_file, classes=30)
    cluster = chaos.Cluster(work, clinc_file, broker=chaos_broker, stream_env={"judge_target_share": "0.3"})
    cluster.start()
    try:
        cluster.send(cluster.names.training, chaos.seed_training(rows["train"]))
        worker = cluster.worker("w0")
        worker.start()
        values, _ = chaos.text_values(rows["train"][300:] + rows["test"], N_TEXTS, "g")
        duration = N_TEXTS / RATE
        rng = random.Random(11)
        stop_at = sorted(rng.uniform(0.2 * duration, 0.8 * duration) for _ in range(2))
        run = chaos.kill_run(cluster, [worker], values, RATE, stop_at, graceful=True, timeout_s=240)
        yield cluster, worker, run, rows
    finally:
        cluster.stop()


def test_every_id_gets_exactly_one_final_label(stopped: Any) -> None:
    _, worker, run, _ = stopped
    assert run.kills == 2 and worker.starts == 3
    assert not run.delivery.lost, f"{len(run.delivery.lost)} of {N_TEXTS} ids never got a final label"
    assert not run.delivery.duplicated, f"{len(run.delivery.duplicated)} ids have >1 final label"


def test_no_training_record_twice_and_none_accepted_without_a_verdict(stopped: Any) -> None:
    _, _, run, _ = stopped
    assert not run.duplicated_training, list(run.duplicated_training.items())[:5]
    assert not run.accepted_without_verdict, run.accepted_without_verdict[:10]


def test_final_model_equals_a_replay_without_stops(stopped: Any) -> None:
    cluster, worker, _, rows = stopped
    r = chaos.replay_check(cluster, worker, rows["val"])
    assert r.live_version == r.replay_version, f"live model_version {r.live_version} vs {r.replay_version}"
    assert r.same_labels and r.live_examples == r.replay_examples, (r.live_examples, r.replay_examples)
    assert r.differ == 0 and r.equal, f"{r.differ} of {r.probes} predictions differ"
