"""Fuzzed bad records (hypothesis) mixed into a valid stream on every input topic.

First the parsers alone (no broker): every generated bad record gets the dead-letter reason its
strategy promises. Then the live worker: each bad record of ``texts``, ``training``, ``control`` and
``judge-verdicts`` lands in ``dead-letter`` exactly once with that reason (matched by
topic/partition/offset), every valid text gets a final label, every valid human training record is
learned, every valid ``add_class`` is applied, every valid verdict is counted in the verdict-log audit,
and the worker stays up. 10,000 records are ``driftlabel bench reliability``; here 150 per topic.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings

from driftlabel.bench import chaos
from driftlabel.bench.fuzz import bad_records
from driftlabel.streams.errors import InvalidMessageError
from driftlabel.streams.messages import parse_control, parse_text, parse_training, parse_verdict

N_BAD = 150

PARSERS = {
    "texts": lambda raw: parse_text(raw, topic="t", partition=0, offset=0),
    "training": parse_training,
    "control": parse_control,
    "judge_verdicts": parse_verdict,
}


@pytest.mark.parametrize("topic", list(PARSERS))
def test_parsers_reject_every_fuzzed_record_with_its_reason(topic: str) -> None:
    @settings(max_examples=300, deadline=None, database=None)
    @given(bad_records(topic))
    def check(rec: tuple[bytes, str]) -> None:
        raw, reason = rec
        with pytest.raises(InvalidMessageError) as err:
            PARSERS[topic](raw)
        assert err.value.reason == reason, (raw[:200], err.value)

    check()


@pytest.fixture(scope="module")
def fuzzed(chaos_broker: Any, clinc_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    rows = chaos.clinc_rows(clinc_file, classes=30)
    c = chaos.Cluster(
        tmp_path_factory.mktemp("fuzz"),
        clinc_file,
        broker=chaos_broker,
        stream_env={"judge_target_share": "0.1"},
    )
    c.start()
    try:
        c.send(c.names.training, chaos.seed_training(rows["train"]))
        w = c.worker("w0")
        w.start()
        yield chaos.fuzz_run(c, w, rows["test"], N_BAD, n_texts=200, timeout_s=180)
    finally:
        c.stop()


@pytest.mark.slow
@pytest.mark.parametrize("topic", ["texts", "training", "control", "judge_verdicts"])
def test_each_bad_record_is_dead_lettered_once_with_its_reason(fuzzed: Any, topic: str) -> None:
    r = fuzzed
    assert r.sent_bad[topic] == N_BAD
    assert not r.missing[topic], f"{len(r.missing[topic])} never dead-lettered, e.g. {r.missing[topic][:3]}"
    assert not r.wrong_reason[topic], r.wrong_reason[topic][:5]
    assert not r.repeated[topic], f"{r.repeated[topic]} dead-lettered more than once"
    assert r.dead_once[topic] == N_BAD


@pytest.mark.slow
def test_valid_messages_get_their_effect_and_the_worker_stays_up(fuzzed: Any) -> None:
    r = fuzzed
    assert r.worker_alive
    assert r.valid_texts_final == r.valid_texts
    assert r.human_learned == r.human_sent, (r.human_learned, r.human_sent)  # each learned once
    assert r.classes_added == r.classes_sent
    assert r.verdicts_audited == r.verdicts_sent, (r.verdicts_audited, r.verdicts_sent)


@pytest.mark.slow
def test_bad_judge_verdicts_are_dead_lettered(fuzzed: Any) -> None:
    r = fuzzed
    assert r.dead_once["judge_verdicts"] == r.sent_bad["judge_verdicts"] == N_BAD
