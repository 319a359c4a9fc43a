"""The one labelled-file reader (driftlabel.datafiles) behind models.read_examples and judge.read_labelled."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from driftlabel.datafiles import DataFileError, read_labelled, read_rows
from driftlabel.judge import JudgeDataError
from driftlabel.judge import read_labelled as judge_read_labelled
from driftlabel.models.datasets import read_examples
from driftlabel.models.errors import InvalidDataError


def _files(tmp_path: Path) -> list[Path]:
    (tmp_path / "a.csv").write_text('\ufefftext,label\n"hi, there",greet\n  bye  ,farewell\n')
    (tmp_path / "a.tsv").write_text("text\tlabel\nhi, there\tgreet\nbye\tfarewell\n")
    (tmp_path / "a.jsonl").write_text(
        '{"text": "hi, there", "label": "greet"}\n\n{"text": "bye", "label": "farewell"}\n'
    )
    (tmp_path / "a.json").write_text(
        json.dumps({"train": [["hi, there", "greet"]], "test": [["bye", "farewell"]]})
    )
    return [tmp_path / n for n in ("a.csv", "a.tsv", "a.jsonl", "a.json")]


def test_both_public_readers_give_the_same_rows(tmp_path: Path) -> None:
    want = [("hi, there", "greet"), ("bye", "farewell")]
    for path in _files(tmp_path):
        assert read_labelled(path) == want, path
        assert judge_read_labelled(path) == want, path
        texts, labels = read_examples(path)
        assert list(zip(texts, labels, strict=True)) == want, path


def test_splits_are_kept_and_selectable(tmp_path: Path) -> None:
    path = _files(tmp_path)[3]
    assert [(r.label, r.split) for r in read_rows(path)] == [("greet", "train"), ("farewell", "test")]
    assert read_labelled(path, splits={"test"}) == [("bye", "farewell")]
    with pytest.raises(DataFileError, match="no examples in splits"):
        read_rows(path, splits={"val"})


def test_one_error_type_each_branch_and_where(tmp_path: Path) -> None:
    bad = tmp_path / "b.jsonl"
    bad.write_text('{"text": "x", "label": "y"}\n{"text": "x"\n')
    with pytest.raises(DataFileError, match=r"b\.jsonl:2: not valid JSON"):
        read_labelled(bad)
    with pytest.raises(JudgeDataError, match=r"b\.jsonl:2"):
        judge_read_labelled(bad)
    with pytest.raises(InvalidDataError, match=r"b\.jsonl:2"):
        read_examples(bad)
    # the judge accepts BANKING77's "category" column; the models ask for the column by name
    cat = tmp_path / "c.csv"
    cat.write_text("text,category\nhi,greet\n")
    assert judge_read_labelled(cat) == [("hi", "greet")]
    assert read_examples(cat, label_column="category") == (["hi"], ["greet"])
    with pytest.raises(InvalidDataError, match=r"missing column\(s\) 'label'"):
        read_examples(cat)


def test_real_banking77_and_clinc150_files(data_dir: Path) -> None:
    rows = judge_read_labelled(data_dir / "banking77" / "test.csv")
    assert len(rows) == 3080 and len({lab for _, lab in rows}) == 77
    clinc = read_rows(data_dir / "clinc150" / "data_full.json")
    assert {r.split for r in clinc} >= {"train", "val", "test", "oos_test"}
    assert sum(r.split == "test" for r in clinc) == 4500


def test_simulated_expert_imports_no_numpy() -> None:
    code = (
        "import sys, driftlabel.judge.simulated, driftlabel.judge.cli, driftlabel.datafiles;"
        "bad = [m for m in ('numpy', 'torch', 'driftlabel.models') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
