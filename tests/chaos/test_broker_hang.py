"""The broker stops answering for 40 s mid-stream (SIGSTOP, then SIGCONT), with two workers and a slow
judge, so items are mid-judgement and outputs in flight when it freezes.

40 s is past the clients' request timeout (30 s) and the group's session timeout (6 s): fetches, offset
commits and heartbeats time out, the coordinator is marked dead, and after the broker answers again the
members find they were expelled and rejoin (a rebalance). A worker may ride that out or stop itself
(status 70, when an output may be half out); the harness restarts it as an orchestrator would. Either
way every id gets exactly one final label, no judged pair is written twice, nothing is accepted without
a verdict, and nothing is dead-lettered (a stalled broker is not bad input).

The module runs its own broker: freezing the suite's shared one would stall the other modules.
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
HANG_S = 40.0


@pytest.fixture(scope="module")
def hung(clinc_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    rows = chaos.clinc_rows(clinc_file, classes=30)
    cluster = chaos.Cluster(
        tmp_path_factory.mktemp("hang"), clinc_file,
        stream_env={"judge_target_share": "0.3"},
        judge_kwargs={"latency_ms": 800, "latency_jitter_ms": 600},  # judgements in flight at the freeze
        judge_env={"timeout_s": "10"},
    )  # fmt: skip
    cluster.start()
    try:
        cluster.send(cluster.names.training, chaos.seed_training(rows["train"]))
        workers = [cluster.worker("a"), cluster.worker("b")]
        for w in workers:
            w.start()
        values, _ = chaos.text_values(rows["train"][300:] + rows["test"], N_TEXTS, "hang")
        events = [(0.4 * N_TEXTS / RATE, lambda: cluster.hang_broker(HANG_S))]
        run = chaos.kill_run(cluster, workers, values, RATE, [], events=events, supervise=True, timeout_s=300)
        yield cluster, run
    finally:
        cluster.stop()


def test_every_id_gets_exactly_one_final_label(hung: Any) -> None:
    _, run = hung
    assert not run.delivery.lost, f"{len(run.delivery.lost)} of {N_TEXTS} ids never got a final label"
    assert not run.delivery.duplicated, f"{len(run.delivery.duplicated)} ids have >1 final label"


def test_nothing_learned_twice_or_accepted_without_a_verdict(hung: Any) -> None:
    _, run = hung
    assert not run.duplicated_training, list(run.duplicated_training.items())[:5]
    assert not run.accepted_without_verdict, run.accepted_without_verdict[:10]


def test_a_stalled_broker_is_not_bad_input_and_workers_only_fail_stop(hung: Any) -> None:
    cluster, run = hung
    assert cluster.follower is not None
    letters = [r.json() for r in cluster.follower.snapshot(cluster.names.dead_letter)]
    assert not letters, letters[:3]
    assert all(code == 70 for _, code in run.exits), run.exits  # never a crash of another kind
