"""The long chaos cases (``chaos_long``: skipped unless ``DRIFTLABEL_CHAOS_LONG=1`` or ``-m chaos_long``).

Bigger versions of the fast cases, as pass/fail tests; the figures at full size come from
``driftlabel bench reliability``.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import pytest

from driftlabel.bench import chaos

pytestmark = [pytest.mark.slow, pytest.mark.chaos_long]


def test_many_kills_nothing_lost_nothing_twice(chaos_broker: Any, clinc_file: Path, tmp_path: Path) -> None:
    """5,000 texts at 50/s, a kill -9 every ~20 s (about 5), restarted each time."""
    rows = chaos.clinc_rows(clinc_file, classes=30)
    with chaos.Cluster(
        tmp_path, clinc_file, broker=chaos_broker, stream_env={"judge_target_share": "0.3"}
    ) as cluster:
        cluster.send(cluster.names.training, chaos.seed_training(rows["train"]))
        worker = cluster.worker("w0")
        worker.start()
        values, _ = chaos.text_values(rows["train"][300:] + rows["test"], 5000, "long")
        kill_at = chaos.random_kill_times(100.0, 20.0, random.Random(3))
        run = chaos.kill_run(cluster, [worker], values, 50.0, kill_at, timeout_s=300)
        assert run.kills == len(kill_at)
        assert not run.delivery.lost, f"{len(run.delivery.lost)} lost"
        assert not run.accepted_without_verdict
        assert not run.delivery.duplicated, f"{len(run.delivery.duplicated)} ids with >1 final label"
        assert not run.duplicated_training, f"{len(run.duplicated_training)} training records twice"


@pytest.mark.parametrize("kind", ["down", "503", "timeout"])
def test_minute_long_judge_outage_drains(
    chaos_broker: Any, clinc_file: Path, tmp_path: Path, kind: str
) -> None:
    """A 60 s outage with texts streaming: nothing final meanwhile, everything final after recovery."""
    rows = chaos.clinc_rows(clinc_file, classes=30)
    with chaos.Cluster(
        tmp_path, clinc_file, broker=chaos_broker, judge_kwargs={"hang_s": 5.0},
        stream_env={"judge_target_share": "1.0"},
    ) as c:  # fmt: skip
        c.send(c.names.training, chaos.seed_training(rows["train"]))
        w = c.worker("w0")
        w.start()
        values, _ = chaos.text_values(rows["test"], 600, f"long{kind}")
        ids = {v["id"] for v in values}
        c.fault(kind)
        try:
            chaos.paced_send(c, values, 10.0)
            assert c.follower is not None
            labels = c.follower.snapshot(c.names.labels)
            assert not [r for r in labels if (v := r.json()) and v.get("final") and v.get("id") in ids]
            assert w.alive
        finally:
            c.fault(None)
        t0 = time.monotonic()
        c.follower.wait(chaos.all_final(ids, c.names.labels), 300, "drain")
        print(f"{kind}: {len(ids)} texts drained in {time.monotonic() - t0:.1f}s")
        d = chaos.delivery(ids, c.follower.snapshot(c.names.labels))
        assert d.ok, (len(d.lost), len(d.duplicated))
