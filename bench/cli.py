"""``driftlabel bench NAME [--quick] [-- ARGS...]``: one command for every benchmark.

Each benchmark is a module ``driftlabel.bench.bench_<name>`` (the file ``bench/bench_<name>.py``) with a
``main(argv) -> int`` entry point; this dispatcher runs it in a child process (so a benchmark's signal
handlers, ``sys.exit`` and memory stay its own), streams its output above a progress bar (elapsed time
against the expected duration, with the benchmark's latest status line) and lists the reports it wrote
under ``bench/results/``. ``--quick`` passes a reduced argument list meant to finish in under 5 minutes
on 2 cores; anything after ``--`` is passed to the benchmark unchanged (and replaces the quick/full
defaults). Adding a benchmark is one entry in :data:`BENCHMARKS`.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["BENCHMARKS", "Benchmark", "main", "register", "run_benchmark"]

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: its module, its quick and full arguments and how long each mode usually takes."""

    module: str
    help: str
    quick: tuple[str, ...] = ("--quick",)
    full: tuple[str, ...] = ()
    quick_s: float = 240.0  # expected wall time on 2 quiet cores: the progress bar's total
    full_s: float = 1800.0
    #: for a benchmark that can only write its full report: the quick run's output (markdown) is saved
    #: here instead (under bench/results/), so a quick run never overwrites the full figures
    quick_report: str | None = None
    #: why ``driftlabel bench all`` leaves this one out (it needs something only the user has), or None
    not_in_all: str | None = None

    def argv(self, quick: bool, extra: Sequence[str]) -> list[str]:
        """Extra arguments replace the mode's defaults, so a user can narrow a run exactly."""
        if extra:
            return list(extra)
        return list(self.quick if quick else self.full)


EMBEDDERS_QUICK: tuple[str, ...] = ("--kinds", "sentence-transformers", "static", "--repeats", "1")
EMBEDDERS_QUICK += ("--speed-texts", "256", "--batches", "1", "8", "32", "128", "--no-accuracy")

#: ``driftlabel bench stream``: issue 9's benchmark at full size. The judge budget is set in calls per
#: streamed text (0.10, every recursive call counted; the share only caps it), the embedder is the
#: service's default (int8 ONNX MiniLM), 60 texts/s; judge error 0 / 5 / 15 % on the stationary stream,
#: 5 % elsewhere; the baselines (no judge, random routing, subsets of 8, the judge on every text) on the
#: stationary stream at 5 %, and the full-data LogisticRegression ceiling on the same vectors.
STREAM_FULL: tuple[str, ...] = (
    "--embedder", "onnx", "--datasets", "clinc150", "banking77", "onet", "--errors", "0", "0.05", "0.15",
    "--error-scenarios", "stationary", "--methods", "red", "seeds", "random", "subsets", "every",
    "--judge-share", "0.5", "--judge-calls", "0.10", "--rate", "60", "--name", "service",
)  # fmt: skip

