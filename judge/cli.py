"""Judge subcommands for the ``driftlabel`` CLI: ``judge-sim`` (the simulated expert) and ``describe``.

``register(subparsers)`` is called by ``driftlabel.streams.cli``; ``python -m driftlabel.judge.cli`` runs
the same subcommands on their own (handy when only the judge is installed, and for the benchmarks).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Sequence

from driftlabel.errors import DriftlabelError
from driftlabel.judge.data import examples_by_label, read_labelled
from driftlabel.judge.descriptions import generate_descriptions, load_descriptions, save_descriptions
from driftlabel.judge.judge import Judge
from driftlabel.judge.settings import load_judge_settings
from driftlabel.judge.simulated import DEFAULT_HOLDOUT_SPLITS, FAILURE_KINDS, SimulatedExpert

__all__ = ["main", "register"]

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``judge-sim`` and ``describe`` to the ``driftlabel`` parser."""
    sim = subparsers.add_parser(
        "judge-sim",
        help="serve the simulated expert (an offline OpenAI-compatible stand-in for the LLM judge)",
        description="Serve an OpenAI-compatible /v1/chat/completions endpoint that answers the judge's "
        "validation prompts from a labelled file. It is a stand-in for an LLM, for demos, benchmarks and "
        "reliability tests; point DRIFTLABEL_JUDGE_BASE_URL at the printed URL.",
    )
    sim.add_argument("--data", required=True, help="labelled file: CLINC150 data_full.json, CSV or JSONL")
    sim.add_argument("--host", default="127.0.0.1", help="bind address (default loopback)")
    sim.add_argument("--port", type=int, default=8089, help="port (0 = any free port)")
    sim.add_argument("--model", default="simulated-expert", help="model name it reports")
    sim.add_argument("--error-rate", type=float, default=0.0, help="share of wrong verdicts (0..1)")
    sim.add_argument("--latency-ms", type=float, default=0.0, help="delay added to every answer")
    sim.add_argument("--latency-jitter-ms", type=float, default=0.0, help="extra random delay, 0..this")
    sim.add_argument("--fail-rate", type=float, default=0.0, help="share of requests that fail (0..1)")
    sim.add_argument(
        "--failures",
        default="500,429,timeout,garbage",
        help=f"comma-separated failure kinds to draw from ({', '.join(FAILURE_KINDS)})",
    )
    sim.add_argument("--hang-s", type=float, default=30.0, help="how long a 'timeout' failure hangs")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument(
        "--holdout-splits",
        default=",".join(DEFAULT_HOLDOUT_SPLITS),
        help="splits of a CLINC150-style file never handed out as generated examples "
        "(comma-separated; '' for none; default %(default)s)",
    )
    sim.add_argument(
        "--holdout",
        default=None,
        help="labelled file (CSV/JSONL/JSON) whose texts are never handed out as generated examples",
    )
    sim.set_defaults(func=_run_sim)

    desc = subparsers.add_parser(
        "describe",
        help="generate missing label descriptions with the judge's LLM into an editable YAML/JSON file",
        description="For every label in --data without a description in --out, ask the judge endpoint "
        "(DRIFTLABEL_JUDGE_* settings) for one from the label name and examples, and save the file. "
        "Descriptions already in the file are kept unless --overwrite.",
    )
    desc.add_argument(
        "--data", required=True, help="labelled examples: CLINC150 data_full.json, CSV or JSONL"
    )
    desc.add_argument("--out", required=True, help="descriptions file to read and update (.yaml or .json)")
    desc.add_argument("--labels", default=None, help="comma-separated labels to describe (default: all)")
    desc.add_argument("--examples", type=int, default=10, help="examples shown per label")
    desc.add_argument("--overwrite", action="store_true", help="regenerate descriptions already in the file")
    desc.add_argument("--config", default=None, help="config file with a [judge] section")
    desc.set_defaults(func=_run_describe)


def _run_sim(args: argparse.Namespace) -> int:
    failures = [k.strip() for k in args.failures.split(",") if k.strip()]
    sim = SimulatedExpert(
        args.data,
        host=args.host,
        port=args.port,
        model=args.model,
        error_rate=args.error_rate,
        latency_ms=args.latency_ms,
        latency_jitter_ms=args.latency_jitter_ms,
        fail_rate=args.fail_rate,
        failures=failures,
        hang_s=args.hang_s,
        seed=args.seed,
        holdout_splits=[x.strip() for x in args.holdout_splits.split(",") if x.strip()],
        holdout=[text for text, _ in read_labelled(args.holdout)] if args.holdout else (),
    )

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with sim:
            print(
                f"simulated expert (stand-in for an LLM) serving {sim.n_texts} texts at {sim.base_url} "
                f"model={sim.model} error_rate={sim.error_rate} latency_ms={sim.latency_ms} "
                f"fail_rate={sim.fail_rate}",
                flush=True,
            )
            await stop.wait()
        print(f"simulated expert stopped; counts {json.dumps(dict(sim.counts))}", flush=True)

    asyncio.run(serve())
    return 0


def _run_describe(args: argparse.Namespace) -> int:
    rows = read_labelled(args.data)
    by_label = examples_by_label(rows, per_label=args.examples)
    if args.labels:
        wanted = [x.strip() for x in args.labels.split(",") if x.strip()]
        missing = [x for x in wanted if x not in by_label]
        if missing:
            print(f"describe: labels not in {args.data}: {', '.join(missing)}", file=sys.stderr)
            return 2
        by_label = {x: by_label[x] for x in wanted}
    existing = load_descriptions(args.out, missing_ok=True)
    settings = load_judge_settings(args.config)

    async def run() -> int:
        async with Judge(settings) as judge:
            result = await generate_descriptions(judge, by_label, existing, overwrite=args.overwrite)
        save_descriptions(args.out, result.descriptions)
        print(
            f"describe: {len(result.generated)} generated, {len(result.failed)} failed, "
            f"{len(result.descriptions)} in {args.out}"
        )
        for label, err in sorted(result.failed.items()):
            print(f"  failed {label}: {err}", file=sys.stderr)
        return 1 if result.failed else 0

    return asyncio.run(run())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the judge subcommands standalone: ``python -m driftlabel.judge.cli judge-sim --data ...``."""
    parser = argparse.ArgumentParser(prog="driftlabel-judge", description="driftlabel judge commands")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    register(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2))
    try:
        return int(args.func(args) or 0)
    except DriftlabelError as exc:
        print(f"driftlabel {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
