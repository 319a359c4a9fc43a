"""``driftlabel train`` / ``driftlabel classify``, run in-process through the real console entry point."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from driftlabel.models import ExpertSettings, embeddings
from driftlabel.models.embeddings import EmbedderSettings
from driftlabel.streams.cli import main

SEEDS = [
    ("book a flight to boston", "book_flight"),
    ("i need a plane ticket to denver", "book_flight"),
    ("get me on a flight to new york next friday", "book_flight"),
    ("what's the weather tomorrow", "weather"),
    ("will it rain this weekend", "weather"),
    ("is it going to be sunny in the morning", "weather"),
    ("how much is in my checking account", "balance"),
    ("what is my current bank balance", "balance"),
    ("tell me how much money i have", "balance"),
]


def _seeds(tmp_path: Path, rows: list[tuple[str, str]] = SEEDS, header: str = "text,label") -> Path:
    p = tmp_path / "seeds.csv"
    p.write_text(header + "\n" + "".join(f'"{t}",{lab}\n' for t, lab in rows), encoding="utf-8")
    return p


def _err(capsys: pytest.CaptureFixture[str]) -> str:
    return capsys.readouterr().err


def test_train_missing_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _seeds(tmp_path, header="text,intent")
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "m")]) == 2
    err = _err(capsys)
    assert "seeds.csv:1: missing column(s) 'label'" in err and "--label-column" in err


def test_train_empty_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _seeds(tmp_path, [*SEEDS[:2], ("  ", "weather")])
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "m")]) == 2
    assert "seeds.csv:4: empty 'text'" in _err(capsys)


def test_train_label_without_examples(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    desc = tmp_path / "labels.yaml"
    desc.write_text("weather: questions about the weather\ncancel: the user cancels an order\n")
    args = [
        "train",
        "--data",
        str(_seeds(tmp_path)),
        "--descriptions",
        str(desc),
        "--out",
        str(tmp_path / "m"),
    ]
    assert main(args) == 2
    err = _err(capsys)
    assert "'cancel'" in err and "no examples" in err and "add examples" in err


def test_train_refuses_non_empty_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    assert main(["train", "--data", str(_seeds(tmp_path)), "--out", str(out)]) == 2
    assert "--force" in _err(capsys)
    assert (out / "precious.txt").read_text() == "keep me"


def test_train_force_refuses_a_folder_that_is_not_a_model_before_embedding(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--force replaces a driftlabel model only; any other folder is refused before the embedder loads."""
    out = tmp_path / "m"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")

    def no_embedding(*args: object, **kwargs: object) -> None:
        raise AssertionError("embedded before refusing --out")

    monkeypatch.setattr(embeddings, "load_embedder", no_embedding)
    assert main(["train", "--data", str(_seeds(tmp_path)), "--out", str(out), "--force"]) == 2
    assert "--force only replaces a driftlabel model directory" in _err(capsys)
    assert (out / "precious.txt").read_text() == "keep me"


def test_train_help_states_the_real_defaults(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert f"DRIFTLABEL_EXPERTS_SUBSET_SIZE or {ExpertSettings.model_fields['subset_size'].default})" in out
    assert f"DRIFTLABEL_EMBEDDER_KIND or {EmbedderSettings.model_fields['kind'].default};" in out


def test_the_interfaces_page_states_the_real_defaults() -> None:
    page = Path(__file__).parents[2] / "docs" / "interfaces.md"
    text = " ".join(page.read_text(encoding="utf-8").split())
    fields = ExpertSettings.model_fields
    for name in ("subset_size", "noise_ratio", "seed"):
        assert f"`{name}={fields[name].default}`" in text, name
    assert f'`kind` (`"{EmbedderSettings.model_fields["kind"].default}"` default' in text


def test_classify_missing_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["classify", "--model", str(tmp_path / "none"), "hello"]) == 2
    assert "does not exist" in (err := _err(capsys)) and "driftlabel train" in err


def test_classify_not_a_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["classify", "--model", str(tmp_path), "hello"]) == 2
    assert "not a driftlabel model" in _err(capsys)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model trained through the CLI with the real packaged MiniLM."""
    tmp = tmp_path_factory.mktemp("cli")
    desc = tmp / "labels.yaml"
    desc.write_text("book_flight: the user wants to book an airline flight\n")
    out = tmp / "model"
    rc = main(["train", "--data", str(_seeds(tmp)), "--descriptions", str(desc), "--out", str(out)])
    assert rc == 0
    return out


@pytest.mark.slow
def test_train_writes_a_model_and_a_summary(trained: Path) -> None:
    assert (trained / "manifest.json").is_file()


@pytest.mark.slow
def test_classify_prints_one_json_line_per_text(
    trained: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("is it going to snow tomorrow\n\nwhat's my balance\n"))
    capsys.readouterr()
    rc = main(["classify", "--model", str(trained), "--top-k", "2", "fly me to chicago", "-"])
    assert rc == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in rows] == [
        "fly me to chicago",
        "is it going to snow tomorrow",
        "what's my balance",
    ]
    assert [r["label"] for r in rows] == ["book_flight", "weather", "balance"]
    for r in rows:
        assert set(r) >= {"label", "score", "candidates", "entropy", "margin", "out_of_scope"}
        assert len(r["candidates"]) == 2 and r["candidates"][0][0] == r["label"]
        assert 0.0 < r["score"] <= 1.0 and r["margin"] >= 0.0 and r["entropy"] >= 0.0


@pytest.mark.slow
def test_classify_refuses_empty_text(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["classify", "--model", str(trained), "fine", " "]) == 2
    assert "text #2 is empty" in _err(capsys)