#: name -> benchmark; ``driftlabel bench NAME`` runs ``BENCHMARKS[NAME]``.
BENCHMARKS: dict[str, Benchmark] = {
    "models": Benchmark(
        "driftlabel.bench.bench_models",
        "R.E.D. experts vs LogisticRegression: accuracy by k, out-of-scope, speed (bench/results/models.md)",
        quick=(
            "--datasets",
            "clinc150",
            "--k",
            "10",
            "--variants",
            "red",
            "sklearn",
            "--repeats",
            "1",
            "--skip",
            "speed",
            "--no-report",
        ),
        quick_report="models_quick.md",
        quick_s=180,
        full_s=1500,
    ),
    "embedders": Benchmark(
        "driftlabel.bench.bench_embedders",
        "MiniLM vs int8 ONNX vs distilled static: texts/s and accuracy (bench/results/embedders.md)",
        quick=EMBEDDERS_QUICK,
        quick_s=150,
        full_s=900,
    ),
    "judge": Benchmark(
        "driftlabel.bench.bench_judge",
        "judge verdicts/s vs concurrency against a 300 ms simulated expert (bench/results/judge.md)",
        quick=(
            "--concurrency",
            "8",
            "16",
            "64",
            "--items",
            "200",
            "--out",
            str(RESULTS_DIR / "judge_quick.md"),
        ),
        quick_s=60,
        full_s=240,
    ),
    "latency": Benchmark(
        "driftlabel.bench.bench_stream",
        "service texts/s vs the embedder alone, publish->label latency (bench/results/stream.md)",
        quick=(
            "--texts",
            "600",
            "--classes",
            "30",
            "--rounds",
            "1",
            "--latency-s",
            "10",
            "--out",
            str(RESULTS_DIR / "stream_quick.md"),
        ),
        quick_s=200,
        full_s=900,
    ),
    "reliability": Benchmark(
        "driftlabel.bench.bench_reliability",
        "chaos: kill -9, worker loss, judge faults, fuzzed input, soak (bench/results/reliability.md)",
        quick_s=300,
        full_s=3600,
    ),
    "loop": Benchmark(
        "driftlabel.bench.bench_loop",
        "the learning loop on real data: stationary, class-incremental and shift scenarios",
        quick_s=280,
        full_s=3600,
    ),
    "ceiling": Benchmark(
        "driftlabel.bench.bench_ceiling",
        "what a stream can reach at a judge budget: true labels, margin selection (results/ceiling.md)",
        quick_s=200,
        full_s=1500,
    ),
    "stream": Benchmark(
        "driftlabel.bench.bench_service",
        "the learning loop through the real service (broker, worker, simulated judge): CLINC150, "
        "BANKING77, O*NET; stationary, class-incremental, shift; 0/5/15 % judge error; baselines "
        "(results/service.md)",
        full=STREAM_FULL,
        quick_s=120,  # 93 s measured on 7 December
        full_s=7200,  # 6,797 s measured on 7 December
    ),
    "judge-formats": Benchmark(
        "driftlabel.bench.bench_judge_formats",
        "one question per call vs several, asked of a REAL LLM endpoint (-- --base-url URL --model M "
        "[--data yours.csv], or -- --gguf FILE): check before turning judge.batch_size on "
        "(results/judge_formats.md)",
        quick=("--items", "16"),
        quick_s=600,  # a 1.5B model on 2 CPU cores; an API endpoint takes seconds
        full_s=2400,
        not_in_all="it needs a real LLM endpoint: driftlabel bench judge-formats -- --base-url URL --model M",
    ),
    "scale": Benchmark(
        "driftlabel.bench.bench_scale",
        "scale in classes: O*NET vs LogisticRegression, synthetic 150..5,000 labels (results/scale.md)",
        quick_s=280,
        full_s=2400,
    ),
}

# run in the child: import the module and call its main(argv); a missing main is a clear error
_RUNNER = """
import importlib, inspect, sys
mod = importlib.import_module(sys.argv[1])
main = getattr(mod, "main", None)
if main is None:
    sys.exit(f"{sys.argv[1]} has no main(argv) entry point")
argv = sys.argv[2:]
if inspect.signature(main).parameters:
    code = main(argv)
else:  # an entry point that reads sys.argv itself
    sys.argv = [mod.__file__ or sys.argv[1], *argv]
    code = main()
sys.exit(int(code or 0))
"""


class _Progress:
    """A tqdm bar of elapsed seconds against the expected duration, captioned with the latest line.

    Without a terminal (CI, a log file) it prints a plain ``[bench NAME] 60s of ~240s`` line every 30 s
    instead, so logs stay readable.
    """

    def __init__(self, name: str, total_s: float, enabled: bool) -> None:
        self.name = name
        self.total_s = total_s
        self._bar: Any = None
        self._t0 = time.monotonic()
        self._stop = threading.Event()
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(
                total=round(total_s), unit="s", desc=f"bench {name}", file=sys.stderr, leave=True,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/~{total:.0f}s {postfix}",
            )  # fmt: skip
        self._thread = threading.Thread(target=self._tick, daemon=True)
        self._thread.start()

    def _tick(self) -> None:
        beat = 0
        while not self._stop.wait(1.0):
            if self._bar is not None:
                self._update()
                continue
            beat += 1
            if beat % 30 == 0:
                elapsed = time.monotonic() - self._t0
                sys.stderr.write(f"[bench {self.name}] {elapsed:.0f}s of ~{self.total_s:.0f}s\n")
                sys.stderr.flush()

    def _update(self) -> None:
        elapsed = time.monotonic() - self._t0
        if elapsed > self._bar.total:  # ran past the estimate: grow the bar rather than sit at 100 %
            self._bar.total = round(elapsed * 1.1)
        self._bar.n = round(elapsed)
        self._bar.refresh()

    def line(self, text: str) -> None:
        if self._bar is None:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()
            return
        self._bar.write(text, file=sys.stdout)
        caption = text.strip()
        if caption:
            self._bar.set_postfix_str(caption[:60], refresh=True)

    def close(self) -> None:
        self._stop.set()
        if self._bar is not None:
            self._update()
            self._bar.close()


