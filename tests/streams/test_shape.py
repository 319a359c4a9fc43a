"""The pure parts behind the agents, without a broker: batch validation, what goes to the judge, how the
log is cut into steps, the judge caller's waiting, and the declared dependencies on models/ and judge/."""

from __future__ import annotations

import ast
import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from driftlabel.judge import JudgeOutcome, JudgeRequest, Verdict
from driftlabel.judge.errors import JudgeUnavailableError
from driftlabel.streams.errors import InvalidMessageError
from driftlabel.streams.judging import JudgeCaller, parse_judge_request, to_judge_request
from driftlabel.streams.learner import plan_steps
from driftlabel.streams.ledger import home_partition
from driftlabel.streams.messages import (
    ControlMessage,
    JudgeRequestMessage,
    TrainingMessage,
    log_digest,
    parse_log_record,
    sequenced_control,
)
from driftlabel.streams.pipeline import (
    judge_request_messages,
    judgeable,
    label_messages,
    label_values,
    parse_text_batch,
)
from driftlabel.streams.ports import Classifier, JudgeClient

STREAMS = Path(__file__).resolve().parents[2] / "streams"


@dataclass
class Rec:
    topic: str
    partition: int
    offset: int
    value: bytes | None


@dataclass
class FakeRanking:
    labels: list[str]
    scores: np.ndarray
    candidates: list[list[tuple[str, float]]]
    entropy: np.ndarray
    margin: np.ndarray
    out_of_scope: np.ndarray


def test_parse_text_batch_keeps_order_and_collects_bad_ones() -> None:
    recs = [
        Rec("t", 0, 0, b'{"id": "a", "text": "hello"}'),
        Rec("t", 0, 1, b"{broken"),
        Rec("t", 1, 7, b"a bare string"),
        Rec("t", 1, 8, None),
    ]
    b = parse_text_batch(recs, max_bytes=1000, max_chars=100)
    assert [it.id for it in b.items] == ["a", "t:1:7"]
    assert [s.offset for s in b.sources] == [0, 7]
    assert [(r.offset, e.reason) for r, e in b.bad] == [(1, "invalid_json"), (8, "missing_field")]


def _ranking() -> FakeRanking:
    return FakeRanking(
        labels=["a", "out_of_scope", "b"],
        scores=np.array([0.9, 0.3, 0.5]),
        candidates=[[("a", 0.9), ("b", 0.1)], [("out_of_scope", 0.6)], [("b", 0.5), ("a", 0.4)]],
        entropy=np.array([0.1, 1.2, 0.7]),
        margin=np.array([0.8, 0.1, 0.1]),
        out_of_scope=np.array([False, True, False]),
    )


def test_a_routed_row_with_nothing_to_ask_is_final_at_once() -> None:
    """Routed rows whose candidates are all out-of-scope would never get a final label: keep them."""
    r = _ranking()
    routed = judgeable(r, np.array([False, True, True]), 3)
    assert routed.tolist() == [False, False, True]
    msgs = label_messages(["i1", "i2", "i3"], r, routed, 4, 1.0)
    assert [(m.status, m.final) for m in msgs] == [
        ("predicted", True),
        ("out_of_scope", True),
        ("predicted", False),
    ]


def test_judge_requests_carry_candidates_without_out_of_scope() -> None:
    b = parse_text_batch(
        [Rec("t", 0, i, f'{{"id": "i{i}", "text": "x{i}"}}'.encode()) for i in range(3)],
        max_bytes=1000,
        max_chars=100,
    )
    cands = [
        [{"label": "b", "probability": 0.5}, {"label": "out_of_scope", "probability": 0.2}],
        [{"label": "out_of_scope", "probability": 0.9}],
    ]
    out = judge_request_messages(b.items, _ranking(), [2, 1], cands, 9, 1.0, 2.0)
    assert [(row, m.id) for row, m in out] == [(2, "i2")]
    req = out[0][1]
    assert [c["label"] for c in req.candidates] == ["b"] and req.model_version == 9 and req.text == "x2"
    back = parse_judge_request(req.dumps())
    assert back.id == "i2" and isinstance(to_judge_request(back), JudgeRequest)


