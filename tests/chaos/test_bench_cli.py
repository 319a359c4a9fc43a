"""``driftlabel bench``: the dispatcher lists every benchmark, runs an entry point's ``main(argv)`` in a
child process with the quick or the given arguments, passes its exit code on, and says clearly what to do
when a benchmark module is not there yet. (No benchmark is run here: they take minutes.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from driftlabel.bench import cli
from driftlabel.streams.cli import build_parser, parse_with_passthrough


def test_list_names_every_benchmark() -> None:
    out = subprocess.run([sys.executable, "-m", "driftlabel.streams.cli", "bench", "--list"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    for name in ("models", "embedders", "judge", "stream", "reliability", "loop", "judge-formats"):
        assert name in out.stdout


def test_a_missing_module_fails_with_what_to_do(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(cli.BENCHMARKS, "nothere", cli.Benchmark("driftlabel.bench.bench_nothere", "absent"))
    assert cli.run_benchmark("nothere", quick=True, progress=False) == 2
    err = capsys.readouterr().err
    assert "bench/bench_nothere.py" in err and "main(argv)" in err


@pytest.mark.parametrize("quick", [True, False])
def test_runs_main_with_the_mode_arguments_and_passes_the_exit_code_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], quick: bool
) -> None:
    (tmp_path / "fake_bench.py").write_text(
        "import sys\n"
        "def main(argv):\n"
        "    print('ARGV', ' '.join(argv))\n"
        "    return 3 if '--fail' in argv else 0\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(
        cli.BENCHMARKS, "fake", cli.Benchmark("fake_bench", "a fake", quick=("--q",), full=("--f",))
    )
    assert cli.run_benchmark("fake", quick=quick, progress=False) == 0
    assert ("ARGV --q" if quick else "ARGV --f") in capsys.readouterr().out
    assert cli.run_benchmark("fake", quick=quick, extra=["--fail"], progress=False) == 3
    assert "ARGV --fail" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["bench", "loop", "--", "--quick", "--name", "x"],
        ["bench", "loop", "--no-progress", "--", "--quick", "--name", "x"],  # argparse alone drops these
        ["bench", "--no-progress", "loop", "--", "--quick", "--name", "x"],
    ],
)
def test_arguments_after_double_dash_reach_the_benchmark(argv: list[str]) -> None:
    args = parse_with_passthrough(build_parser(), argv)
    assert (args.name, args.args) == ("loop", ["--quick", "--name", "x"])


def test_a_command_without_own_arguments_refuses_them(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_with_passthrough(build_parser(), ["demo", "--", "--limit", "5"])
    assert "unrecognized arguments after --: --limit 5" in capsys.readouterr().err


def test_all_leaves_out_a_benchmark_that_needs_what_only_the_user_has(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "fake_bench.py").write_text("def main(argv):\n    print('RAN')\n    return 0\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.syspath_prepend(str(tmp_path))
    endpoint = cli.Benchmark("fake_bench", "needs an endpoint", not_in_all="it needs a real LLM endpoint")
    monkeypatch.setattr(cli, "BENCHMARKS", {"plain": cli.Benchmark("fake_bench", "a fake"), "llm": endpoint})
    assert cli.main(["all", "--quick", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.count("RAN") == 1 and "skipping llm (it needs a real LLM endpoint)" in out


def test_the_reliability_report_renders_the_broker_stall_section() -> None:
    """The stall section's figures (from a run's saved state) land in the report and its summary."""
    from driftlabel.bench import bench_reliability as br

    run = {"stall_s": 45.0, "texts": 600, "lost": 0, "duplicated": 0, "dup_training": 0,
           "accepted_without_verdict": 0, "dead_letters": 0, "exits": [70], "next_final_after_resume_s": 1.5,
           "drain_s": 60.0}  # fmt: skip
    text = br.render(
        {"stall": {"runs": [run], "lost": 0, "duplicated": 0, "texts": 600}, "meta": {"stall": "x"}}
    )
    assert "## The broker stalls (x)" in text
    assert "| 45 | 600 | 0 | 0 | 0 | 0 | 0 | 70 | 1.5 | 60.0 |" in text
    assert "| texts streamed (all sections) | 600 |" in text
