"""SIGTERM of a worker mid-stream (a rolling deploy, a scale-in), restarted each time (quick size).

The graceful path differs from ``kill -9``: the worker writes a final checkpoint while its learner may
be mid-step, commits the offsets it acknowledged and leaves the group. One module-scoped run (a real
broker, the simulated expert, one ``driftlabel worker``, 600 texts at 40/s, two SIGTERMs at seeded
random moments); then every id has one final label, no training record is written twice, and the
model the restarts built equals a from-scratch replay of the same log.
"""

from __future__ import annotations

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
    with chaos.one_worker_with_stops(
        work,
        clinc_file,
        chaos_broker,
        n_texts=N_TEXTS,
        rate=RATE,
        stops=2,
        seed=11,
        id_prefix="g",
        graceful=True,
    ) as out:
        yield out


def test_every_id_gets_exactly_one_final_label(stopped: Any) -> None:
    _, worker, run, _ = stopped
    assert run.kills == 2 and worker.starts == 3
    # a running worker stops in order (exit 0, not SIGKILLed after hanging); the seeded moments may also
    # stop one still starting, which dies by the signal before it wrote anything
    ready_codes = [code for code, ready in run.stop_codes if ready]
    assert ready_codes and all(c == 0 for c in ready_codes), f"SIGTERM exit codes: {run.stop_codes}"
    assert all(code in (0, -15) for code, _ in run.stop_codes), run.stop_codes
    assert worker.alive, "the last restart did not get going"
    assert "final checkpoint failed" not in worker.full_log()
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