def test_bad_judge_requests_are_invalid_messages() -> None:
    good = {"id": "x", "text": "t", "candidates": [{"label": "a"}], "label": "a", "score": 0.5,
            "entropy": 0.1, "model_version": 1, "received_ts": 1.0, "ts": 1.0}  # fmt: skip
    forged = [
        b"[" * 100_000,  # nesting past the JSON decoder's recursion limit
        json.dumps({**good, "id": ["a", "list"]}).encode(),
        json.dumps({**good, "text": 7}).encode(),
        json.dumps({**good, "candidates": ["a"]}).encode(),
        json.dumps({**good, "candidates": [{"probability": 0.3}]}).encode(),
    ]
    assert parse_judge_request(json.dumps(good).encode()).id == "x"
    for raw in (None, b"{nope", b'{"id": "x"}', b"[]", *forged):
        with pytest.raises(InvalidMessageError):
            parse_judge_request(raw)


def test_plan_steps_puts_each_control_op_between_its_neighbours_and_skips_repeats() -> None:
    tr = "p.training"
    add = sequenced_control(ControlMessage(op="remove_class", label="x"), "p.control:0:0")
    pair = b'{"id": "1", "text": "a", "label": "x", "source": "judge"}'
    recs = [
        Rec(tr, 0, 0, pair),
        Rec(tr, 0, 1, b"{bad"),
        Rec(tr, 0, 2, json.dumps(add).encode()),
        Rec(tr, 0, 3, b'{"id": "2", "text": "b", "label": "y"}'),
        Rec(tr, 0, 4, json.dumps(add).encode()),  # forwarded twice (the sequencer crashed)
        Rec(tr, 0, 5, pair),  # the judge's pair again (judged twice after a crash)
        Rec(tr, 0, 6, b'{"kind": "control", "op": "explode", "label": "x", "from": "p.control:0:1"}'),
    ]
    steps = plan_steps(recs, max_bytes=1000, max_chars=100)  # type: ignore[arg-type]
    kinds = [("T" if s.training else "") + ("C" if s.control else "") + ("!" if s.bad else "") for s in steps]
    assert kinds == ["T!", "C", "T!"]
    assert [len(s.records) for s in steps] == [2, 1, 4]
    assert steps[1].control is not None and steps[1].control.op == "remove_class"
    assert [t.id for t in steps[2].training] == ["2"]
    assert steps[2].bad[0][1].reason == "unknown_op"
    # what an earlier run learned is skipped too: the digests are in the checkpoint
    seen = {d for s in steps for d in s.digests}
    again = plan_steps(recs, seen, max_bytes=1000, max_chars=100)  # type: ignore[arg-type]
    assert all(not s.training and s.control is None for s in again)
    assert sum(len(s.records) for s in again) == len(recs)


def test_plan_steps_cuts_long_runs_of_training_records_at_record_boundaries() -> None:
    """``max_training`` keeps each step one short model-thread job: runs are cut after that many
    training records, every record lands in exactly one step, in order, and a control op still stands
    alone between its neighbours."""
    tr = "p.training"
    ctl = sequenced_control(ControlMessage(op="remove_class", label="x"), "p.control:0:0")
    recs = [
        Rec(tr, 0, i, f'{{"id": "{i}", "text": "t{i}", "label": "x", "source": "judge"}}'.encode())
        for i in range(7)
    ]
    recs.insert(3, Rec(tr, 0, 99, b"{bad"))
    recs.append(Rec(tr, 0, 100, json.dumps(ctl).encode()))
    recs += [
        Rec(tr, 0, 7 + i, f'{{"id": "{7 + i}", "text": "u{i}", "label": "y"}}'.encode()) for i in range(3)
    ]
    whole = plan_steps(recs, max_bytes=1000, max_chars=100)  # type: ignore[arg-type]
    cut = plan_steps(recs, max_bytes=1000, max_chars=100, max_training=3)  # type: ignore[arg-type]
    assert [len(s.training) for s in whole] == [7, 0, 3]
    assert [len(s.training) for s in cut] == [3, 3, 1, 0, 3]
    assert [r for s in cut for r in s.records] == recs
    assert [t.id for s in cut for t in s.training] == [t.id for s in whole for t in s.training]
    assert cut[3].control is not None and len(cut[1].bad) == 1  # the bad record opens the second step


def test_log_digest_identifies_repeats_not_new_answers() -> None:
    a = TrainingMessage(id="i", text="t", label="x", source="judge", valid=False)
    assert log_digest(a) == log_digest(TrainingMessage(id="i", text="t", label="x", source="judge"))
    assert log_digest(a) != log_digest(TrainingMessage(id="i", text="t", label="y", source="judge"))
    h1 = TrainingMessage(id="train-1", text="hello", label="x", source="human")
    assert log_digest(h1) != log_digest(
        TrainingMessage(id="train-1", text="other", label="x", source="human")
    )
    c = ControlMessage(op="add_class", label="x")
    assert log_digest(c, "p.control:0:1") != log_digest(c, "p.control:0:2")
    back, src = parse_log_record(json.dumps(sequenced_control(c, "p.control:0:1")).encode())
    assert isinstance(back, ControlMessage) and src == "p.control:0:1"


