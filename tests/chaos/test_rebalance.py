"""A worker joins mid-stream and leaves again (scale-out, then scale-in): two live rebalances move
partitions while texts are being labelled and judged. Every id still gets exactly one final label in the
raw ``labels`` topic, and no judged training pair is written twice."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from driftlabel.bench import chaos

pytestmark = pytest.mark.slow

N_TEXTS = 1200
RATE = 40.0


@pytest.fixture(scope="module")
def rebalanced(
    chaos_broker: Any, clinc_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    rows = chaos.clinc_rows(clinc_file, classes=30)
    cluster = chaos.Cluster(
        tmp_path_factory.mktemp("rebalance"), clinc_file, broker=chaos_broker,
        stream_env={"judge_target_share": "0.3"},
    )  # fmt: skip
    cluster.start()
    try:
        cluster.send(cluster.names.training, chaos.seed_training(rows["train"]))
        a, b = cluster.worker("a"), cluster.worker("b")
        a.start()
        ready: list[float] = []

        def join() -> None:  # scale out: b starts while a labels; the group rebalances when it joins
            b.spawn()
            threading.Thread(target=lambda: ready.append(b.wait_ready()), daemon=True).start()

        labelled_by_b: list[float] = []

        def leave() -> None:  # scale in: SIGTERM, after noting what b labelled
            with contextlib.suppress(OSError):
                labelled_by_b.append(b.metric("driftlabel_items_total"))
            b.stop()

        values, _ = chaos.text_values(rows["train"][300:] + rows["test"], N_TEXTS, "rb")
        duration = N_TEXTS / RATE
        events = [(0.1 * duration, join), (0.75 * duration, leave)]
        run = chaos.kill_run(cluster, [a, b], values, RATE, [], events=events, timeout_s=240)
        yield cluster, a, b, run, ready, labelled_by_b
    finally:
        cluster.stop()


def test_the_joining_worker_took_partitions_and_labelled_texts(rebalanced: Any) -> None:
    _, _, b, _, ready, labelled_by_b = rebalanced
    assert ready, "worker b never became ready:\n" + b.full_log()[-2000:]
    assert labelled_by_b and labelled_by_b[0] > 0, "worker b labelled nothing before it left"


def test_every_id_gets_exactly_one_final_label_across_both_rebalances(rebalanced: Any) -> None:
    _, _, _, run, _, _ = rebalanced
    assert not run.delivery.lost, f"{len(run.delivery.lost)} of {N_TEXTS} ids never got a final label"
    assert not run.delivery.duplicated, f"{len(run.delivery.duplicated)} ids have >1 final label"


def test_no_training_record_twice_and_none_accepted_without_a_verdict(rebalanced: Any) -> None:
    _, _, _, run, _, _ = rebalanced
    assert not run.duplicated_training, list(run.duplicated_training.items())[:5]
    assert not run.accepted_without_verdict, run.accepted_without_verdict[:10]
