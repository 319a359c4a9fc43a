"""The judge's view of labelled text files (the simulated expert and ``driftlabel describe``).

A thin wrapper over the project's one reader, :mod:`driftlabel.datafiles` (standard library only, so the
simulated expert does not pull numpy or the models in). Formats: CLINC150's ``data_full.json``
(``{split: [[text, label], ...]}``, all splits), a JSON list of ``[text, label]`` pairs or
``{"text", "label"}`` objects, JSON Lines of such objects, and CSV/TSV with a ``text`` column and a
``label`` (or ``category`` / ``intent``) column. Errors are :class:`JudgeDataError` naming file and line.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable

from driftlabel.datafiles import DataFileError, LabelledRow, group_by_label, normalise_text, read_rows
from driftlabel.judge.errors import JudgeDataError

__all__ = ["LABEL_COLUMNS", "examples_by_label", "normalise_text", "read_labelled", "read_labelled_rows"]

#: label columns the judge accepts, first found wins (BANKING77 calls it ``category``)
LABEL_COLUMNS = ("label", "category", "intent")


def read_labelled_rows(
    path: str | os.PathLike[str], *, splits: Collection[str] | None = None
) -> list[LabelledRow]:
    """All rows of a labelled file with their split (CLINC150 layout), as :class:`LabelledRow`."""
    try:
        return read_rows(path, label_column=LABEL_COLUMNS, splits=splits)
    except DataFileError as exc:
        raise JudgeDataError(str(exc)) from exc


def read_labelled(path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """All (text, label) rows of a labelled file; :class:`JudgeDataError` names the bad file/line."""
    return [(r.text, r.label) for r in read_labelled_rows(path)]


def examples_by_label(rows: Iterable[tuple[str, str]], per_label: int | None = None) -> dict[str, list[str]]:
    """Group texts by label, keeping file order and at most ``per_label`` each."""
    return group_by_label(rows, per_label)
