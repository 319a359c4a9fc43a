"""kill -9 of a worker at random moments while texts stream, restarted each time (quick size).

One module-scoped run: a real broker, the simulated expert, one ``driftlabel worker`` (static embedder,
30 CLINC150 classes seeded with 10 examples each, 30 % judged), 1,000 texts at 40/s and two SIGKILLs at
seeded random moments. The tests then read the raw topics: every id one final label, no training record
twice, nothing accepted without a verdict, and the final model equal to a from-scratch replay of the
same ``training``/``control`` log by a worker that was never killed.
The full size (20,000 texts, a kill every ~30 s) is ``driftlabel bench reliability``.
"""

from __future__ import annotations

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
    with chaos.one_worker_with_stops(
        work, clinc_file, chaos_broker, n_texts=N_TEXTS, rate=RATE, stops=2, seed=7, id_prefix="k"
    ) as out:
        yield out


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
    assert len(run.ready_s) == run.kills == 2, f"restarts that got ready: {run.ready_s}"  # no crash loop
    assert max(run.recovery_s) < 60, run.recovery_s


def test_final_model_equals_a_replay_without_kills(killed: Any) -> None:
    """Stop the killed worker (final checkpoint); a never-killed worker in another group replays the same
    log from scratch; both checkpoints must hold the same model: same version, same predictions."""
    cluster, worker, _, rows = killed
    r = chaos.replay_check(cluster, worker, rows["val"])
    assert r.live_version == r.replay_version, f"live model_version {r.live_version} vs {r.replay_version}"
    assert r.same_labels and r.live_examples == r.replay_examples, (r.live_examples, r.replay_examples)
    assert r.differ == 0, (
        f"{r.differ} of {r.probes} predictions differ; accuracy {r.live_accuracy:.3f} (killed) vs "
        f"{r.replay_accuracy:.3f} (replay)"
    )
    assert r.equal
