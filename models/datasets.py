"""Labelled text sets: the shared benchmark data (CLINC150, BANKING77, O*NET) and users' seed files.

The benchmark sets are read in place from ``../shared/data`` (or ``$DRIFTLABEL_DATA_DIR``), never copied.
Every loader returns a :class:`Dataset` of :class:`Split` s, each a ``(texts, labels)`` pair of lists, so
``texts, labels = ds.train`` works. k-shot seeds come from :func:`k_shot_indices` (indices, so cached
embeddings can be sliced without re-encoding) and are deterministic for a seed.

Seed files (:func:`read_examples`) are CSV, JSONL or JSON with ``text`` and ``label``, read by the one
labelled-file reader :mod:`driftlabel.datafiles` (shared with the judge); a bad row is reported as
``file:line`` and nothing is silently dropped.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from driftlabel.datafiles import DataFileError, read_rows
from driftlabel.models.errors import InvalidDataError

__all__ = [
    "DATA_DIR_ENV",
    "Dataset",
    "Split",
    "default_data_dir",
    "k_shot_indices",
    "load_banking77",
    "load_clinc150",
    "load_dataset",
    "load_onet",
    "read_descriptions",
    "read_examples",
    "sample_k_shot",
]

DATA_DIR_ENV = "DRIFTLABEL_DATA_DIR"
OOS_LABEL = "oos"
_REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Split:
    """Parallel lists of texts and labels; ``len()`` counts examples; unpacks as ``texts, labels``."""

    texts: list[str]
    labels: list[str]

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise InvalidDataError(
                f"{len(self.texts)} texts but {len(self.labels)} labels; they must be parallel"
            )

    def __len__(self) -> int:
        return len(self.texts)

    def __iter__(self) -> Iterator[list[str]]:
        yield self.texts
        yield self.labels

    def take(self, indices: Sequence[int] | np.ndarray) -> Split:
        """The examples at ``indices``, in that order."""
        return Split([self.texts[i] for i in indices], [self.labels[i] for i in indices])


_EMPTY = Split([], [])


@dataclass(frozen=True)
class Dataset:
    """A named labelled set; ``oos_*`` hold out-of-scope texts (label ``"oos"``), empty if there are none."""

    name: str
    train: Split
    test: Split
    val: Split = _EMPTY
    oos_train: Split = _EMPTY
    oos_val: Split = _EMPTY
    oos_test: Split = _EMPTY
    descriptions: dict[str, str] = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        """The in-scope classes, sorted."""
        return sorted(set(self.train.labels))

    def split(self, name: str) -> Split:
        """A split by name (``train``, ``val``, ``test``, ``oos_train``, ``oos_val``, ``oos_test``)."""
        if name not in SPLITS:
            raise InvalidDataError(f"unknown split {name!r}; choose one of {', '.join(SPLITS)}")
        split: Split = getattr(self, name)
        return split

    def k_shot(self, k: int | None, seed: int = 0) -> Dataset:
        """The same set with ``train`` cut to at most ``k`` examples per label (None = all)."""
        idx = k_shot_indices(self.train.labels, k, seed)
        return Dataset(
            self.name,
            self.train.take(idx),
            self.test,
            self.val,
            self.oos_train,
            self.oos_val,
            self.oos_test,
            dict(self.descriptions),
        )

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={len(getattr(self, s))}" for s in SPLITS if len(getattr(self, s)))
        return f"Dataset({self.name!r}, {len(self.labels)} labels, {sizes})"


SPLITS = ("train", "val", "test", "oos_train", "oos_val", "oos_test")


def default_data_dir() -> Path:
    """``$DRIFTLABEL_DATA_DIR``, else the first ``shared/data`` found beside the repository or the cwd."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    candidates = [
        _REPO_ROOT.parent / "shared" / "data",
        Path.cwd().parent / "shared" / "data",
        Path.cwd() / "shared" / "data",
    ]
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    return candidates[0]


def _data_file(data_dir: str | os.PathLike[str] | None, *parts: str) -> Path:
    base = Path(data_dir) if data_dir is not None else default_data_dir()
    path = base.joinpath(*parts)
    if not path.is_file():
        raise InvalidDataError(
            f"dataset file {path} not found; "
            f"set {DATA_DIR_ENV} to the folder holding clinc150/, banking77/ and onet/"
        )
    return path


def load_clinc150(data_dir: str | os.PathLike[str] | None = None) -> Dataset:
    """CLINC150 ``data_full.json``: 150 intents (100/20/30 per intent) plus out-of-scope splits."""
    path = _data_file(data_dir, "clinc150", "data_full.json")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        splits = {s: Split([str(t) for t, _ in raw[s]], [str(lab) for _, lab in raw[s]]) for s in SPLITS}
    except (json.JSONDecodeError, KeyError, ValueError, TypeError) as exc:
        raise InvalidDataError(
            f"{path} is not CLINC150's data_full.json ({exc}); re-fetch the shared data"
        ) from exc
    return Dataset(
        "clinc150",
        train=splits["train"],
        test=splits["test"],
        val=splits["val"],
        oos_train=splits["oos_train"],
        oos_val=splits["oos_val"],
        oos_test=splits["oos_test"],
    )


