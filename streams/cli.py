"""The ``driftlabel`` command: one parser, subcommands contributed by each folder.

``models`` adds ``train``/``classify``, ``judge`` adds ``judge-sim``/``describe``, ``streams`` adds the
service commands (``broker``, ``worker``, ``produce``, ``consume``, ``add-class``, ``demo``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from driftlabel import __version__
from driftlabel.errors import DriftlabelError

__all__ = ["build_parser", "main"]


def _register_optional(sub: argparse._SubParsersAction, module: str) -> None:
    """Register one folder's commands; a folder without a ``cli`` module adds none (a partial install)."""
    import importlib

    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        return
    mod.register(sub)


def build_parser() -> argparse.ArgumentParser:
    """Build the full parser; each folder registers its own subcommands."""
    from driftlabel.streams import commands as stream_commands

    parser = argparse.ArgumentParser(
        prog="driftlabel",
        description="Streaming text classification for drifting data (R.E.D.).",
    )
    parser.add_argument("--version", action="version", version=f"driftlabel {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    stream_commands.register(sub)
    _register_optional(sub, "driftlabel.models.cli")
    _register_optional(sub, "driftlabel.judge.cli")
    _register_optional(sub, "driftlabel.bench.cli")
    return parser


def parse_with_passthrough(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """Parse ``argv``; everything after the first ``--`` goes to ``args.args`` untouched (a command's own
    arguments, e.g. ``driftlabel bench loop --no-progress -- --datasets clinc150``). argparse alone drops
    them when an option sits between a positional and the ``--``; a command without ``args`` refuses them.
    """
    argv = list(argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:cut])
    tail = argv[cut + 1 :]
    if tail:
        if not isinstance(getattr(args, "args", None), list):
            parser.error(f"unrecognized arguments after --: {' '.join(tail)}")
        args.args = [*args.args, *tail]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    parser = build_parser()
    args = parse_with_passthrough(parser, sys.argv[1:] if argv is None else argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # aiokafka.conn logs every request at DEBUG, SaslAuthenticate's PLAIN bytes (the password) included
    logging.getLogger("aiokafka.conn").setLevel(max(level, logging.INFO))
    try:
        return int(args.func(args) or 0)
    except DriftlabelError as exc:
        print(f"driftlabel {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"driftlabel {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
