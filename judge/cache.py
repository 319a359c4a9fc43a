"""Verdict cache: the same (text, label, description version, model) is never paid for twice."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import NamedTuple

__all__ = ["CachedAnswer", "VerdictCache", "cache_key", "description_version"]


class CachedAnswer(NamedTuple):
    valid: bool
    confidence: float | None


def description_version(description: str | None) -> str:
    """A short stable hash of a description: editing a description invalidates its cached verdicts."""
    if not description:
        return "none"
    return hashlib.sha256(description.strip().encode("utf-8")).hexdigest()[:16]


def cache_key(text: str, label: str, description: str | None, model: str) -> str:
    """Key over the normalised text, the label, the description version and the judge model."""
    norm = " ".join(text.split())
    h = hashlib.sha256()
    for part in (norm, label, description_version(description), model):
        h.update(part.encode("utf-8"))
        h.update(b"\x1f")
    return h.hexdigest()


class VerdictCache:
    """A bounded LRU of answers; ``maxsize=0`` disables it."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._data: OrderedDict[str, CachedAnswer] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str) -> CachedAnswer | None:
        if self.maxsize <= 0:
            return None
        found = self._data.get(key)
        if found is None:
            self.misses += 1
            return None
        self._data.move_to_end(key)
        self.hits += 1
        return found

    def put(self, key: str, answer: CachedAnswer) -> None:
        if self.maxsize <= 0:
            return
        self._data[key] = answer
        self._data.move_to_end(key)
        while len(self._data) > self.maxsize:
            self._data.popitem(last=False)

    def clear(self) -> None:
        self._data.clear()
