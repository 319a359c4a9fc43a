"""Hypothesis strategies for bad input records, each with the dead-letter reason it must get.

Every strategy yields ``(raw bytes, reason)`` pairs that are *certainly* invalid for their topic under
the product contract (PRODUCT.md and ``docs/streaming.md``): not UTF-8, not JSON, a JSON value of the
wrong shape, a missing or empty required field, a text over the size limit, an unknown control op.
Bare strings are valid texts, so no strategy produces one for ``texts``.

:func:`draw_bad` turns the strategies into a fixed, reproducible corpus (hypothesis derandomised, no
shrinking) for the chaos test and the reliability benchmark.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import HypothesisDeprecationWarning

from driftlabel.streams.messages import TRAINING_SOURCES

__all__ = ["TOPIC_KINDS", "bad_records", "draw_bad"]

MAX_TEXT_CHARS = 4000  # the service's default StreamSettings.max_text_chars

# every Unicode category but surrogates (which UTF-8 cannot encode); without control characters for words
_PRINTABLE: list[Any] = ["L", "M", "N", "P", "S", "Zs", "Cf", "Co"]
_PRINTABLE_AND_MORE: list[Any] = [*_PRINTABLE, "Zl", "Zp", "Cc"]

_ids = st.text(st.characters(codec="utf-8", categories=_PRINTABLE_AND_MORE), min_size=1, max_size=12).filter(
    lambda s: s.strip() != ""
)
_words = st.text(st.characters(codec="utf-8", categories=_PRINTABLE), min_size=1, max_size=40).filter(
    lambda s: s.strip() != ""
)
_blank = st.text(st.sampled_from(" \t\n\r"), min_size=0, max_size=5)
_not_str = st.one_of(
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.lists(st.integers(0, 9), max_size=3),
    st.dictionaries(st.sampled_from("abc"), st.integers(0, 9), max_size=2),
)
_not_object = st.one_of(
    st.integers(), st.lists(st.integers(0, 9), max_size=4), st.booleans(), st.just(None)
).map(lambda v: json.dumps(v))


def _j(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")


@st.composite
def _invalid_utf8(draw: st.DrawFn) -> tuple[bytes, str]:
    body = draw(_words).encode("utf-8")
    cut = draw(st.integers(0, len(body)))
    bad = draw(st.sampled_from([b"\xff", b"\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"\x80"]))
    return b'{"id": "u", "text": "' + body[:cut] + bad + body[cut:] + b'"}', "invalid_utf8"


@st.composite
def _invalid_json(draw: st.DrawFn) -> tuple[bytes, str]:
    whole = json.dumps({"id": draw(_ids), "text": draw(_words), "label": draw(_words)}, ensure_ascii=False)
    cut = draw(st.integers(1, len(whole) - 1))  # a truncated object is never valid JSON
    return whole[:cut].encode("utf-8"), "invalid_json"


@st.composite
def _text_record(draw: st.DrawFn) -> tuple[bytes, str]:
    kind = draw(st.sampled_from(["missing", "empty", "wrong_type", "too_large", "array", "null_id"]))
    item_id = draw(_ids)
    if kind == "missing":
        extra = draw(st.dictionaries(st.sampled_from(["meta_x", "txt", "body", "label"]), _words, max_size=2))
        return _j({"id": item_id, **extra}), "missing_field"
    if kind == "empty":
        return _j({"id": item_id, "text": draw(_blank)}), "empty_text"
    if kind == "wrong_type":
        return _j({"id": item_id, "text": draw(_not_str)}), "wrong_type"
    if kind == "too_large":
        n = draw(st.integers(MAX_TEXT_CHARS + 1, MAX_TEXT_CHARS + 2000))
        return _j({"id": item_id, "text": "x" * n}), "too_large"
    if kind == "array":
        return _j([item_id, draw(_words)]), "wrong_type"
    return _j(
        {
            "id": draw(_not_str.filter(lambda v: not isinstance(v, int) or isinstance(v, bool))),
            "text": draw(_words),
        }
    ), "wrong_type"


@st.composite
def _training_record(draw: st.DrawFn) -> tuple[bytes, str]:
    kind = draw(
        st.sampled_from(
            [
                "no_text",
                "no_label",
                "label_type",
                "valid_type",
                "source",
                "not_object",
                "empty_label",
                "empty_text",
            ]
        )
    )
    base = {"id": draw(_ids), "text": draw(_words), "label": draw(_words), "source": "human", "valid": True}
    if kind == "no_text":
        base.pop("text")
        return _j(base), "missing_field"
    if kind == "no_label":
        base.pop("label")
        return _j(base), "missing_field"
    if kind == "label_type":
        base["label"] = draw(_not_str)
        return _j(base), "wrong_type"
    if kind == "valid_type":
        base["valid"] = draw(st.one_of(st.integers(0, 1), st.sampled_from(["yes", "true", "1"])))
        return _j(base), "wrong_type"
    if kind == "source":
        base["source"] = draw(_words.filter(lambda s: s not in TRAINING_SOURCES))
        return _j(base), "invalid_value"
    if kind == "empty_label":
        base["label"] = draw(_blank)
        return _j(base), "invalid_value"
    if kind == "empty_text":
        base["text"] = draw(_blank)
        return _j(base), "empty_text"
    return draw(_not_object).encode(), "wrong_type"


@st.composite
def _control_record(draw: st.DrawFn) -> tuple[bytes, str]:
    kind = draw(
        st.sampled_from(
            ["unknown_op", "no_op", "no_label", "examples_type", "describe_no_desc", "not_object", "op_type"]
        )
    )
    if kind == "unknown_op":
        op = draw(_words.filter(lambda s: s not in ("add_class", "remove_class", "describe_class")))
        return _j({"op": op, "label": draw(_words)}), "unknown_op"
    if kind == "no_op":
        return _j({"label": draw(_words)}), "missing_field"
    if kind == "no_label":
        return _j({"op": draw(st.sampled_from(["add_class", "remove_class"]))}), "missing_field"
    if kind == "examples_type":
        bad = draw(st.one_of(_words, st.lists(_not_str, min_size=1, max_size=3), st.integers()))
        return _j({"op": "add_class", "label": draw(_words), "examples": bad}), "wrong_type"
    if kind == "describe_no_desc":
        return _j({"op": "describe_class", "label": draw(_words)}), "missing_field"
    if kind == "op_type":
        return _j({"op": draw(_not_str), "label": draw(_words)}), "wrong_type"
    return draw(_not_object).encode(), "wrong_type"


VERDICT_FIELDS = ("id", "label", "valid", "depth", "judge_model", "latency_ms", "tokens")
VERDICT_MAX_CHARS = 1000  # the service's limit on id, label and judge_model (streams.messages)
VERDICT_MAX_BYTES = 16384

_non_int = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    _words,
    st.lists(st.integers(0, 9), max_size=2),
)
_non_number = st.one_of(st.booleans(), _words, st.lists(st.integers(0, 9), max_size=2), st.just({"ms": 1}))
_WRONG_TYPE = {
    "id": _not_str,
    "label": _not_str,
    "judge_model": _not_str,
    "valid": st.one_of(st.integers(0, 1), st.sampled_from(["yes", "true", "1"]), st.just([True])),
    "depth": _non_int,
    "tokens": _non_int,
    "latency_ms": _non_number,
}
_OUT_OF_RANGE = {
    "depth": st.one_of(st.integers(-(10**6), 0), st.integers(101, 10**9)),
    "tokens": st.one_of(st.integers(-(10**6), -1), st.integers(10**7 + 1, 10**12)),
    "latency_ms": st.one_of(
        st.floats(max_value=-1e-3, allow_infinity=False, allow_nan=False),
        st.floats(min_value=86_400_001.0, allow_infinity=False, allow_nan=False),
        st.sampled_from([float("nan"), float("inf"), float("-inf")]),  # json.dumps writes NaN/Infinity
    ),
}


@st.composite
def _verdict_record(draw: st.DrawFn) -> tuple[bytes, str]:
    """``judge-verdicts`` is the service's audit log; a forged or broken record must not be counted.

    A complete, valid verdict with exactly one defect: a field missing, of the wrong type, empty, out of
    range or too long, an oversized record, or not an object at all."""
    base: dict[str, Any] = {
        "id": draw(_ids),
        "label": draw(_words),
        "valid": draw(st.booleans()),
        "depth": draw(st.integers(1, 3)),
        "judge_model": draw(_words),
        "latency_ms": draw(st.floats(0.0, 5000.0)),
        "tokens": draw(st.integers(0, 500)),
    }
    kind = draw(
        st.sampled_from(["missing", "null", "wrong_type", "empty", "range", "long", "huge", "not_object"])
    )
    if kind in ("missing", "null"):
        key = draw(st.sampled_from(VERDICT_FIELDS))
        if kind == "missing":
            base.pop(key)
        else:
            base[key] = None
        return _j(base), "missing_field"
    if kind == "wrong_type":
        key = draw(st.sampled_from(sorted(_WRONG_TYPE)))
        base[key] = draw(_WRONG_TYPE[key])
        return _j(base), "wrong_type"
    if kind == "empty":
        base[draw(st.sampled_from(["id", "label", "judge_model"]))] = draw(_blank)
        return _j(base), "invalid_value"
    if kind == "range":
        key = draw(st.sampled_from(sorted(_OUT_OF_RANGE)))
        base[key] = draw(_OUT_OF_RANGE[key])
        return _j(base), "invalid_value"
    if kind == "long":
        key = draw(st.sampled_from(["id", "label", "judge_model"]))
        base[key] = "v" * draw(st.integers(VERDICT_MAX_CHARS + 1, 3 * VERDICT_MAX_CHARS))
        return _j(base), "too_large"
    if kind == "huge":
        base["note"] = "n" * draw(st.integers(VERDICT_MAX_BYTES, VERDICT_MAX_BYTES + 4000))
        return _j(base), "too_large"
    return draw(_not_object).encode(), "wrong_type"


_GENERIC = [_invalid_utf8(), _invalid_json()]
TOPIC_KINDS: dict[str, Any] = {
    "texts": st.one_of(*_GENERIC, _text_record()),
    "training": st.one_of(*_GENERIC, _training_record()),
    "control": st.one_of(*_GENERIC, _control_record()),
    "judge_verdicts": st.one_of(*_GENERIC, _verdict_record()),
}


def bad_records(topic: str) -> Any:
    """The strategy of ``(raw, reason)`` for one input topic (``texts``, ``training``, ``control``,
    ``judge_verdicts``)."""
    return TOPIC_KINDS[topic]


def draw_bad(topic: str, n: int, seed: int = 0) -> list[tuple[bytes, str]]:
    """``n`` distinct bad records for ``topic``, reproducibly (hypothesis derandomised, no shrinking)."""
    out: dict[bytes, str] = {}
    chunk = 25

    @settings(
        max_examples=max(10, 3 * n // chunk + 10),
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(bad_records(topic), min_size=1, max_size=chunk))
    def collect(batch: list[tuple[bytes, str]]) -> None:
        for raw, reason in batch:
            if len(out) < n:
                out.setdefault(raw, reason)

    rounds = 0
    with warnings.catch_warnings():  # other threads (a topic follower) may touch `random` meanwhile
        warnings.simplefilter("ignore", HypothesisDeprecationWarning)
        while len(out) < n and rounds < 50:  # each call explores more examples of a derandomised run
            collect._hypothesis_internal_use_seed = seed + rounds  # type: ignore[attr-defined]
            collect()
            rounds += 1
    if len(out) < n:
        raise RuntimeError(f"could only draw {len(out)} distinct bad {topic} records, wanted {n}")
    return list(out.items())[:n]
