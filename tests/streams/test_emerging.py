"""New classes nobody declared, found without the judge: texts labelled directly whose nearest stored
example is far (``stream.proposal_far_texts``) gather in the worker's pool, and a dense group of them is
proposed. Real Tansu broker, real worker process, the simulated expert over loopback HTTP names the group."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow


def test_far_unjudged_texts_of_an_unknown_intent_are_proposed_as_a_class(
    broker: Any, judge_server: Any, clinc: Any, h: Any, data_dir: Path, tmp_path: Path
) -> None:
    """No text goes to the judge (share 0), so none is left unresolved: the proposal can only come from
    the far texts the texts agent pools, and the judge endpoint is asked only to name it."""
    from driftlabel.streams.demo import load_clinc150_file

    prefix = f"em{int(time.time() * 1000) % 10**8}."
    w = h.make_worker(
        broker, prefix, tmp_path, judge_server.base_url,
        judge_target_share="0", checkpoint_every_s="3600",
    )  # fmt: skip
    names = w.names
    h.send(w.kafka, names.training, h.seed_records(clinc))
    w.start()
    try:
        rows = load_clinc150_file(data_dir / "clinc150" / "data_full.json")["train"]
        texts = [t for t, lab in rows if lab == "pto_request"][:30]
        h.send(w.kafka, names.texts, [{"id": f"far-{i}", "text": t} for i, t in enumerate(texts)])

        def proposed(records: list[tuple[str, Any]]) -> bool:
            return any(isinstance(v, dict) and v.get("name") == "pto_request" for _, v in records)

        recs = h.read_until(w.kafka, [names.proposals], proposed, timeout=120)
        prop = next(v for _, v in recs if isinstance(v, dict) and v.get("name") == "pto_request")
        assert prop["size"] >= 8 and set(prop["examples"]) <= set(texts)
        assert all(i.startswith("far-") for i in prop["ids"])
        end = time.monotonic() + 3.0  # read on a while: a routed text's judged final would follow its first
        labels = h.read_until(
            w.kafka, [names.labels], lambda r: len(r) >= len(texts) and time.monotonic() > end, timeout=60
        )
        mine = [v for _, v in labels if isinstance(v, dict) and str(v.get("id", "")).startswith("far-")]
        # nothing routed: each text has exactly one label record, final at once, none unresolved
        assert sorted(v["id"] for v in mine) == sorted(f"far-{i}" for i in range(len(texts)))
        assert all(v["final"] is True and v["status"] != "unresolved" for v in mine)
        assert "driftlabel_judge_requests_total{" not in w.metrics()  # the endpoint only named the group
        page = w.metrics()  # named by the judge endpoint, not added (auto_add_proposals is off)
        assert re.search(r'^driftlabel_proposals_total\{outcome="named"\} [1-9]', page, re.M), page
    finally:
        w.stop()


def test_a_group_named_after_a_known_class_teaches_it_its_texts(
    broker: Any, judge_server: Any, clinc: Any, h: Any, tmp_path: Path
) -> None:
    """Texts of a known class far from its stored examples pool too; the endpoint names their group after
    that class, so nothing is proposed, and the texts the experts also rank first under it go to
    ``training`` as judge pairs (``stream.proposal_learn_known``). The far line is set so that nearly
    every text is far and the known-class check is off, so the group is named."""
    prefix = f"ek{int(time.time() * 1000) % 10**8}."
    w = h.make_worker(
        broker, prefix, tmp_path, judge_server.base_url,
        judge_target_share="0", checkpoint_every_s="3600",
        proposal_far_quantile="0.95", proposal_known_quantile="0",
    )  # fmt: skip
    names = w.names
    seeds = h.seed_records(clinc)
    h.send(w.kafka, names.training, seeds)
    w.start()
    try:
        seen = {r["text"] for r in seeds}
        texts = [t for t, lab in clinc["train"] if lab == "balance" and t not in seen][:30]
        h.send(w.kafka, names.texts, [{"id": f"kn-{i}", "text": t} for i, t in enumerate(texts)])

        def taught(records: list[tuple[str, Any]]) -> bool:
            return any(isinstance(v, dict) and v.get("source") == "judge" for _, v in records)

        recs = h.read_until(w.kafka, [names.training], taught, timeout=120)
        pairs = [v for _, v in recs if isinstance(v, dict) and v.get("source") == "judge"]
        assert pairs and all(v["label"] == "balance" and v["valid"] for v in pairs)
        by_id = {f"kn-{i}": t for i, t in enumerate(texts)}
        assert all(by_id[v["id"]] == v["text"] for v in pairs)
        page = w.metrics()
        assert re.search(r'^driftlabel_proposals_total\{outcome="known"\} [1-9]', page, re.M), page
        assert not re.search(r'^driftlabel_proposals_total\{outcome="named"\} [1-9]', page, re.M), page
        trained = r'^driftlabel_training_examples_total\{source="judge",valid="true"\} ([0-9.]+)'
        deadline = time.time() + 60
        while not (m := re.search(trained, w.metrics(), re.M)) or float(m.group(1)) < len(pairs):
            assert time.time() < deadline, "the worker did not learn the taught pairs"
            time.sleep(1)
    finally:
        w.stop()
