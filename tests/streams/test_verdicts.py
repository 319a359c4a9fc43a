"""The ``judge-verdicts`` input path without a broker: validation (each bad record's reason) and the
audit's bounded metric labels. The live path (dead letters once, audit counted) is tests/chaos/test_fuzz.py.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from driftlabel.judge.records import Verdict
from driftlabel.streams.errors import InvalidMessageError
from driftlabel.streams.messages import VERDICT_MAX_BYTES, parse_verdict
from driftlabel.streams.metrics import ServiceMetrics
from driftlabel.streams.pipeline import VerdictAudit

GOOD: dict[str, Any] = {
    "id": "t-1",
    "label": "balance",
    "valid": True,
    "depth": 2,
    "judge_model": "gpt-x",
    "latency_ms": 812.5,
    "tokens": 143,
}


def _raw(**change: Any) -> bytes:
    value = {**GOOD, **change}
    return json.dumps({k: v for k, v in value.items() if v is not ...}).encode()


def test_what_the_service_writes_parses_back() -> None:
    v = Verdict("t-1", "balance", False, 1, "sim", 3.0, 0, cached=True)
    msg = parse_verdict(json.dumps(v.to_message()).encode())
    assert (msg.id, msg.label, msg.valid, msg.depth, msg.judge_model, msg.latency_ms, msg.tokens) == (
        "t-1", "balance", False, 1, "sim", 3.0, 0,
    )  # fmt: skip
    assert parse_verdict(_raw(latency_ms=5)).latency_ms == 5.0  # an integer latency is a number too


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"id": ...}, "missing_field"),
        ({"tokens": None}, "missing_field"),
        ({"valid": "yes"}, "wrong_type"),
        ({"valid": 1}, "wrong_type"),
        ({"depth": True}, "wrong_type"),
        ({"depth": 1.0}, "wrong_type"),
        ({"tokens": "12"}, "wrong_type"),
        ({"latency_ms": False}, "wrong_type"),
        ({"id": 7}, "wrong_type"),
        ({"label": " "}, "invalid_value"),
        ({"depth": 0}, "invalid_value"),
        ({"depth": 101}, "invalid_value"),
        ({"tokens": -1}, "invalid_value"),
        ({"tokens": 10**400}, "invalid_value"),
        ({"latency_ms": float("nan")}, "invalid_value"),
        ({"latency_ms": float("inf")}, "invalid_value"),
        ({"latency_ms": -0.5}, "invalid_value"),
        ({"judge_model": "m" * 1001}, "too_large"),
        ({"note": "n" * VERDICT_MAX_BYTES}, "too_large"),
    ],
)
def test_each_bad_field_has_its_reason(change: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidMessageError) as err:
        parse_verdict(_raw(**change))
    assert err.value.reason == reason


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, "missing_field"),
        (b"\xff{}", "invalid_utf8"),
        (b'{"id": "a"', "invalid_json"),
        (b"[1]", "wrong_type"),
        (b'{"id": "a", "tokens": ' + b"9" * 5000 + b"}", "invalid_json"),  # Python's int digit limit
        (b"[" * 5000 + b"]" * 5000, "invalid_json"),  # nesting deeper than the decoder's recursion
    ],
)
def test_records_that_are_not_verdict_objects(raw: bytes | None, reason: str) -> None:
    with pytest.raises(InvalidMessageError) as err:
        parse_verdict(raw)
    assert err.value.reason == reason


def test_audit_labels_are_bounded() -> None:
    audit = VerdictAudit(max_models=2, max_depth=3)
    assert [audit.model_label(m) for m in ("a", "b", "c", "a", "other", "d")] == [
        "a",
        "b",
        "other",
        "a",
        "other",
        "other",
    ]
    assert [audit.depth_label(d) for d in (1, 2, 3, 40)] == ["1", "2", "3+", "3+"]
    model, valid, depth, latency_s, tokens = audit.labels(parse_verdict(_raw(judge_model="a")))
    assert (model, valid, depth, latency_s, tokens) == ("a", True, "2", 0.8125, 143)


def test_audit_metrics_sum_per_judge_model() -> None:
    m = ServiceMetrics()
    audit = VerdictAudit()
    for change in ({}, {"valid": False, "depth": 1}, {"judge_model": "other-llm", "tokens": 7}):
        m.observe_verdict_log(*audit.labels(parse_verdict(_raw(**change))))
    page = m.render().decode()
    assert 'driftlabel_verdict_log_total{depth="2",judge_model="gpt-x",valid="true"} 1.0' in page
    assert 'driftlabel_verdict_log_total{depth="1",judge_model="gpt-x",valid="false"} 1.0' in page
    assert 'driftlabel_verdict_log_tokens_total{judge_model="gpt-x"} 286.0' in page
    assert 'driftlabel_verdict_log_tokens_total{judge_model="other-llm"} 7.0' in page
    assert re.search(r'^driftlabel_verdict_log_latency_seconds_count\{judge_model="gpt-x"\} 2\.0', page, re.M)
