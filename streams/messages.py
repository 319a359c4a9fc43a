"""Typed faust ``Record`` messages for every topic of PRODUCT.md, and the validation of raw input.

Input topics (``texts``, ``training``, ``control``, ``judge-verdicts``) are read as raw bytes and parsed
here by pure functions, so that every way a record can be bad (not UTF-8, not JSON, wrong types, missing
or empty text, too large, out of range, unknown op) becomes an :class:`InvalidMessageError` with a reason
code and ends up in ``dead-letter`` with its position, instead of crashing the agent or being dropped
silently.

(No ``from __future__ import annotations`` here: faust introspects the field annotations at runtime.)
"""

import base64
import binascii
import hashlib
import json
import time
from typing import Any

import faust
import numpy as np

from driftlabel.models import is_reserved_label
from driftlabel.streams.errors import InvalidMessageError

__all__ = [
    "CONTROL_OPS",
    "LABEL_STATUSES",
    "TRAINING_SOURCES",
    "ControlMessage",
    "DeadLetterMessage",
    "JudgeRequestMessage",
    "LabelMessage",
    "LogRecord",
    "ReviewMessage",
    "TextMessage",
    "TrainingMessage",
    "VerdictMessage",
    "dead_letter_for",
    "decode_vector",
    "encode_vector",
    "log_digest",
    "parse_control",
    "parse_log_record",
    "parse_text",
    "parse_training",
    "parse_verdict",
    "position_id",
]

LABEL_STATUSES = ("predicted", "validated", "corrected", "unresolved", "out_of_scope")
#: ``stream``: a text the service labelled without the judge, kept unlabelled for self-training (its
#: embedding rides along as float16, so no worker embeds it again); seed/judge/human carry a label
TRAINING_SOURCES = ("seed", "judge", "human", "stream")
#: largest embedding a ``stream`` record may carry (dimensions)
MAX_VECTOR_DIM = 4096
CONTROL_OPS = ("add_class", "remove_class", "describe_class")


class TextMessage(faust.Record, serializer="json", include_metadata=False):
    """``texts``: one input text. ``ts`` is when the worker read it (for end-to-end latency)."""

    id: str
    text: str
    meta: dict[str, Any] | None = None


class LabelMessage(faust.Record, serializer="json", include_metadata=False):
    """``labels``: a label for one text; at most one ``final=True`` per id."""

    id: str
    label: str | None
    score: float
    entropy: float
    status: str
    final: bool
    candidates: list[tuple[str, float]]
    model_version: int
    ts: float


class JudgeRequestMessage(faust.Record, serializer="json", include_metadata=False):
    """``judge-requests``: an uncertain item with its ranked candidates, self-contained.

    Each candidate carries its description and the known-good examples nearest to the text, so the
    judge agent (possibly on another worker) needs neither the embedding nor the model.
    """

    id: str
    text: str
    candidates: list[dict[str, Any]]  # {"label", "probability", "description", "examples"}
    label: str | None
    score: float
    entropy: float
    model_version: int
    received_ts: float
    ts: float


class VerdictMessage(faust.Record, serializer="json", include_metadata=False):
    """``judge-verdicts``: one answer of the judge ("is label L valid for this text?")."""

    id: str
    label: str
    valid: bool
    depth: int
    judge_model: str
    latency_ms: float
    tokens: int


class TrainingMessage(faust.Record, serializer="json", include_metadata=False):
    """``training``: the replayable record of everything learned (``valid=False``: hard negative)."""

    id: str
    text: str
    label: str
    source: str
    valid: bool = True
    #: ``stream`` records: the text's embedding (:func:`encode_vector`) and the embedder that made it
    embedding: str | None = None
    embedder: str | None = None


class ControlMessage(faust.Record, serializer="json", include_metadata=False):
    """``control``: add, remove or describe a class while the service runs."""

    op: str
    label: str
    description: str | None = None
    examples: list[str] | None = None
    synthetic: bool = False


