"""A worker with ``judge.question = "choose"`` and ``judge.batch_size`` 4: judged items share calls, every
item still gets exactly one final label, and the training log keeps each item's accepted pair and its
hard negatives. Real broker, real worker process, the real simulated expert over loopback HTTP."""

from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow


def test_batched_choose_judges_several_items_per_call(
    broker: Any, judge_server: Any, clinc: Any, h: Any, tmp_path: Path
) -> None:
    prefix = f"t{int(time.time() * 1000) % 10**8}batch."
    judge_env = {"question": "choose", "batch_size": "4", "batch_wait_ms": "300", "timeout_s": "10"}
    worker = h.make_worker(
        broker, prefix, tmp_path, judge_server.base_url, judge_env,
        judge_target_share="1.0", batch_within_s="0.05", checkpoint_every_s="3600",
    )  # fmt: skip
    names = worker.names
    h.send(worker.kafka, names.training, h.seed_records(clinc))
    worker.start()
    try:
        before = judge_server.counts["requests"]
        pool = clinc["test"][:60]
        values = [{"id": f"b{i}", "text": t} for i, (t, _) in enumerate(pool)]
        truth = {v["id"]: lab for v, (_, lab) in zip(values, pool, strict=True)}
        ids = set(truth)

        def done(records: list[tuple[str, Any]]) -> bool:
            finals = {v["id"] for t, v in records if t == names.labels and v.get("final") and v["id"] in ids}
            return finals >= ids

        h.send(worker.kafka, names.texts, values)
        records = h.read_until(worker.kafka, [names.labels, names.training], done, timeout=180)
        calls = judge_server.counts["requests"] - before
        finals = Counter(
            v["id"] for t, v in records if t == names.labels and v.get("final") and v["id"] in ids
        )
        assert set(finals) == ids and set(finals.values()) == {1}, "exactly one final label per item"
        final = {v["id"]: v for t, v in records if t == names.labels and v.get("final") and v["id"] in ids}
        judged = [i for i, v in final.items() if v["status"] in ("validated", "corrected")]
        assert len(judged) >= 40, Counter(v["status"] for v in final.values())
        assert sum(final[i]["label"] == truth[i] for i in judged) >= 0.9 * len(judged)
        assert calls <= len(ids) / 2, f"{calls} calls for {len(ids)} items: batches did not form"
        training = [v for t, v in records if t == names.training and v.get("source") == "judge"]
        corrected = [i for i in judged if final[i]["status"] == "corrected"]
        for item in corrected:  # the pick and the candidates ranked above it, as hard negatives
            pairs = {(v["label"], v["valid"]) for v in training if v["id"] == item}
            assert (final[item]["label"], True) in pairs and any(not ok for _lab, ok in pairs), pairs
        page = worker.metrics()
        requests = sum(
            float(m.group(1))
            for m in re.finditer(r'^driftlabel_judge_requests_total\{verdict="[a-z]+"\} (\S+)$', page, re.M)
        )
        assert requests >= len(judged)  # a request metric per judged item, whatever the batching
    finally:
        worker.stop()
