"""``bench_judge_formats`` end to end on a labelled file of one's own, against the simulated expert over
real HTTP: every format asks the same requests, and a judge that never errs makes every accepted label
right, one question per call or four."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from driftlabel.bench import bench_judge_formats
from driftlabel.judge import SimulatedExpert
from driftlabel.models.datasets import load_dataset


def test_formats_on_your_own_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train = load_dataset("clinc150").split("train")
    keep = sorted(set(train.labels))[:6]
    rows = [(t, lab) for t, lab in zip(train.texts, train.labels, strict=True) if lab in keep]
    rows = [r for lab in keep for r in [r for r in rows if r[1] == lab][:20]]  # 20 texts per label
    data = tmp_path / "mine.csv"
    with data.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)
    sim = SimulatedExpert(dict(rows)).start_in_thread()
    try:
        code = bench_judge_formats.main(
            ["--base-url", sim.base_url, "--model", "simulated-expert", "--data", str(data), "--items", "8",
             "--formats", "validate:1", "validate:4", "choose:4", "--out-dir", str(tmp_path), "--name", "f"]
        )  # fmt: skip
    finally:
        sim.stop()
    assert code == 0
    report = (tmp_path / "f.md").read_text(encoding="utf-8")
    assert (tmp_path / "f.png").is_file() and "`mine.csv`" in report
    assert "least-margin of 60 `mine.csv` texts" in report  # 120 texts, 10 seeds for each of 6 labels
    lines = [ln for ln in report.splitlines() if ln.startswith(("| validate", "| choose"))]
    assert [ln.split("|")[1].strip() for ln in lines] == ["validate:1", "validate:4", "choose:4"]
    for ln in lines:
        cells = [c.strip() for c in ln.split("|")[1:-1]]
        accepted, right = int(cells[2]), cells[3]
        assert accepted > 0 and right.startswith(f"{accepted} (100.0 %)")
    calls = {ln.split("|")[1].strip(): int(ln.split("|")[2]) for ln in lines}
    assert calls["validate:4"] < calls["validate:1"]  # four questions share a call
    capsys.readouterr()
    down = [
        "--base-url",
        "http://127.0.0.1:9/v1",
        "--data",
        str(data),
        "--items",
        "4",
        "--out-dir",
        str(tmp_path),
    ]
    assert bench_judge_formats.main([*down, "--formats", "validate:1", "--name", "down"]) == 1
    assert "validate:1: the judge failed" in capsys.readouterr().err  # what failed, not a traceback
    with pytest.raises(SystemExit):  # a format that is not question:batch_size is refused up front
        bench_judge_formats.main(["--base-url", "http://127.0.0.1:9/v1", "--formats", "maybe:2"])
    assert "expected validate:N or choose:N" in capsys.readouterr().err
