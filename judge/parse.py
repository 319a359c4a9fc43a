"""Answer parsing: pure functions. A verdict is read only from a clear yes/no; anything else is an error.

Accepted: a JSON object whose ``valid`` is a boolean (what structured output returns), or, as a strict
fallback, a reply that is exactly ``yes`` / ``no`` / ``true`` / ``false`` (any case, optionally in quotes,
backticks, ``**`` or followed by a full stop). "Yes, but...", ``{"valid": "maybe"}`` or an empty reply raise
:class:`MalformedAnswerError` and are never read as a yes.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

from driftlabel.judge.errors import MalformedAnswerError

__all__ = [
    "clean_description",
    "confidence_from_logprobs",
    "normalise_label_name",
    "parse_choice",
    "parse_choices",
    "parse_examples",
    "parse_proposal",
    "parse_verdict",
    "parse_verdicts",
]

_WORD = re.compile(r"^[\s\"'`*_]*(yes|no|true|false)[\s\"'`*_]*[.!]?[\s\"'`*_]*$", re.IGNORECASE)
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL | re.IGNORECASE)  # ```JSON too
_TRUE = {"yes", "true"}
_ANSWER_WORDS = {"yes": True, "true": True, "no": False, "false": False}


def _checked(content: Any) -> str | None:
    """``content`` if it is a string or None; a reply whose content is anything else (a list, a number) is
    malformed, not a crash."""
    if content is not None and not isinstance(content, str):
        raise MalformedAnswerError(f"message content is not text ({type(content).__name__})", raw=None)
    return content


def _loads(text: str, what: str, raw: str) -> Any:
    """``json.loads``, where JSON too deep or with a number too long to read is malformed, like broken
    JSON (both raise other errors than :class:`json.JSONDecodeError`)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise MalformedAnswerError(f"{what} is not valid JSON ({exc.msg}): {shown!r}", raw=raw) from exc
    except (ValueError, RecursionError) as exc:
        raise MalformedAnswerError(f"{what} is JSON that cannot be read ({exc})", raw=raw) from exc


def parse_verdict(content: str | None) -> bool:
    """``True``/``False`` from a model reply, or :class:`MalformedAnswerError`."""
    content = _checked(content)
    if content is None:
        raise MalformedAnswerError("the endpoint returned no message content", raw=None)
    raw = content
    text = content.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    if text.startswith("{"):
        obj = _loads(text, "answer", raw)
        if not isinstance(obj, dict) or not isinstance(obj.get("valid"), bool):
            raise MalformedAnswerError('JSON answer lacks a boolean "valid" field', raw=raw)
        return bool(obj["valid"])
    match = _WORD.match(text)
    if match:
        return match.group(1).lower() in _TRUE
    shown = raw if len(raw) <= 80 else raw[:77] + "..."
    raise MalformedAnswerError(f"answer is neither JSON nor a plain yes/no: {shown!r}", raw=raw)


def confidence_from_logprobs(tokens: Sequence[Any] | None, valid: bool) -> float | None:
    """Probability the model gave to its own answer word, from chat ``logprobs.content`` entries.

    Takes the first token that spells yes/no/true/false (leading spaces and quotes ignored) and returns
    ``exp(logprob)``; None when the endpoint sent no logprobs or no such token.
    """
    if not tokens:
        return None
    for entry in tokens:
        token = getattr(entry, "token", None)
        logprob = getattr(entry, "logprob", None)
        if token is None and isinstance(entry, dict):
            token, logprob = entry.get("token"), entry.get("logprob")
        if not isinstance(token, str) or logprob is None:
            continue
        word = token.strip().strip("\"'`*").lower()
        if word in _ANSWER_WORDS:
            p = math.exp(float(logprob))
            return p if _ANSWER_WORDS[word] == valid else 1.0 - p
    return None


def clean_description(content: str | None, *, max_chars: int = 600) -> str:
    """A generated label description, trimmed to one clean paragraph; empty replies are malformed."""
    content = _checked(content)
    if content is None or not content.strip():
        raise MalformedAnswerError("the endpoint returned an empty description", raw=content)
    text = " ".join(content.strip().strip("\"'`").split())
    for prefix in ("Description:", "Definition:"):
        if text.lower().startswith(prefix.lower()):
            text = text[len(prefix) :].strip()
    if not text:
        raise MalformedAnswerError("the endpoint returned an empty description", raw=content)
    return text[:max_chars]


_NAME_JUNK = re.compile(r"[^a-z0-9]+")


