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
from collections.abc import Sequence
from typing import Any

from driftlabel.judge.errors import MalformedAnswerError

__all__ = ["clean_description", "confidence_from_logprobs", "parse_verdict"]

_WORD = re.compile(r"^[\s\"'`*_]*(yes|no|true|false)[\s\"'`*_]*[.!]?[\s\"'`*_]*$", re.IGNORECASE)
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)
_TRUE = {"yes", "true"}
_ANSWER_WORDS = {"yes": True, "true": True, "no": False, "false": False}


def parse_verdict(content: str | None) -> bool:
    """``True``/``False`` from a model reply, or :class:`MalformedAnswerError`."""
    if content is None:
        raise MalformedAnswerError("the endpoint returned no message content", raw=None)
    raw = content
    text = content.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    if text.startswith("{"):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise MalformedAnswerError(f"answer is not valid JSON ({exc.msg})", raw=raw) from exc
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
    if content is None or not content.strip():
        raise MalformedAnswerError("the endpoint returned an empty description", raw=content)
    text = " ".join(content.strip().strip("\"'`").split())
    for prefix in ("Description:", "Definition:"):
        if text.lower().startswith(prefix.lower()):
            text = text[len(prefix) :].strip()
    if not text:
        raise MalformedAnswerError("the endpoint returned an empty description", raw=content)
    return text[:max_chars]
