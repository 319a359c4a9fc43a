"""The one reader of labelled text files, shared by the models (seed files) and the judge (simulated expert).

It lives in the root package and imports only the standard library (no numpy, no torch), so the simulated
expert server and ``driftlabel describe`` start light. Formats, chosen by the file name's suffix:

- ``.csv`` / ``.tsv`` / ``.txt``: a header row with a text column and a label column (UTF-8, BOM allowed);
- ``.jsonl`` / ``.ndjson``: one JSON object a line (blank lines skipped);
- ``.json``: CLINC150's ``data_full.json`` layout ``{split: [[text, label], ...]}`` (every split, each row
  tagged with its split), or a list of ``[text, label]`` pairs or objects.

Texts and labels are stripped. A bad row is never dropped silently: :class:`DataFileError` names the file
and line (or split and index) and says how to fix it. Callers re-raise it as their own branch's error
(``InvalidDataError`` in the models, ``JudgeDataError`` in the judge).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from driftlabel.errors import DriftlabelError

__all__ = [
    "FORMATS",
    "DataFileError",
    "LabelledRow",
    "group_by_label",
    "iter_rows",
    "normalise_text",
    "read_labelled",
    "read_rows",
]

#: suffix -> format name
FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".txt": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
}


class DataFileError(DriftlabelError, ValueError):
    """A labelled data file is missing or malformed; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class LabelledRow:
    """One labelled text; ``split`` is the CLINC150-style split it came from (None for flat files)."""

    text: str
    label: str
    split: str | None
    where: str


def normalise_text(text: str) -> str:
    """Lookup form of a text: lower case, whitespace collapsed (how the simulated expert matches texts)."""
    return " ".join(text.lower().split())


def _columns(label_column: str | Sequence[str]) -> tuple[str, ...]:
    return (label_column,) if isinstance(label_column, str) else tuple(label_column)


def _describe_cols(cols: tuple[str, ...]) -> str:
    first = repr(cols[0])
    return first if len(cols) == 1 else f"{first} (or {', '.join(map(repr, cols[1:]))})"


def _row(
    text: Any, label: Any, where: str, split: str | None, text_column: str, label_name: str
) -> LabelledRow:
    if not isinstance(text, str) or isinstance(label, bool) or not isinstance(label, str | int):
        raise DataFileError(f"{where}: {text_column!r} must be a string and {label_name!r} a string")
    text, label = text.strip(), str(label).strip()
    if not text:
        raise DataFileError(f"{where}: empty {text_column!r}; remove the row or fill it in")
    if not label:
        raise DataFileError(
            f"{where}: empty {label_name!r} for text {text[:40]!r}; every example needs a label"
        )
    return LabelledRow(text, label, split, where)


def _from_mapping(
    obj: dict[str, Any], where: str, split: str | None, text_column: str, cols: tuple[str, ...]
) -> LabelledRow:
    label_col = next((c for c in cols if c in obj), None)
    for col, present in ((text_column, text_column in obj), (_describe_cols(cols), label_col is not None)):
        if not present:
            shown = col if col.startswith("'") else repr(col)
            raise DataFileError(f"{where}: missing column {shown} (found {sorted(obj)}); each row needs it")
    assert label_col is not None
    return _row(obj[text_column], obj[label_col], where, split, text_column, label_col)


def _csv_rows(p: Path, delimiter: str, text_column: str, cols: tuple[str, ...]) -> Iterator[LabelledRow]:
    with p.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh, delimiter=delimiter)
        try:
            fields = list(reader.fieldnames or [])
        except csv.Error as exc:
            raise DataFileError(f"{p}:1: malformed CSV header: {exc}") from exc
        label_col = next((c for c in cols if c in fields), None)
        missing = ([] if text_column in fields else [repr(text_column)]) + (
            [] if label_col else [_describe_cols(cols)]
        )
        if missing:
            raise DataFileError(
                f"{p}:1: missing column(s) {', '.join(missing)}; the header is {fields}. The file needs a "
                f"{text_column!r} column and a {cols[0]!r} column: rename the columns (`driftlabel "
                "train` can also be told them: --text-column/--label-column)"
            )
        assert label_col is not None
        try:
            for row in reader:
                where = f"{p}:{reader.line_num}"
                if None in row or any(v is None for v in row.values()):
                    raise DataFileError(
                        f"{where}: expected {len(fields)} fields; quote texts that contain '{delimiter}'"
                    )
                yield _row(row[text_column], row[label_col], where, None, text_column, label_col)
        except csv.Error as exc:
            raise DataFileError(f"{p}:{reader.line_num}: malformed CSV: {exc}") from exc


