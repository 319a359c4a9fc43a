"""Validation of raw input records: every bad shape becomes a reasoned InvalidMessageError."""

from __future__ import annotations

import json

import pytest

from driftlabel.streams.errors import InvalidMessageError
from driftlabel.streams.messages import (
    LabelMessage,
    dead_letter_for,
    parse_control,
    parse_text,
    parse_training,
)

POS = {"topic": "p.texts", "partition": 2, "offset": 17}


def test_json_object_text() -> None:
    m = parse_text(b'{"id": "a1", "text": "hello", "meta": {"src": "web"}}', **POS)
    assert (m.id, m.text, m.meta) == ("a1", "hello", {"src": "web"})


def test_numeric_id_becomes_string_and_missing_id_is_the_position() -> None:
    assert parse_text(b'{"id": 7, "text": "x"}', **POS).id == "7"
    assert parse_text(b'{"text": "x"}', **POS).id == "p.texts:2:17"


@pytest.mark.parametrize(
    "raw", [b"where is my card", b'"where is my card"', "wo ist meine Karte \u00fc".encode()]
)
def test_bare_string_gets_its_position_as_id(raw: bytes) -> None:
    m = parse_text(raw, **POS)
    assert m.id == "p.texts:2:17" and m.text == raw.decode().strip('"')


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, "missing_field"),
        (b'{"id": "a", "text": ', "invalid_json"),
        (b'"unterminated', "invalid_json"),
        (b'{"id": "a"}', "missing_field"),
        (b'{"id": "a", "text": null}', "missing_field"),
        (b'{"id": "a", "text": "  "}', "empty_text"),
        (b"   ", "empty_text"),
        (b'{"id": "a", "text": 3}', "wrong_type"),
        (b'{"id": true, "text": "x"}', "wrong_type"),
        (b'{"id": "a", "text": "x", "meta": [1]}', "wrong_type"),
        (b"[1, 2]", "wrong_type"),
        (b"\xff\xfeabc", "invalid_utf8"),
        (b'{"id": "a", "text": "' + b"x" * 50 + b'"}', "too_large"),
    ],
)
def test_bad_texts_have_a_reason(raw: bytes | None, reason: str) -> None:
    with pytest.raises(InvalidMessageError) as exc:
        parse_text(raw, **POS, max_chars=40)
    assert exc.value.reason == reason
    assert isinstance(exc.value, ValueError)


def test_oversized_record_is_refused_before_decoding() -> None:
    with pytest.raises(InvalidMessageError, match="too_large"):
        parse_text(b"x" * 200, **POS, max_bytes=100)


def test_training_record_defaults_and_errors() -> None:
    t = parse_training(b'{"id": "1", "text": "hi", "label": "greet"}')
    assert (t.source, t.valid) == ("human", True)
    assert (
        parse_training(b'{"text": "hi", "label": "greet", "source": "judge", "valid": false}').valid is False
    )
    for raw, reason in [
        (b'{"text": "hi"}', "missing_field"),
        (b'{"text": "hi", "label": "g", "source": "robot"}', "invalid_value"),
        (b'{"text": "hi", "label": "g", "valid": "yes"}', "wrong_type"),
        (b'{"text": "hi", "label": ""}', "invalid_value"),
        # names the model reserves: refused here, they would stop the learner on every worker
        (b'{"text": "hi", "label": "out_of_scope", "source": "human"}', "invalid_value"),
        (b'{"text": "hi", "label": "__noise__", "valid": false}', "invalid_value"),
        (b'{"text": "hi", "label": "__noise__3"}', "invalid_value"),
    ]:
        with pytest.raises(InvalidMessageError) as exc:
            parse_training(raw)
        assert exc.value.reason == reason, raw


def test_control_ops() -> None:
    c = parse_control(b'{"op": "add_class", "label": "pizza", "examples": ["a pizza", " "]}')
    assert c.examples == ["a pizza"] and c.description is None
    assert parse_control(b'{"op": "describe_class", "label": "x", "description": "d"}').description == "d"
    for raw, reason in [
        (b'{"op": "explode", "label": "x"}', "unknown_op"),
        (b'{"op": "describe_class", "label": "x"}', "missing_field"),
        (b'{"op": "add_class", "label": "x", "examples": "one"}', "wrong_type"),
        (b'{"op": "add_class"}', "missing_field"),
        (b"nope", "invalid_json"),
        (b'{"op": "add_class", "label": "out_of_scope", "description": "d"}', "invalid_value"),
        (b'{"op": "add_class", "label": "__noise__", "examples": ["x"]}', "invalid_value"),
    ]:
        with pytest.raises(InvalidMessageError) as exc:
            parse_control(raw)
        assert exc.value.reason == reason, raw


def test_dead_letter_keeps_raw_escaped_and_position() -> None:
    err = InvalidMessageError("invalid_utf8", "not UTF-8 at byte 0")
    d = dead_letter_for(b"\xff" + b"a" * 5000, err, topic="t", partition=1, offset=9, limit=100)
    v = json.loads(d.dumps())
    assert v["raw"].startswith("\\xff") and "more bytes" in v["raw"]
    assert (v["reason"], v["topic"], v["partition"], v["offset"]) == ("invalid_utf8", "t", 1, 9)
    assert "error" in v and "ts" in v


def test_records_serialise_without_faust_metadata() -> None:
    m = LabelMessage(id="a", label="x", score=0.9, entropy=0.1, status="predicted", final=True,
                     candidates=[("x", 0.9)], model_version=3, ts=1.0)  # fmt: skip
    v = json.loads(m.dumps())
    assert "__faust" not in v and v["candidates"] == [["x", 0.9]]