def _json_object(content: str | None, what: str) -> dict[str, Any]:
    """The JSON object of a reply (a ```json fence allowed); anything else is malformed."""
    content = _checked(content)
    if content is None or not content.strip():
        raise MalformedAnswerError(f"the endpoint returned an empty {what}", raw=content)
    text = content.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    obj = _loads(text, what, content)
    if not isinstance(obj, dict):
        raise MalformedAnswerError(f"{what} must be a JSON object, got {type(obj).__name__}", raw=content)
    return obj


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def parse_examples(
    content: str | None, *, label: str = "", known: Sequence[str] = (), max_chars: int = 500
) -> list[str]:
    """Synthetic examples from ``{"examples": [str, ...]}``: stripped, deduplicated, validated.

    Empty strings, non-strings, over-long texts, the bare label name and texts equal to one of ``known``
    (case and spacing ignored) are dropped; a reply with no usable example at all is malformed.
    """
    obj = _json_object(content, "examples answer")
    items = obj.get("examples")
    if not isinstance(items, list):
        raise MalformedAnswerError('examples answer lacks an "examples" list of strings', raw=content)
    seen = {_norm(k) for k in known}
    seen.update({_norm(label), _norm(label.replace("_", " ").replace("-", " "))} if label else set())
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            continue
        text = " ".join(item.split())
        key = _norm(text)
        if not text or len(text) > max_chars or key in seen:
            continue
        seen.add(key)
        out.append(text)
    if not out:
        why = (
            "an empty list: the endpoint has nothing for this label"
            if not items
            else f"{len(items)} given, all empty, duplicate, too long or not strings"
        )
        raise MalformedAnswerError(f"examples answer held no usable new example ({why})", raw=content)
    return out


def parse_choice(content: str | None, n: int) -> int:
    """The candidate picked in ``{"choice": N}`` (1..n), or 0 for none; a bare number is accepted too."""
    text = (_checked(content) or "").strip()
    if text.isascii() and text.isdigit():  # str.isdigit alone also admits "²", which int() refuses
        if (
            len(text.lstrip("0")) > 9
        ):  # no candidate list is that long (and int() refuses 4,300 digits and more)
            raise MalformedAnswerError(f"choice {text[:12]}... is not a candidate (0 to {n})", raw=content)
        value: Any = int(text)
    else:
        value = _json_object(content, "choice answer").get("choice")
        if isinstance(value, bool) or not isinstance(value, int):
            raise MalformedAnswerError('choice answer needs an integer field "choice"', raw=content)
    if not 0 <= value <= n:
        raise MalformedAnswerError(f"choice {value} is not a candidate (0 to {n})", raw=content)
    return int(value)


def parse_choices(content: str | None, sizes: Sequence[int]) -> dict[int, int]:
    """Per item (counted from 1) the candidate picked in ``{"choices": [{"item": i, "choice": N}, ...]}``,
    ``sizes[i-1]`` being item i's candidate count; 0 = none.

    Only usable entries are returned: an item missing, out of range, answered twice with different picks
    or with a non-integer is left out, so the caller can ask it again alone. A reply that is not such an
    object at all raises :class:`MalformedAnswerError`."""

    def usable(item: int, choice: Any) -> bool:
        return isinstance(choice, int) and not isinstance(choice, bool) and 0 <= choice <= sizes[item - 1]

    return _per_item(content, "batch choice answer", "choices", "choice", len(sizes), usable)


def parse_verdicts(content: str | None, n: int) -> dict[int, bool]:
    """Per item (counted from 1, ``n`` items) the answer in ``{"verdicts": [{"item": i, "valid": b}, ...]}``.

    As :func:`parse_choices`: an item missing, answered twice differently or with anything but a boolean
    (``"yes"`` included: a batch is asked for JSON) is left out, to be asked again alone."""

    def usable(_item: int, valid: Any) -> bool:
        return isinstance(valid, bool)

    return _per_item(content, "batch verdict answer", "verdicts", "valid", n, usable)


def _per_item(
    content: str | None, what: str, key: str, field: str, n: int, usable: Callable[[int, Any], bool]
) -> dict[int, Any]:
    """``{key: [{"item": i, field: value}, ...]}`` read as ``{i: value}``, keeping only usable entries of
    items 1..n that are not answered twice with different values."""
    obj = _json_object(content, what)
    entries = obj.get(key)
    if not isinstance(entries, list):
        raise MalformedAnswerError(f'{what} needs a list field "{key}"', raw=content)
    values: dict[int, Any] = {}
    bad: set[int] = set()
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        item, value = entry.get("item"), entry.get(field)
        if isinstance(item, bool) or not isinstance(item, int) or not 1 <= item <= n:
            continue
        if not usable(item, value):
            continue
        if item in values and values[item] != value:
            bad.add(item)  # two different answers for one item: neither is trusted
        values[item] = value
    return {i: v for i, v in values.items() if i not in bad}


def normalise_label_name(name: str) -> str:
    """A proposed class name as a label: lower-case snake_case of letters and digits, at most 64 chars."""
    return _NAME_JUNK.sub("_", name.strip().lower()).strip("_")[:64].strip("_")


def parse_proposal(content: str | None, *, max_description_chars: int = 600) -> tuple[str, str]:
    """``(name, description)`` from ``{"name": str, "description": str}``; the name is normalised."""
    obj = _json_object(content, "class proposal")
    name, desc = obj.get("name"), obj.get("description")
    if not isinstance(name, str) or not isinstance(desc, str):
        raise MalformedAnswerError('class proposal needs string fields "name" and "description"', raw=content)
    label = normalise_label_name(name)
    if not label:
        raise MalformedAnswerError(f"class proposal has no usable name ({name!r})", raw=content)
    description = " ".join(desc.split())[:max_description_chars]
    if not description:
        raise MalformedAnswerError(f"class proposal for {label!r} has an empty description", raw=content)
    return label, description
