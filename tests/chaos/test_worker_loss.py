"""Two workers share the texts; one is killed for good mid-stream: the survivor takes its partitions and
every id still gets exactly one final label (raw ``labels`` topic, no consumer-side dedupe)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from driftlabel.bench import chaos

pytestmark = pytest.mark.slow


def test_survivor_takes_over_nothing_lost_no_duplicate(
    chaos_broker: Any, clinc_file: Path, tmp_path: Path
) -> None:
    rows = chaos.clinc_rows(clinc_file, classes=30)
    with chaos.Cluster(
        tmp_path, clinc_file, broker=chaos_broker, stream_env={"judge_target_share": "0.3"}
    ) as cluster:
        cluster.send(cluster.names.training, chaos.seed_training(rows["train"]))
        a, b = cluster.worker("a"), cluster.worker("b")
        a.start()
        b.start()
        # warm up until both own partitions (the group rebalances when b joins)
        warm, _ = chaos.text_values(rows["test"], 200, "warm")
        cluster.send(cluster.names.texts, warm)
        cluster.follower.wait(chaos.all_final([v["id"] for v in warm], cluster.names.labels), 120, "warm-up")
        assert a.metric("driftlabel_items_total") > 0 and b.metric("driftlabel_items_total") > 0, (
            "the two workers did not share the partitions"
        )
        values, _ = chaos.text_values(rows["train"][300:], 600, "loss")
        run = chaos.kill_run(
            cluster, [a, b], values, 40.0, [6.0], restart=False, victim=lambda k: b, timeout_s=180
        )
        assert not b.alive and a.alive
        assert not run.delivery.lost, f"{len(run.delivery.lost)} ids lost: {run.delivery.lost[:5]}"
        assert not run.accepted_without_verdict
        if run.delivery.duplicated:
            pytest.xfail(
                f"at-least-once today (issue 7): {len(run.delivery.duplicated)} ids got 2 final labels"
            )
        assert a.metric("driftlabel_items_total") > 0