def _module_available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def run_benchmark(name: str, *, quick: bool, extra: Sequence[str] = (), progress: bool = True) -> int:
    """Run one benchmark in a child process; returns its exit code (2 when it cannot be started)."""
    bench = BENCHMARKS[name]
    if not _module_available(bench.module):
        print(
            f"driftlabel bench {name}: the module {bench.module} is not there yet "
            f"(expected at bench/{bench.module.rsplit('.', 1)[-1]}.py with a main(argv) entry point); "
            "add it, or run `pip install -e '.[dev]'` if bench/ is not installed as driftlabel.bench",
            file=sys.stderr,
        )
        return 2
    argv = bench.argv(quick, extra)
    cmd = [sys.executable, "-u", "-c", _RUNNER, bench.module, *argv]
    mode = "quick" if quick else "full"
    print(f"driftlabel bench {name} ({mode}): {bench.module} {' '.join(argv)}".rstrip(), flush=True)
    started = time.time()
    bar = _Progress(name, bench.quick_s if quick else bench.full_s, progress)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
        text=True, errors="replace", bufsize=1,
    )  # fmt: skip
    captured: list[str] = []
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)  # a killed dispatcher stops its child too
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip("\n")
            captured.append(line)
            bar.line(line)
        code = proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGTERM)  # the benchmarks clean up (broker, workers) on SIGTERM
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        code = 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        bar.close()
    took = time.time() - started
    if quick and bench.quick_report and code == 0 and not extra:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        (RESULTS_DIR / bench.quick_report).write_text(
            f"# {name} (quick)\n\n_`driftlabel bench {name} --quick` = `{bench.module} {' '.join(argv)}`; "
            f"{stamp}; {took:.0f} s; load average {load} (machine shared)_\n\n" + "\n".join(captured) + "\n",
            encoding="utf-8",
        )
    # reports are named after their benchmark (models.md, stream_quick.md, reliability_kill.png, ...);
    # other files touched meanwhile belong to other runs on this shared checkout
    written = sorted(
        p
        for p in (RESULTS_DIR.glob(f"{name}*") if RESULTS_DIR.is_dir() else [])
        if p.is_file() and p.stat().st_mtime >= started - 1
    )
    status = "ok" if code == 0 else f"failed (exit {code})"
    print(f"driftlabel bench {name}: {status} in {took:.0f}s", flush=True)
    for p in written:
        print(f"  wrote {p}", flush=True)
    return code


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _run(args: argparse.Namespace) -> int:
    if args.list or not args.name:
        for key, b in BENCHMARKS.items():
            there = "" if _module_available(b.module) else "  [module not there yet]"
            print(f"{key:12s} {b.help}{there}")
        return 0 if args.list else 2
    extra = list(args.args)
    names = list(BENCHMARKS) if args.name == "all" else [args.name]
    if args.name == "all" and extra:
        print("driftlabel bench all: extra arguments apply to one benchmark; name it", file=sys.stderr)
        return 2
    worst = 0
    for n in names:
        if args.name == "all" and BENCHMARKS[n].not_in_all:
            print(f"driftlabel bench all: skipping {n} ({BENCHMARKS[n].not_in_all})")
            continue
        if args.name == "all" and not _module_available(BENCHMARKS[n].module):
            print(f"driftlabel bench all: skipping {n} ({BENCHMARKS[n].module} is not there yet)")
            continue
        progress = not args.no_progress and sys.stderr.isatty()
        code = run_benchmark(n, quick=args.quick, extra=extra, progress=progress)
        worst = worst or code
    return worst


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``bench`` to the ``driftlabel`` command."""
    p = subparsers.add_parser(
        "bench",
        help="run a benchmark (models, embedders, judge, stream, reliability, loop); reports: bench/results/",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", nargs="?", choices=[*BENCHMARKS, "all"], help="which benchmark ('all': each)")
    p.add_argument("--quick", action="store_true", help="reduced sizes: under 5 minutes on 2 cores")
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (plain output)")
    p.add_argument("args", nargs="*", help="after --: the benchmark's own arguments (replace the defaults)")
    p.set_defaults(func=_run)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m driftlabel.bench.cli NAME ...`` without the ``driftlabel`` console script."""
    parser = argparse.ArgumentParser(prog="driftlabel")
    register(parser.add_subparsers(dest="command", required=True))
    from driftlabel.streams.cli import parse_with_passthrough

    args = parse_with_passthrough(parser, ["bench", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