def load_banking77(data_dir: str | os.PathLike[str] | None = None) -> Dataset:
    """BANKING77 ``train.csv``/``test.csv`` (columns ``text,category``); 77 intents, no validation split."""
    train = _data_file(data_dir, "banking77", "train.csv")
    test = _data_file(data_dir, "banking77", "test.csv")
    ds = Dataset(
        "banking77",
        train=Split(*read_examples(train, label_column="category")),
        test=Split(*read_examples(test, label_column="category")),
    )
    cats = train.parent / "categories.json"
    if cats.is_file():
        known = set(json.loads(cats.read_text(encoding="utf-8")))
        unknown = set(ds.train.labels) - known
        if unknown:
            raise InvalidDataError(f"{train}: labels not in {cats.name}: {sorted(unknown)[:5]}")
    return ds


def load_onet(
    data_dir: str | os.PathLike[str] | None = None, *, test_fraction: float = 0.25, seed: int = 0
) -> Dataset:
    """O*NET task statements: text = ``Task``, label = occupation ``Title`` (923 labels, 4-40 each).

    The file has no split, so each occupation's statements are shuffled with ``seed`` and
    ``max(1, round(n * test_fraction))`` of them go to test: deterministic, and every label in both splits.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    path = _data_file(data_dir, "onet", "task_statements.txt")
    texts: list[str] = []
    labels: list[str] = []
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, [])
        try:
            ti, li = header.index("Task"), header.index("Title")
        except ValueError as exc:
            raise InvalidDataError(f"{path}:1: expected columns 'Title' and 'Task', got {header}") from exc
        for lineno, row in enumerate(reader, start=2):
            if len(row) != len(header):
                raise InvalidDataError(f"{path}:{lineno}: {len(row)} fields, expected {len(header)}")
            texts.append(row[ti].strip())
            labels.append(row[li].strip())
    y = np.asarray(labels, dtype=object)
    rng = np.random.default_rng(seed)
    is_test = np.zeros(len(y), dtype=bool)
    order = np.argsort(y, kind="stable")
    _, starts, counts = np.unique(y[order], return_index=True, return_counts=True)
    for start, n in zip(starts, counts, strict=True):
        members = order[start : start + n]
        n_test = max(1, round(n * test_fraction)) if n > 1 else 0
        is_test[rng.permutation(members)[:n_test]] = True
    tr, te = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    full = Split(texts, labels)
    return Dataset("onet", train=full.take(tr), test=full.take(te))


_LOADERS = {"clinc150": load_clinc150, "banking77": load_banking77, "onet": load_onet}


def load_dataset(name: str, data_dir: str | os.PathLike[str] | None = None) -> Dataset:
    """One of ``clinc150``, ``banking77``, ``onet`` by name."""
    try:
        loader = _LOADERS[name]
    except KeyError:
        raise InvalidDataError(f"unknown dataset {name!r}; choose one of {', '.join(_LOADERS)}") from None
    return loader(data_dir)


def k_shot_indices(labels: Sequence[str] | np.ndarray, k: int | None, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most ``k`` examples per label, drawn with ``seed`` (None/0 or less = all)."""
    y = np.asarray(labels, dtype=object)
    if k is None:
        return np.arange(len(y))
    if k < 1:
        raise ValueError(f"k must be >= 1 (or None for all examples), got {k}")
    rng = np.random.default_rng(seed)
    order = np.argsort(y, kind="stable")
    _, starts, counts = np.unique(y[order], return_index=True, return_counts=True)
    chosen = [
        rng.permutation(order[s : s + n])[:k] if n > k else order[s : s + n]
        for s, n in zip(starts, counts, strict=True)
    ]
    return np.sort(np.concatenate(chosen)) if chosen else np.empty(0, dtype=np.intp)


def sample_k_shot(
    texts: Sequence[str], labels: Sequence[str], k: int | None, seed: int = 0
) -> tuple[list[str], list[str]]:
    """At most ``k`` examples per label (deterministic for ``seed``), in their original order."""
    if len(texts) != len(labels):
        raise InvalidDataError(f"{len(texts)} texts but {len(labels)} labels; they must be parallel lists")
    idx = k_shot_indices(labels, k, seed)
    return [texts[i] for i in idx], [labels[i] for i in idx]


def read_examples(
    path: str | os.PathLike[str], *, text_column: str = "text", label_column: str = "label"
) -> tuple[list[str], list[str]]:
    """Labelled examples from a CSV/TSV (header row), JSONL (one object a line) or JSON file.

    One reader serves the models and the judge (:mod:`driftlabel.datafiles`). Texts and labels are
    stripped; an empty one, a missing column or a malformed line raises InvalidDataError with
    ``file:line``, so the user can fix the file instead of losing rows silently.
    """
    try:
        rows = read_rows(path, text_column=text_column, label_column=label_column)
    except DataFileError as exc:
        raise InvalidDataError(str(exc)) from exc
    return [r.text for r in rows], [r.label for r in rows]


def read_descriptions(path: str | os.PathLike[str]) -> dict[str, str]:
    """A ``label: description`` mapping from YAML or JSON (descriptions help the subsets and the judge)."""
    p = Path(path)
    if not p.is_file():
        raise InvalidDataError(f"{p}: no such file; pass a YAML or JSON mapping of label to description")
    try:
        text = p.read_text(encoding="utf-8")
        data = json.loads(text) if p.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise InvalidDataError(
            f"{p}: cannot parse ({exc}); it must be a YAML/JSON mapping label -> description"
        ) from exc
    if not isinstance(data, dict):
        raise InvalidDataError(f"{p}: expected a mapping label -> description, got {type(data).__name__}")
    out: dict[str, str] = {}
    for label, desc in data.items():
        if not isinstance(desc, str) or not desc.strip():
            raise InvalidDataError(f"{p}: description of {label!r} must be a non-empty string")
        if not str(label).strip():
            raise InvalidDataError(f"{p}: empty label name")
        out[str(label).strip()] = desc.strip()
    return out
