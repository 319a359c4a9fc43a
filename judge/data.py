"""Reading labelled text files for the simulated expert and the ``describe`` command.

Kept inside the judge (no import of :mod:`driftlabel.models`) so the judge stays a separate part. Formats:
CLINC150's ``data_full.json`` (``{split: [[text, label], ...]}``, all splits), a JSON list of
``[text, label]`` pairs or ``{"text", "label"}`` objects, JSON Lines of such objects, and CSV with a ``text``
column and a ``label`` (or ``category`` / ``intent``) column.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from driftlabel.judge.errors import JudgeDataError

__all__ = ["examples_by_label", "normalise_text", "read_labelled"]

_LABEL_COLUMNS = ("label", "category", "intent")


def normalise_text(text: str) -> str:
    """Lookup form of a text: lower case, whitespace collapsed."""
    return " ".join(text.lower().split())


def _pair(item: Any, where: str) -> tuple[str, str]:
    if isinstance(item, dict):
        text, label = item.get("text"), item.get("label")
    elif isinstance(item, (list, tuple)) and len(item) == 2:
        text, label = item
    else:
        raise JudgeDataError(
            f"{where}: expected [text, label] or {{'text', 'label'}}, got {str(item)[:60]!r}"
        )
    if not isinstance(text, str) or not isinstance(label, str) or not text.strip() or not label.strip():
        raise JudgeDataError(f"{where}: text and label must be non-empty strings")
    return text, label


def _read_json(path: Path) -> Iterator[tuple[str, str]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise JudgeDataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    if isinstance(data, dict):  # CLINC150 layout: {split: [[text, label], ...]}
        for split, rows in data.items():
            if not isinstance(rows, list):
                raise JudgeDataError(f"{path}: split {split!r} must be a list of [text, label]")
            for i, row in enumerate(rows):
                yield _pair(row, f"{path} [{split}][{i}]")
    elif isinstance(data, list):
        for i, row in enumerate(data):
            yield _pair(row, f"{path} [{i}]")
    else:
        raise JudgeDataError(f"{path}: expected an object of splits or a list of rows")


def _read_jsonl(path: Path) -> Iterator[tuple[str, str]]:
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise JudgeDataError(f"{path}:{n}: not valid JSON ({exc.msg})") from exc
            yield _pair(row, f"{path}:{n}")


def _read_csv(path: Path) -> Iterator[tuple[str, str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        fields = reader.fieldnames or []
        label_col = next((c for c in _LABEL_COLUMNS if c in fields), None)
        if "text" not in fields or label_col is None:
            raise JudgeDataError(f"{path}: CSV needs a 'text' column and a 'label' column, found {fields}")
        for n, row in enumerate(reader, start=2):
            yield _pair({"text": row.get("text"), "label": row.get(label_col)}, f"{path}:{n}")


def read_labelled(path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """All (text, label) rows of a labelled file; :class:`JudgeDataError` names the bad file/line."""
    p = Path(path)
    if not p.is_file():
        raise JudgeDataError(f"labelled data file {p} does not exist")
    suffix = p.suffix.lower()
    if suffix == ".json":
        rows = list(_read_json(p))
    elif suffix in (".jsonl", ".ndjson"):
        rows = list(_read_jsonl(p))
    elif suffix == ".csv":
        rows = list(_read_csv(p))
    else:
        raise JudgeDataError(f"{p}: unknown format {suffix!r}; use .json (CLINC150 layout), .jsonl or .csv")
    if not rows:
        raise JudgeDataError(f"{p}: no labelled rows found")
    return rows


def examples_by_label(rows: Iterable[tuple[str, str]], per_label: int | None = None) -> dict[str, list[str]]:
    """Group texts by label, keeping file order and at most ``per_label`` each."""
    out: dict[str, list[str]] = {}
    for text, label in rows:
        bucket = out.setdefault(label, [])
        if per_label is None or len(bucket) < per_label:
            bucket.append(text)
    return out
