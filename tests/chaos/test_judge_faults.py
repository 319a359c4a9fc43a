"""The judge endpoint misbehaves for a while (down, 5xx, timing out, garbage), then recovers.

One worker judges every text (share 1.0), so each text takes the judge path. During each fault texts
keep streaming: every text still gets its first label at once (labelling continues), no final label is
accepted without a ``valid: true`` verdict, and after recovery the backlog drains: every id ends with
exactly one final label. A garbage answer is not a verdict: such items end ``unresolved`` (review) or
wait; they are never accepted.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from driftlabel.bench import chaos

pytestmark = pytest.mark.slow

FAULT_S = 4.0  # seconds each fault lasts here; minutes in `driftlabel bench reliability`


@pytest.fixture(scope="module")
def cluster(chaos_broker: Any, clinc_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    rows = chaos.clinc_rows(clinc_file, classes=30)
    c = chaos.Cluster(
        tmp_path_factory.mktemp("faults"),
        clinc_file,
        broker=chaos_broker,
        judge_kwargs={"hang_s": 5.0},
        stream_env={"judge_target_share": "1.0"},
    )
    c.start()
    try:
        c.send(c.names.training, chaos.seed_training(rows["train"]))
        w = c.worker("w0")
        w.start()
        c.rows = rows
        c.w = w
        yield c
    finally:
        c.stop()


def _first_seen(c: Any, ids: set[str]) -> bool:
    got = {v.get("id") for r in c.follower.snapshot(c.names.labels) if isinstance(v := r.json(), dict)}
    return ids <= got


@pytest.mark.parametrize("kind", ["down", "503", "500", "timeout", "garbage"])
def test_fault_then_recovery(cluster: Any, kind: str) -> None:
    c = cluster
    start = {"down": 0, "503": 1, "500": 2, "timeout": 3, "garbage": 4}[kind] * 60
    values, _ = chaos.text_values(c.rows["test"][start : start + 60], 60, f"f{kind}")
    ids = {v["id"] for v in values}
    c.fault(kind)
    try:
        t0 = time.monotonic()
        chaos.paced_send(c, values, 60 / (FAULT_S / 2))
        c.follower.wait(lambda f: _first_seen(c, ids), 60, "a first label for every text during the fault")
        time.sleep(max(0.0, FAULT_S - (time.monotonic() - t0)))
        labels = c.follower.snapshot(c.names.labels)
        finals_now = {
            v["id"]: v
            for r in labels
            if isinstance(v := r.json(), dict) and v.get("final") and v.get("id") in ids
        }
        accepted = [v for v in finals_now.values() if v["status"] in ("validated", "corrected")]
        assert not accepted, f"accepted during a '{kind}' outage: {accepted[:3]}"
        if kind != "garbage":
            assert not finals_now, f"final labels during a '{kind}' outage: {list(finals_now.values())[:3]}"
        assert c.w.alive, "the worker died during the fault"
    finally:
        c.fault(None)
    t_up = time.monotonic()
    c.follower.wait(chaos.all_final(ids, c.names.labels), 90, f"the backlog drained after '{kind}'")
    drain = time.monotonic() - t_up
    time.sleep(2)
    labels = c.follower.snapshot(c.names.labels)
    d = chaos.delivery(ids, labels)
    assert d.ok, (d.lost[:5], d.duplicated)
    assert not chaos.accepted_without_verdict(labels, c.follower.snapshot(c.names.judge_verdicts))
    print(f"fault {kind}: backlog of {len(ids)} drained in {drain:.1f}s")