def _jsonl_rows(p: Path, text_column: str, cols: tuple[str, ...]) -> Iterator[LabelledRow]:
    with p.open(encoding="utf-8-sig") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{p}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataFileError(f"{where}: not valid JSON ({exc.msg})") from exc
            if not isinstance(obj, dict):
                raise DataFileError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            yield _from_mapping(obj, where, None, text_column, cols)


def _json_item(
    item: Any, where: str, split: str | None, text_column: str, cols: tuple[str, ...]
) -> LabelledRow:
    if isinstance(item, dict):
        return _from_mapping(item, where, split, text_column, cols)
    if isinstance(item, list | tuple) and len(item) == 2:
        return _row(item[0], item[1], where, split, text_column, cols[0])
    raise DataFileError(
        f"{where}: expected [text, label] or {{{text_column!r}, {cols[0]!r}}}, got {str(item)[:60]!r}"
    )


def _json_rows(p: Path, text_column: str, cols: tuple[str, ...]) -> Iterator[LabelledRow]:
    try:
        data = json.loads(p.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise DataFileError(f"{p}:{exc.lineno}: not valid JSON ({exc.msg})") from exc
    if isinstance(data, dict):  # CLINC150 layout: {split: [[text, label], ...]}
        for split, items in data.items():
            if not isinstance(items, list):
                raise DataFileError(f"{p}: split {split!r} must be a list of [text, label] rows")
            for i, item in enumerate(items):
                yield _json_item(item, f"{p} [{split}][{i}]", str(split), text_column, cols)
    elif isinstance(data, list):
        for i, item in enumerate(data):
            yield _json_item(item, f"{p} [{i}]", None, text_column, cols)
    else:
        raise DataFileError(f"{p}: expected an object of splits or a list of rows, got {type(data).__name__}")


def iter_rows(
    path: str | os.PathLike[str],
    *,
    text_column: str = "text",
    label_column: str | Sequence[str] = "label",
) -> Iterator[LabelledRow]:
    """Rows of a labelled file in file order (lazy); ``label_column`` may list accepted alternatives."""
    p = Path(path)
    if not p.is_file():
        raise DataFileError(
            f"{p}: no such file (the labelled data file does not exist); pass a CSV, JSONL or JSON file "
            f"with columns {text_column},{_columns(label_column)[0]}"
        )
    fmt = FORMATS.get(p.suffix.lower())
    if fmt is None:
        raise DataFileError(
            f"{p}: unknown format {p.suffix!r}; use .csv, .tsv, .jsonl or .json (CLINC150 layout)"
        )
    cols = _columns(label_column)
    if not cols:
        raise DataFileError("label_column must name at least one column")
    try:
        if fmt == "jsonl":
            yield from _jsonl_rows(p, text_column, cols)
        elif fmt == "json":
            yield from _json_rows(p, text_column, cols)
        else:
            yield from _csv_rows(p, "\t" if fmt == "tsv" else ",", text_column, cols)
    except UnicodeDecodeError as exc:
        raise DataFileError(f"{p}: not UTF-8 ({exc}); re-save the file as UTF-8") from exc


def read_rows(
    path: str | os.PathLike[str],
    *,
    text_column: str = "text",
    label_column: str | Sequence[str] = "label",
    splits: Collection[str] | None = None,
) -> list[LabelledRow]:
    """All rows (only those of ``splits`` when given); an empty result is an error, never silent."""
    rows = [
        r
        for r in iter_rows(path, text_column=text_column, label_column=label_column)
        if splits is None or r.split in splits
    ]
    if not rows:
        which = f" in splits {sorted(splits)}" if splits is not None else ""
        raise DataFileError(
            f"{path}: no examples{which}; the file needs at least one "
            f"{text_column},{_columns(label_column)[0]} row"
        )
    return rows


def read_labelled(
    path: str | os.PathLike[str],
    *,
    text_column: str = "text",
    label_column: str | Sequence[str] = "label",
    splits: Collection[str] | None = None,
) -> list[tuple[str, str]]:
    """All ``(text, label)`` pairs of a labelled file (see :func:`read_rows`)."""
    return [
        (r.text, r.label)
        for r in read_rows(path, text_column=text_column, label_column=label_column, splits=splits)
    ]


def group_by_label(rows: Iterable[tuple[str, str]], per_label: int | None = None) -> dict[str, list[str]]:
    """Texts grouped by label in file order, at most ``per_label`` each."""
    out: dict[str, list[str]] = {}
    for text, label in rows:
        bucket = out.setdefault(label, [])
        if per_label is None or len(bucket) < per_label:
            bucket.append(text)
    return out
