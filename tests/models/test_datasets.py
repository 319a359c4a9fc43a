"""Datasets: the real shared files, the k-shot sampler and seed-file reading with file:line errors."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from driftlabel.models.datasets import (
    Dataset,
    default_data_dir,
    k_shot_indices,
    load_banking77,
    load_clinc150,
    load_dataset,
    load_onet,
    read_descriptions,
    read_examples,
    sample_k_shot,
)
from driftlabel.models.errors import InvalidDataError


@pytest.fixture(scope="module")
def onet(data_dir: Path) -> Dataset:
    return load_onet(data_dir)


# -- shared data -------------------------------------------------------------------------------------
def test_default_data_dir_honours_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DRIFTLABEL_DATA_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path
    with pytest.raises(InvalidDataError, match="DRIFTLABEL_DATA_DIR"):
        load_clinc150()


def test_default_data_dir_finds_the_shared_folder(monkeypatch: pytest.MonkeyPatch, data_dir: Path) -> None:
    monkeypatch.delenv("DRIFTLABEL_DATA_DIR", raising=False)
    assert (default_data_dir() / "clinc150" / "data_full.json").is_file()


def test_clinc150(data_dir: Path) -> None:
    ds = load_clinc150(data_dir)
    assert len(ds.labels) == 150
    sizes = {s: len(ds.split(s)) for s in ("train", "val", "test", "oos_train", "oos_val", "oos_test")}
    assert sizes == {
        "train": 15000,
        "val": 3000,
        "test": 4500,
        "oos_train": 100,
        "oos_val": 100,
        "oos_test": 1000,
    }
    assert set(Counter(ds.test.labels).values()) == {30}
    assert set(ds.oos_test.labels) == {"oos"}
    texts, labels = ds.train  # a split unpacks as (texts, labels)
    assert isinstance(texts[0], str) and labels[0] in ds.labels


def test_banking77(data_dir: Path) -> None:
    ds = load_banking77(data_dir)
    assert (len(ds.train), len(ds.test), len(ds.labels)) == (10003, 3080, 77)
    assert set(ds.labels) == set(json.loads((data_dir / "banking77" / "categories.json").read_text()))
    assert len(ds.val) == 0 and len(ds.oos_test) == 0


def test_onet_split_is_per_occupation_and_deterministic(onet: Dataset, data_dir: Path) -> None:
    assert len(onet.labels) == 923
    assert len(onet.train) + len(onet.test) == 18796
    assert set(onet.test.labels) == set(onet.train.labels)  # every occupation on both sides
    again = load_onet(data_dir)
    assert again.test.texts == onet.test.texts
    other = load_onet(data_dir, seed=1)
    assert other.test.texts != onet.test.texts
    tr, te = Counter(onet.train.labels), Counter(onet.test.labels)
    assert all(te[k] == max(1, round((tr[k] + te[k]) * 0.25)) for k in tr)


def test_load_dataset_by_name(data_dir: Path) -> None:
    assert load_dataset("banking77", data_dir).name == "banking77"
    with pytest.raises(InvalidDataError, match="unknown dataset"):
        load_dataset("imagenet", data_dir)


# -- k-shot ------------------------------------------------------------------------------------------
def test_k_shot_caps_each_label_and_is_seeded() -> None:
    labels = ["a"] * 20 + ["b"] * 3 + ["c"] * 12
    idx = k_shot_indices(labels, 5, seed=0)
    picked = Counter(labels[i] for i in idx)
    assert picked == {"a": 5, "b": 3, "c": 5}
    assert np.all(np.diff(idx) > 0)  # sorted, no repeats
    np.testing.assert_array_equal(idx, k_shot_indices(labels, 5, seed=0))
    assert not np.array_equal(idx, k_shot_indices(labels, 5, seed=1))
    np.testing.assert_array_equal(k_shot_indices(labels, None), np.arange(len(labels)))
    with pytest.raises(ValueError):
        k_shot_indices(labels, 0)


def test_dataset_k_shot(data_dir: Path) -> None:
    ds = load_clinc150(data_dir).k_shot(10, seed=3)
    assert len(ds.train) == 1500 and set(Counter(ds.train.labels).values()) == {10}
    assert len(ds.test) == 4500  # only train is cut
    texts, labels = sample_k_shot(*load_clinc150(data_dir).train, k=10, seed=3)
    assert texts == ds.train.texts and labels == ds.train.labels


# -- seed files --------------------------------------------------------------------------------------
def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_read_examples_csv_and_jsonl(tmp_path: Path) -> None:
    csv_file = _write(tmp_path, "s.csv", '\ufefftext,label\n"hi, there",greet\n  bye  ,farewell\n')
    assert read_examples(csv_file) == (["hi, there", "bye"], ["greet", "farewell"])
    jl = _write(
        tmp_path, "s.jsonl", '{"text": "hi", "label": "greet"}\n\n{"text": "bye", "label": "farewell"}\n'
    )
    assert read_examples(jl) == (["hi", "bye"], ["greet", "farewell"])
    other = _write(tmp_path, "b.csv", "text,category\nhi,greet\n")
    assert read_examples(other, label_column="category") == (["hi"], ["greet"])


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("a.csv", "text,intent\nhi,greet\n", r"a\.csv:1: missing column\(s\) 'label'"),
        ("b.csv", "text,label\nhi,greet\n   ,greet\n", r"b\.csv:3: empty 'text'"),
        ("c.csv", "text,label\nhi,greet\nbye,\n", r"c\.csv:3: empty 'label'"),
        ("d.csv", "text,label\nhi,greet,extra\n", r"d\.csv:2: expected 2 fields"),
        ("e.csv", "text,label\n", "no examples"),
        ("f.jsonl", '{"text": "hi", "label": "x"}\n{"text": "hi"\n', r"f\.jsonl:2: not valid JSON"),
        ("g.jsonl", '{"text": "hi"}\n', r"g\.jsonl:1: missing column 'label'"),
        ("h.jsonl", '["hi", "x"]\n', r"h\.jsonl:1: expected a JSON object"),
        ("i.xlsx", "whatever", "unknown format"),
    ],
)
def test_read_examples_errors_say_where(tmp_path: Path, name: str, content: str, match: str) -> None:
    with pytest.raises(InvalidDataError, match=match):
        read_examples(_write(tmp_path, name, content))


def test_read_examples_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidDataError, match="no such file"):
        read_examples(tmp_path / "nope.csv")


def test_read_descriptions(tmp_path: Path) -> None:
    y = _write(tmp_path, "d.yaml", "greet: the user says hello\nfarewell: >\n  the user leaves\n")
    assert read_descriptions(y) == {"greet": "the user says hello", "farewell": "the user leaves"}
    j = _write(tmp_path, "d.json", '{"greet": "hello"}')
    assert read_descriptions(j) == {"greet": "hello"}
    for bad, match in [
        ("- a\n- b\n", "expected a mapping"),
        ("greet: ''\n", "non-empty"),
        ("a: [\n", "cannot parse"),
    ]:
        with pytest.raises(InvalidDataError, match=match):
            read_descriptions(_write(tmp_path, "bad.yaml", bad))
    with pytest.raises(InvalidDataError, match="no such file"):
        read_descriptions(tmp_path / "missing.yaml")