class ReviewMessage(faust.Record, serializer="json", include_metadata=False):
    """``review``: an unresolved item for a human, whose answer goes to ``training`` (source ``human``)."""

    id: str
    text: str
    candidates: list[tuple[str, float]]
    reason: str | None
    model_version: int
    ts: float


class DeadLetterMessage(faust.Record, serializer="json", include_metadata=False):
    """``dead-letter``: an input that could not be processed, with why and where it was."""

    raw: str | None
    error: str
    reason: str
    topic: str
    partition: int
    offset: int
    ts: float


def position_id(topic: str, partition: int, offset: int) -> str:
    """The id of a bare-string text: its position ``topic:partition:offset``."""
    return f"{topic}:{partition}:{offset}"


def _decode(raw: bytes | None, max_bytes: int) -> str:
    if raw is None:
        raise InvalidMessageError("missing_field", "the record has no value (null)")
    if len(raw) > max_bytes:
        raise InvalidMessageError("too_large", f"{len(raw)} bytes > limit {max_bytes}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidMessageError("invalid_utf8", f"not UTF-8 at byte {exc.start}") from exc


def _load_object(s: str, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(s)
    except json.JSONDecodeError as exc:
        raise InvalidMessageError(
            "invalid_json", f"{exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    except (ValueError, RecursionError) as exc:  # an integer of > 4300 digits, nesting deeper than ~1000
        raise InvalidMessageError("invalid_json", f"unreadable JSON: {str(exc)[:200]}") from exc
    if not isinstance(obj, dict):
        raise InvalidMessageError("wrong_type", f"a {what} must be a JSON object, got {type(obj).__name__}")
    return obj


def _string(obj: dict[str, Any], key: str, *, required: bool = True, allow_empty: bool = False) -> str | None:
    if key not in obj or obj[key] is None:
        if required:
            raise InvalidMessageError("missing_field", f"field {key!r} is missing")
        return None
    value = obj[key]
    if not isinstance(value, str):
        raise InvalidMessageError("wrong_type", f"field {key!r} must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise InvalidMessageError(
            "empty_text" if key == "text" else "invalid_value", f"field {key!r} is empty"
        )
    return value


def _label(obj: dict[str, Any]) -> str:
    """The record's ``label``: a non-empty string that is not a name driftlabel reserves.

    The model refuses ``out_of_scope`` and the noise classes' names; refused here, such a record is
    dead-lettered with its reason instead of stopping the learner on every worker that reads it.
    """
    label = _string(obj, "label")
    assert label is not None
    if is_reserved_label(label):  # the model would refuse it
        raise InvalidMessageError(
            "invalid_value",
            f"label {label!r} is reserved by driftlabel (a status or a noise class); rename it",
        )
    return label


def _check_len(text: str, max_chars: int) -> str:
    if len(text) > max_chars:
        raise InvalidMessageError("too_large", f"text has {len(text)} characters > limit {max_chars}")
    return text


def parse_text(
    raw: bytes | None,
    *,
    topic: str,
    partition: int,
    offset: int,
    max_bytes: int = 65536,
    max_chars: int = 4000,
) -> TextMessage:
    """Parse one ``texts`` record: a JSON object ``{id, text, meta?}`` or a bare string.

    A value starting with ``{`` must be a valid JSON object; one starting with ``"`` a JSON string; any
    other value is the text itself (its id is then its position). Raises :class:`InvalidMessageError`.
    """
    s = _decode(raw, max_bytes)
    stripped = s.strip()
    if stripped.startswith("{"):
        obj = _load_object(stripped, "text record")
        text = _string(obj, "text")
        assert text is not None
        item_id = obj.get("id")
        if item_id is None:
            item_id = position_id(topic, partition, offset)
        elif isinstance(item_id, bool) or not isinstance(item_id, (str, int)):
            raise InvalidMessageError(
                "wrong_type", f"field 'id' must be a string, got {type(item_id).__name__}"
            )
        elif not str(item_id).strip():
            raise InvalidMessageError("invalid_value", "field 'id' is empty")
        meta = obj.get("meta")
        if meta is not None and not isinstance(meta, dict):
            raise InvalidMessageError(
                "wrong_type", f"field 'meta' must be an object, got {type(meta).__name__}"
            )
        return TextMessage(id=str(item_id), text=_check_len(text, max_chars), meta=meta)
    if stripped.startswith("["):
        raise InvalidMessageError(
            "wrong_type", 'a JSON array; send an object {"id", "text"} or a bare string'
        )
    if stripped.startswith('"'):
        try:
            value = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise InvalidMessageError("invalid_json", f"bad JSON string: {exc.msg}") from exc
        if not isinstance(value, str):  # pragma: no cover - a string literal always decodes to str
            raise InvalidMessageError("wrong_type", "expected a JSON string")
        stripped = value.strip()
    if not stripped:
        raise InvalidMessageError("empty_text", "the text is empty")
    return TextMessage(
        id=position_id(topic, partition, offset), text=_check_len(stripped, max_chars), meta=None
    )


def parse_training(raw: bytes | None, *, max_bytes: int = 65536, max_chars: int = 4000) -> TrainingMessage:
    """Parse one ``training`` record ``{id, text, label, source, valid}``."""
    obj = _load_object(_decode(raw, max_bytes), "training record")
    text = _string(obj, "text")
    source = obj.get("source", "human")
    if source not in TRAINING_SOURCES:
        raise InvalidMessageError("invalid_value", f"source {source!r} is not one of {TRAINING_SOURCES}")
    assert text is not None
    if source == "stream":  # unlabelled: no label; maybe its embedding
        return _parse_stream_record(obj, _check_len(text, max_chars))
    label = _label(obj)
    valid = obj.get("valid", True)
    if not isinstance(valid, bool):
        raise InvalidMessageError(
            "wrong_type", f"field 'valid' must be true/false, got {type(valid).__name__}"
        )
    item_id = obj.get("id", "")
    if not isinstance(item_id, (str, int)) or isinstance(item_id, bool):
        raise InvalidMessageError("wrong_type", "field 'id' must be a string")
    return TrainingMessage(
        id=str(item_id), text=_check_len(text, max_chars), label=label, source=source, valid=valid
    )


def _parse_stream_record(obj: dict[str, Any], text: str) -> TrainingMessage:
    """A ``stream`` record: ``{id, text, source: "stream", embedding?, embedder?}`` (label ignored)."""
    item_id = obj.get("id", "")
    if not isinstance(item_id, (str, int)) or isinstance(item_id, bool):
        raise InvalidMessageError("wrong_type", "field 'id' must be a string")
    embedding = _string(obj, "embedding", required=False)
    embedder = _string(obj, "embedder", required=False)
    if (embedding is None) != (embedder is None):
        raise InvalidMessageError("missing_field", "'embedding' and 'embedder' go together")
    if embedding is not None:
        decode_vector(embedding)  # refuse a bad one here, once, with its reason
    return TrainingMessage(
        id=str(item_id), text=text, label="", source="stream", embedding=embedding, embedder=embedder
    )


def encode_vector(x: np.ndarray) -> str:
    """An embedding as base64 of little-endian float16 (768 bytes for MiniLM's 384 dimensions)."""
    return base64.b64encode(np.asarray(x, dtype="<f2").tobytes()).decode("ascii")


def decode_vector(s: str) -> np.ndarray:
    """The float32 vector of :func:`encode_vector`'s text; :class:`InvalidMessageError` when it is none."""
    try:
        raw = base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidMessageError("invalid_value", f"embedding is not base64: {exc}") from exc
    if not raw or len(raw) % 2 or len(raw) // 2 > MAX_VECTOR_DIM:
        raise InvalidMessageError(
            "invalid_value", f"embedding must be 1..{MAX_VECTOR_DIM} float16 values, got {len(raw)} bytes"
        )
    x = np.frombuffer(raw, dtype="<f2").astype(np.float32)
    if not np.isfinite(x).all():
        raise InvalidMessageError("invalid_value", "embedding holds a non-finite value")
    return x


def parse_control(raw: bytes | None, *, max_bytes: int = 1 << 20, max_chars: int = 4000) -> ControlMessage:
    """Parse one ``control`` record ``{op, label, description?, examples?}``."""
    obj = _load_object(_decode(raw, max_bytes), "control record")
    op = _string(obj, "op")
    if op not in CONTROL_OPS:
        raise InvalidMessageError("unknown_op", f"op {op!r} is not one of {CONTROL_OPS}")
    label = _label(obj)
    description = _string(obj, "description", required=op == "describe_class")
    examples = obj.get("examples")
    if examples is not None:
        if not isinstance(examples, list) or not all(isinstance(e, str) for e in examples):
            raise InvalidMessageError("wrong_type", "field 'examples' must be a list of strings")
        examples = [_check_len(e, max_chars) for e in examples if e.strip()]
    return ControlMessage(op=op, label=label, description=description, examples=examples)


#: limits of a ``judge-verdicts`` record: the service writes far smaller values; anything beyond is not
#: one of its verdicts (a forged or corrupted record), so it is dead-lettered instead of counted
VERDICT_MAX_BYTES = 16384
VERDICT_MAX_CHARS = 1000  # id, label and judge_model each
VERDICT_MAX_DEPTH = 100  # the judge asks at most max_depth (default 3) candidates per item
VERDICT_MAX_LATENCY_MS = 86_400_000.0  # a day: the judge's timeout and retries end long before
VERDICT_MAX_TOKENS = 10_000_000


def _bounded_string(obj: dict[str, Any], key: str, max_chars: int) -> str:
    value = _string(obj, key)
    assert value is not None
    if len(value) > max_chars:
        raise InvalidMessageError("too_large", f"field {key!r} has {len(value)} characters > {max_chars}")
    return value


def _number(obj: dict[str, Any], key: str, *, integer: bool, high: float) -> float:
    """A required JSON number in ``[0, high]`` (``integer``: no fraction); bools are not numbers here."""
    if key not in obj or obj[key] is None:
        raise InvalidMessageError("missing_field", f"field {key!r} is missing")
    value: Any = obj[key]
    kinds: tuple[type, ...] = (int,) if integer else (int, float)
    is_number = isinstance(value, kinds) and not isinstance(value, bool)
    if not is_number:
        want = "an integer" if integer else "a number"
        raise InvalidMessageError("wrong_type", f"field {key!r} must be {want}, got {type(value).__name__}")
    if not (0 <= value <= high):  # NaN fails this too (Python's json reads NaN/Infinity); ints stay exact
        shown = repr(value) if len(str(value)) < 40 else f"{str(value)[:20]}..."
        raise InvalidMessageError("invalid_value", f"field {key!r} = {shown} is outside [0, {high:g}]")
    return float(value)


def parse_verdict(raw: bytes | None, *, max_bytes: int = VERDICT_MAX_BYTES) -> VerdictMessage:
    """Parse one ``judge-verdicts`` record ``{id, label, valid, depth, judge_model, latency_ms, tokens}``.

    The topic is the service's audit log of what the judge said; checking every field (types, ranges,
    sizes) keeps a forged or broken record out of the audit metrics. Fields are checked in the order of
    PRODUCT.md, so a record gets the reason of its first bad field. Raises :class:`InvalidMessageError`.
    """
    obj = _load_object(_decode(raw, max_bytes), "verdict record")
    item_id = _bounded_string(obj, "id", VERDICT_MAX_CHARS)
    label = _bounded_string(obj, "label", VERDICT_MAX_CHARS)
    valid = obj.get("valid")
    if valid is None:
        raise InvalidMessageError("missing_field", "field 'valid' is missing")
    if not isinstance(valid, bool):
        raise InvalidMessageError(
            "wrong_type", f"field 'valid' must be true/false, got {type(valid).__name__}"
        )
    depth = int(_number(obj, "depth", integer=True, high=VERDICT_MAX_DEPTH))
    if depth < 1:
        raise InvalidMessageError("invalid_value", f"field 'depth' = {depth} (the top candidate is depth 1)")
    judge_model = _bounded_string(obj, "judge_model", VERDICT_MAX_CHARS)
    latency_ms = float(_number(obj, "latency_ms", integer=False, high=VERDICT_MAX_LATENCY_MS))
    tokens = int(_number(obj, "tokens", integer=True, high=VERDICT_MAX_TOKENS))
    return VerdictMessage(
        id=item_id, label=label, valid=valid, depth=depth, judge_model=judge_model,
        latency_ms=latency_ms, tokens=tokens,
    )  # fmt: skip


def dead_letter_for(
    raw: bytes | None,
    error: InvalidMessageError | str,
    *,
    topic: str,
    partition: int,
    offset: int,
    limit: int = 4096,
) -> DeadLetterMessage:
    """The dead-letter record for ``raw``; the raw value is kept readable (bad bytes escaped, long cut)."""
    text = None if raw is None else raw[:limit].decode("utf-8", errors="backslashreplace")
    if raw is not None and len(raw) > limit:
        text = f"{text}...[{len(raw) - limit} more bytes]"
    reason = error.reason if isinstance(error, InvalidMessageError) else "processing_error"
    return DeadLetterMessage(
        raw=text,
        error=str(error),
        reason=reason,
        topic=topic,
        partition=partition,
        offset=offset,
        ts=time.time(),
    )


#: one record of the learning log (``training``): a training pair, or a control op put there by the
#: worker that owns the ``control`` partition (so both are in one total order)
LogRecord = TrainingMessage | ControlMessage

SEQUENCED = "control"  # the "kind" of a control op on the learning log


def sequenced_control(msg: ControlMessage, source: str) -> dict[str, Any]:
    """The ``training`` value of a control op read at ``source`` (``topic:partition:offset``)."""
    value: dict[str, Any] = {"kind": SEQUENCED, "op": msg.op, "label": msg.label, "from": source}
    if msg.description is not None:
        value["description"] = msg.description
    if msg.examples:
        value["examples"] = list(msg.examples)
    if getattr(msg, "synthetic", False):
        value["synthetic"] = True  # the examples were generated (judge endpoint), not given by a user
    return value


def parse_log_record(
    raw: bytes | None, *, max_bytes: int = 65536, max_chars: int = 4000
) -> tuple[LogRecord, str | None]:
    """Parse one learning-log record: ``(message, source position of a sequenced control op or None)``."""
    s = _decode(raw, max(max_bytes, 1 << 20))
    obj = _load_object(s, "training record")
    if obj.get("kind") == SEQUENCED:
        src = obj.get("from")
        if not isinstance(src, str) or not src:
            raise InvalidMessageError("missing_field", "a sequenced control op needs 'from'")
        return parse_control(raw, max_bytes=1 << 20, max_chars=max_chars), src
    if len(raw or b"") > max_bytes:
        raise InvalidMessageError("too_large", f"{len(raw or b'')} bytes > limit {max_bytes}")
    return parse_training(raw, max_bytes=max_bytes, max_chars=max_chars), None


def log_digest(msg: LogRecord, source: str | None = None) -> int:
    """A 64-bit digest that is the same for a record and its repeats (a crashed writer's retry).

    A judge pair is one (item, label) decision: a second judging of the same item after a crash says
    nothing new about that pair. Seeds and human answers repeat only if everything is the same. A
    sequenced control op repeats when its control record was forwarded twice (same source position).
    """
    if isinstance(msg, ControlMessage):
        parts = ["control", source or f"{msg.op}:{msg.label}"]
    elif msg.source == "judge":
        parts = ["judge", msg.id, msg.label]
    else:
        parts = [msg.source, msg.id, msg.label, str(msg.valid), msg.text]
    h = hashlib.blake2b("\x1f".join(parts).encode("utf-8"), digest_size=8)
    return int.from_bytes(h.digest(), "little")
