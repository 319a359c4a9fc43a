"""Two workers share the texts; one is killed for good mid-stream: the survivor takes its partitions and
every id still gets exactly one final label (raw ``labels`` topic, no consumer-side dedupe). While both
run, bad ``training``/``control`` records (read by every worker) must still get one dead letter each."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from driftlabel.bench import chaos

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lost_worker(
    chaos_broker: Any, clinc_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    rows = chaos.clinc_rows(clinc_file, classes=30)
    cluster = chaos.Cluster(
        tmp_path_factory.mktemp("loss"),
        clinc_file,
        broker=chaos_broker,
        stream_env={"judge_target_share": "0.3"},
    )
    cluster.start()
    try:
        cluster.send(cluster.names.training, chaos.seed_training(rows["train"]))
        a, b = cluster.worker("a"), cluster.worker("b")
        a.start()
        b.start()
        # warm up until both own partitions (the group rebalances when b joins)
        warm, _ = chaos.text_values(rows["test"], 200, "warm")
        cluster.send(cluster.names.texts, warm)
        assert cluster.follower is not None
        cluster.follower.wait(chaos.all_final([v["id"] for v in warm], cluster.names.labels), 120, "warm-up")
        shared = a.metric("driftlabel_items_total") > 0 and b.metric("driftlabel_items_total") > 0
        bad = [b'{"id": "bad-1", "text": "x", "label": ', b'{"id": "bad-2", "text": "x"}']
        bad_pos = [(cluster.names.training, p, o) for p, o in cluster.send(cluster.names.training, bad)]
        bad_ctl = [b'{"op": "explode", "label": "x"}']
        bad_pos += [(cluster.names.control, p, o) for p, o in cluster.send(cluster.names.control, bad_ctl)]
        values, _ = chaos.text_values(rows["train"][300:], 600, "loss")
        run = chaos.kill_run(
            cluster, [a, b], values, 40.0, [6.0], restart=False, victim=lambda k: b, timeout_s=180
        )
        yield cluster, a, b, run, shared, bad_pos
    finally:
        cluster.stop()


def test_both_workers_had_partitions(lost_worker: Any) -> None:
    assert lost_worker[4], "the two workers did not share the partitions before the kill"


def test_survivor_takes_over_and_nothing_is_lost(lost_worker: Any) -> None:
    _, a, b, run, _, _ = lost_worker
    assert not b.alive and a.alive
    assert not run.delivery.lost, f"{len(run.delivery.lost)} ids lost: {run.delivery.lost[:5]}"
    assert not run.accepted_without_verdict
    assert all(x < 120 for x in run.worst_latency_after_kill_s), run.worst_latency_after_kill_s


def test_no_duplicate_after_takeover(lost_worker: Any) -> None:
    run = lost_worker[3]
    assert not run.delivery.duplicated, f"{len(run.delivery.duplicated)} ids got 2 final labels"


def test_bad_shared_records_are_dead_lettered_once_with_two_workers(lost_worker: Any) -> None:
    cluster, _, _, _, _, bad_pos = lost_worker
    seen: Counter[tuple[str, int, int]] = Counter()
    for r in cluster.follower.snapshot(cluster.names.dead_letter):
        v = r.json()
        if isinstance(v, dict):
            seen[(str(v.get("topic")), int(v.get("partition", -1)), int(v.get("offset", -1)))] += 1
    assert all(seen[p] >= 1 for p in bad_pos), "a bad record was never dead-lettered"
    assert {p: seen[p] for p in bad_pos} == dict.fromkeys(bad_pos, 1)