def test_home_partition_is_the_default_partitioner_of_the_id() -> None:
    from aiokafka.partitioner import DefaultPartitioner

    parts = list(range(8))
    for i in range(50):
        key = f"item-{i}"
        assert home_partition(key, 3, 8, bare=False) == DefaultPartitioner()(key.encode(), parts, parts)
    assert home_partition("t:5:17", 5, 8, bare=True) == 5


@dataclass
class FlakyJudge:
    """Unavailable ``down`` times, then answers."""

    down: int
    calls: int = 0
    seen: list[JudgeRequest] = field(default_factory=list)

    async def judge(self, request: JudgeRequest) -> JudgeOutcome:
        self.calls += 1
        self.seen.append(request)
        if self.calls <= self.down:
            raise JudgeUnavailableError("circuit open")
        v = Verdict(id=request.id, label="b", valid=True, depth=1, judge_model="m", latency_ms=1, tokens=3)
        return JudgeOutcome(id=request.id, status="validated", label="b", verdicts=[v])

    async def aclose(self) -> None:
        return None


def _req() -> JudgeRequestMessage:
    return JudgeRequestMessage(
        id="i", text="t", candidates=[{"label": "b", "probability": 0.5}], label="b", score=0.5,
        entropy=0.5, model_version=1, received_ts=0.0, ts=0.0,
    )  # fmt: skip


def test_judge_caller_waits_out_an_outage() -> None:
    judge = FlakyJudge(down=3)
    waits: list[str] = []
    flight: list[int] = []
    caller = JudgeCaller(
        judge=judge, retry_s=0.001, retry_max_s=0.002, on_unavailable=waits.append, in_flight=flight.append
    )
    assert isinstance(judge, JudgeClient)
    outcome = asyncio.run(caller(_req()))
    assert outcome.status == "validated" and judge.calls == 4
    assert waits == ["circuit_open"] * 3 and sum(flight) == 0 and len(flight) == 8


def test_judge_caller_gives_up_on_repeated_errors() -> None:
    class Broken(FlakyJudge):
        async def judge(self, request: JudgeRequest) -> Any:
            self.calls += 1
            raise RuntimeError("boom")

    judge = Broken(down=0)
    outcome = asyncio.run(JudgeCaller(judge=judge, retry_s=0.001, max_failures=2)(_req()))
    assert outcome.status == "unresolved" and "boom" in (outcome.reason or "") and judge.calls == 2


def test_the_real_classes_implement_the_ports() -> None:
    from driftlabel.judge import Judge, JudgeSettings
    from driftlabel.models import RedClassifier

    assert isinstance(RedClassifier(embedder=None), Classifier)
    assert isinstance(Judge(JudgeSettings()), JudgeClient)


#: command modules import per command, so that ``driftlabel --help`` / ``produce`` start fast
CLI_MODULES = {"cli.py", "commands.py", "demo.py"}


def test_streams_imports_models_and_judge_at_module_level_only() -> None:
    """The service's dependency on models/ and judge/ shows: no import of them hides in a function."""
    hidden = []
    for path in sorted(STREAMS.glob("*.py")):
        if path.name in CLI_MODULES:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for sub in ast.walk(node):
                if isinstance(sub, ast.ImportFrom) and (sub.module or "").startswith(
                    ("driftlabel.models", "driftlabel.judge")
                ):
                    hidden.append(f"{path.name}:{sub.lineno} {sub.module}")
    assert not hidden, hidden


def test_no_streams_file_is_a_grab_bag() -> None:
    sizes = {p.name: len(p.read_text(encoding="utf-8").splitlines()) for p in STREAMS.glob("*.py")}
    assert "service.py" not in sizes
    assert max(sizes.values()) < 800, sizes  # past that, a file has more than one job: split it


def test_label_values_equal_the_label_messages() -> None:
    r = _ranking()
    routed = np.array([False, False, True])
    fast = label_values(["i1", "i2", "i3"], r, routed, 4, 1.5)
    slow = label_messages(["i1", "i2", "i3"], r, routed, 4, 1.5)
    assert json.loads(orjson.dumps(fast)) == [json.loads(m.dumps()) for m in slow]
