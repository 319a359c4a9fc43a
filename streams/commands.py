"""The service commands of the ``driftlabel`` CLI: broker, worker, produce, consume, add-class, demo.

Each ``register``-ed subcommand sets ``func(args) -> int``. Settings come from ``--config`` (TOML/YAML),
the environment (``DRIFTLABEL_KAFKA_*`` ...) and a few flags for the common cases; ``--print-config``
shows the effective settings with secrets masked.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from driftlabel.config import load_settings
from driftlabel.streams.settings import KafkaSettings, MetricsSettings, StreamSettings

__all__ = ["EMBEDDER_KINDS", "kafka_from_args", "register"]

#: ``--embedder`` choices -> ``EmbedderSettings.kind`` (MiniLM = all-MiniLM-L6-v2 with torch; onnx = its
#: int8 ONNX export; static = a distilled static embedder, ~100x faster and a few points less accurate)
EMBEDDER_KINDS = {"minilm": "sentence-transformers", "onnx": "onnx", "static": "static"}

log = logging.getLogger(__name__)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML/YAML config file (sections [kafka], [stream], ...)")
    p.add_argument("--bootstrap", help="Kafka bootstrap servers host:port[,host:port] (else the config/env)")
    p.add_argument("--topic-prefix", help="prefix of every topic name (default 'driftlabel.')")


def kafka_from_args(args: argparse.Namespace, **extra: Any) -> KafkaSettings:
    over: dict[str, Any] = dict(extra)
    if getattr(args, "bootstrap", None):
        over["bootstrap_servers"] = args.bootstrap
    if getattr(args, "topic_prefix", None) is not None:
        over["topic_prefix"] = args.topic_prefix
    return load_settings(KafkaSettings, getattr(args, "config", None), **over)


def _print_settings(*settings: Any) -> None:
    for s in settings:
        print(f"[{s.section}]")
        for k, v in s.model_dump().items():  # SecretStr dumps as '**********'
            if k == "base_url" and hasattr(s, "endpoint"):
                v = s.endpoint  # a password inside the URL (https://user:pw@host) is masked too
            print(f"{k} = {v!s}")
        print()


# -- broker ----------------------------------------------------------------------------------------------
def cmd_broker(args: argparse.Namespace) -> int:
    from driftlabel.streams.broker import LocalBroker
    from driftlabel.streams.topics import ensure_topics

    broker = LocalBroker(port=args.port, host=args.host, log_path=args.log)
    broker.start()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        kafka = kafka_from_args(args, bootstrap_servers=broker.bootstrap)
        created = ensure_topics(kafka)
        print(f"broker: Tansu (in memory) pid {broker.pid}", flush=True)
        print(f"bootstrap: {broker.bootstrap}", flush=True)
        print(f"topics: {len(created)} created, prefix {kafka.topic_prefix!r}, {kafka.partitions} partitions")
        print(f"export DRIFTLABEL_KAFKA_BOOTSTRAP_SERVERS={broker.bootstrap}")
        print("Ctrl-C stops it (everything is kept in memory and lost when it stops).", flush=True)
        while not stop.wait(0.5):
            if not broker.running():
                print("broker: the broker process exited; see --log", file=sys.stderr)
                return 1
    finally:
        broker.stop()
        print("broker: stopped", flush=True)
    return 0


# -- worker ----------------------------------------------------------------------------------------------
def cmd_worker(args: argparse.Namespace) -> int:
    import faust

    from driftlabel.judge import JudgeSettings
    from driftlabel.models import EmbedderSettings, ExpertSettings, load_embedder
    from driftlabel.streams.allocator import tune_malloc
    from driftlabel.streams.topics import ensure_topics
    from driftlabel.streams.worker import WorkerService

    kafka = kafka_from_args(args)
    stream_over: dict[str, Any] = {}
    if args.checkpoint_dir:
        stream_over["checkpoint_dir"] = args.checkpoint_dir
    stream = load_settings(StreamSettings, args.config, **stream_over)
    metrics_over: dict[str, Any] = {}
    if args.metrics_port is not None:
        metrics_over["port"] = args.metrics_port
    metrics = load_settings(MetricsSettings, args.config, **metrics_over)
    judge_over: dict[str, Any] = {}
    if args.judge_url:
        judge_over["base_url"] = args.judge_url
    judge = load_settings(JudgeSettings, args.config, **judge_over)
    emb_over: dict[str, Any] = {}
    if getattr(args, "embedder", None):
        emb_over["kind"] = EMBEDDER_KINDS[args.embedder]
    emb_settings = load_settings(EmbedderSettings, args.config, **emb_over)
    experts = load_settings(ExpertSettings, args.config)
    if args.print_config:
        _print_settings(kafka, stream, metrics, judge, emb_settings, experts)
        return 0
    # before the embedder allocates; not the mmap threshold under torch (20 % fewer texts/s measured)
    tune_malloc(stream.mmap_threshold_for(emb_settings.kind), stream.malloc_arena_max)
    if kafka.create_topics:
        ensure_topics(kafka)
    print(f"driftlabel worker: loading the embedder ({emb_settings.kind})...", flush=True)
    embedder = load_embedder(emb_settings)
    embedder.warmup()
    service = WorkerService(
        kafka=kafka, stream=stream, metrics=metrics, judge_settings=judge, embedder=embedder,
        expert_settings=experts, worker_id=args.worker_id,
    )  # fmt: skip
    port = service.serve_http()
    if metrics.enabled:
        print(
            f"driftlabel worker: metrics on http://{metrics.host}:{port}/metrics (probes: /healthz, /readyz)",
            flush=True,
        )
    level = {0: "warning", 1: "info"}.get(args.verbose, "debug")
    worker = faust.Worker(service.app, loglevel=level, redirect_stdouts=False, override_logging=False)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:  # faust's scratch directory (memory store only: nothing in it outlives the process)
        shutil.rmtree(str(service.app.conf.datadir), ignore_errors=True)
    return 0


# -- produce / consume / control -------------------------------------------------------------------------
def cmd_produce(args: argparse.Namespace) -> int:
    from driftlabel.streams.client import iter_input_records, produce
    from driftlabel.streams.topics import TopicNames

    kafka = kafka_from_args(args)
    names = TopicNames.from_settings(kafka)
    kind = "training" if args.training else "texts"
    path = None if args.file in (None, "-") else Path(args.file)
    if path is not None and not path.is_file():
        print(f"driftlabel produce: {path} does not exist", file=sys.stderr)
        return 2
    records = iter_input_records(path, sys.stdin, kind, fmt=args.format, source=args.source)
    topic = names.training if args.training else names.texts
    n = asyncio.run(produce(kafka, topic, records, rate=args.rate))
    print(f"driftlabel produce: sent {n} records to {topic}", file=sys.stderr)
    return 0


def cmd_consume(args: argparse.Namespace) -> int:
    from driftlabel.streams.client import LabelReader
    from driftlabel.streams.topics import TopicNames

    kafka = kafka_from_args(args)
    names = TopicNames.from_settings(kafka)

    async def run() -> int:
        n = 0
        reader = LabelReader(kafka, names.labels)
        async for value in reader.finals(follow=args.follow, idle_s=args.idle, limit=args.limit):
            sys.stdout.write(json.dumps(value, ensure_ascii=False) + "\n")
            sys.stdout.flush()
            n += 1
        return n

    n = asyncio.run(run())
    print(f"driftlabel consume: {n} final labels", file=sys.stderr)
    return 0


def _cmd_control(op: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        from driftlabel.streams.client import control_record, produce
        from driftlabel.streams.topics import TopicNames

        kafka = kafka_from_args(args)
        examples = list(getattr(args, "example", None) or [])
        if getattr(args, "examples_file", None):
            try:
                lines = Path(args.examples_file).read_text("utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                print(f"driftlabel: cannot read --examples-file {args.examples_file}: {exc}", file=sys.stderr)
                return 2
            examples += [ln.strip() for ln in lines if ln.strip()]
        rec = control_record(op, args.label, getattr(args, "description", None), examples)
        topic = TopicNames.from_settings(kafka).control
        asyncio.run(produce(kafka, topic, [rec]))
        print(f"driftlabel: sent {op} {args.label!r} ({len(examples)} examples) to {topic}", file=sys.stderr)
        return 0

    return run


def register(sub: argparse._SubParsersAction) -> None:
    """Add the service commands to the ``driftlabel`` parser."""
    p = sub.add_parser("broker", help="run a local Kafka-protocol broker (Tansu, in memory) for development")
    p.add_argument("--port", type=int, default=9092, help="port on 127.0.0.1 (0 = a free one)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--log", type=Path, help="write the broker's own log here")
    _add_common(p)
    p.set_defaults(func=cmd_broker)

    p = sub.add_parser("worker", help="run the streaming service (faust worker + /metrics)")
    _add_common(p)
    p.add_argument("--metrics-port", type=int, help="port of /metrics (0 = a free one; default 9464)")
    p.add_argument("--checkpoint-dir", type=Path, help="where model checkpoints are written and loaded")
    p.add_argument("--judge-url", help="OpenAI-compatible base URL of the judge (ends in /v1)")
    p.add_argument("--worker-id", help="name of this worker in logs and checkpoints")
    p.add_argument(
        "--embedder",
        choices=sorted(EMBEDDER_KINDS),
        help="embedder (else DRIFTLABEL_EMBEDDER_KIND / the config; default onnx, MiniLM as int8 ONNX; "
        "minilm is the same model on torch): static is fastest",
    )
    p.add_argument("--print-config", action="store_true", help="show the effective settings and exit")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("produce", help="send texts (or --training examples) from a file or stdin")
    _add_common(p)
    p.add_argument(
        "file", nargs="?", help="input file (JSONL, CSV with a 'text' column, or one text per line)"
    )
    p.add_argument("--training", action="store_true", help="send labelled examples to the training topic")
    p.add_argument(
        "--source", default="seed", choices=["seed", "human", "judge"],
        help="training source of records that name none (seed: the first fit covers the seed records "
        "published before any judge or human record; human: a reviewer's answers)",
    )  # fmt: skip
    p.add_argument("--format", default="auto", choices=["auto", "jsonl", "csv", "text"])
    p.add_argument("--rate", type=float, default=0.0, help="records per second (0 = as fast as possible)")
    p.set_defaults(func=cmd_produce)

    p = sub.add_parser("consume", help="print final labels as JSON lines (each id once)")
    _add_common(p)
    p.add_argument("--follow", "-f", action="store_true", help="keep waiting for new labels")
    p.add_argument("--idle", type=float, default=2.0, help="without --follow: stop after this long idle (s)")
    p.add_argument("--limit", type=int, default=0, help="stop after N labels (0 = no limit)")
    p.set_defaults(func=cmd_consume)

    p = sub.add_parser("add-class", help="add a class (with examples / a description) while the service runs")
    _add_common(p)
    p.add_argument("label")
    p.add_argument("--description", "-d")
    p.add_argument("--example", "-e", action="append", help="an example text (repeatable)")
    p.add_argument("--examples-file", type=Path, help="one example per line")
    p.set_defaults(func=_cmd_control("add_class"))

    p = sub.add_parser("remove-class", help="remove a class while the service runs")
    _add_common(p)
    p.add_argument("label")
    p.set_defaults(func=_cmd_control("remove_class"))

    p = sub.add_parser("describe-class", help="set a class's description while the service runs")
    _add_common(p)
    p.add_argument("label")
    p.add_argument("description")
    p.set_defaults(func=_cmd_control("describe_class"))

    from driftlabel.streams import demo

    demo.register(sub)
