"""``driftlabel train`` and ``driftlabel classify``: the offline R.E.D. flow from the command line.

``train`` reads seed examples (CSV/JSONL with ``text``,``label``) and optional label descriptions
(YAML/JSON), embeds them with progress, fits a :class:`RedClassifier` and saves it to a directory.
``classify`` loads that directory and prints one JSON line per text (label, score, candidates, entropy,
margin, out_of_scope). Bad input raises :class:`InvalidDataError`/:class:`ModelFileError`, which the
``driftlabel`` entry point prints and turns into exit status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from driftlabel.config import load_settings
from driftlabel.models.errors import InvalidDataError, ModelFileError

__all__ = ["cmd_classify", "cmd_train", "register"]

_KINDS = ("sentence-transformers", "static", "onnx")


def register(subparsers: Any) -> None:
    """Add ``train`` and ``classify`` to the ``driftlabel`` parser."""
    p = subparsers.add_parser(
        "train",
        help="train a R.E.D. model from labelled seed examples",
        description="Embed seed examples, build label subsets and experts, save the model to a directory.",
    )
    p.add_argument("--data", required=True, type=Path, help="seed examples: .csv/.tsv (header row) or .jsonl")
    p.add_argument("--descriptions", type=Path, help="YAML/JSON mapping label -> description (optional)")
    p.add_argument("--out", required=True, type=Path, help="directory to write the model to")
    p.add_argument("--text-column", default="text", help="column/key holding the text (default: text)")
    p.add_argument("--label-column", default="label", help="column/key holding the label (default: label)")
    p.add_argument(
        "--force", action="store_true", help="replace the driftlabel model already in --out (no other folder)"
    )
    p.add_argument("--config", type=Path, help="config file (TOML/YAML) with [embedder]/[experts] sections")
    _embedder_args(p)
    p.add_argument(
        "--subset-size", type=int, help="labels per expert (default: DRIFTLABEL_EXPERTS_SUBSET_SIZE or 1000)"
    )
    p.add_argument("--seed", type=int, help="random seed for subsets and experts")
    p.set_defaults(func=cmd_train)

    c = subparsers.add_parser(
        "classify",
        help="label texts with a trained model (one JSON line per text)",
        description="Load a model saved by `driftlabel train` and print one JSON line per text.",
    )
    c.add_argument(
        "texts", nargs="+", metavar="TEXT", help="texts to label; '-' reads one text per line from stdin"
    )
    c.add_argument("--model", required=True, type=Path, help="model directory written by `driftlabel train`")
    c.add_argument("--top-k", type=int, default=5, help="candidates per text (default: 5)")
    c.add_argument("--config", type=Path, help="config file (TOML/YAML) with an [embedder] section")
    _embedder_args(c)
    c.set_defaults(func=cmd_classify)


def _embedder_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--embedder",
        choices=_KINDS,
        help="embedder kind (train default: DRIFTLABEL_EMBEDDER_KIND or "
        "onnx; classify default: the one the model was trained with)",
    )
    p.add_argument(
        "--model-path", help="sentence-transformers folder or .onnx file (default: packaged MiniLM)"
    )


def _embedder_settings(args: argparse.Namespace) -> Any:
    from driftlabel.models.embeddings import EmbedderSettings

    overrides: dict[str, Any] = {}
    if args.embedder:
        overrides["kind"] = args.embedder
    if args.model_path:
        overrides["model_path"] = args.model_path
    return load_settings(EmbedderSettings, args.config, **overrides)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cmd_train(args: argparse.Namespace) -> int:
    """Read, check, embed (with progress), fit, save, summarise."""
    from driftlabel.models.classifier import RedClassifier
    from driftlabel.models.datasets import read_descriptions, read_examples
    from driftlabel.models.embeddings import encode_in_chunks, load_embedder
    from driftlabel.models.experts import ExpertSettings
    from driftlabel.models.persistence import MANIFEST

    t0 = time.perf_counter()
    texts, labels = read_examples(args.data, text_column=args.text_column, label_column=args.label_column)
    descriptions = read_descriptions(args.descriptions) if args.descriptions else {}
    counts = Counter(labels)
    orphans = sorted(set(descriptions) - set(counts))
    if orphans:
        raise InvalidDataError(
            f"{args.descriptions}: label(s) with a description but no examples in {args.data}: "
            f"{', '.join(map(repr, orphans[:10]))}; add examples for them or remove their descriptions"
        )
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise InvalidDataError(f"--out {out} is a file; give a directory path")
    if out.is_dir() and any(out.iterdir()) and not args.force:
        raise InvalidDataError(
            f"--out {out} is not empty; pass --force to overwrite it or choose another directory"
        )
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        # save() would refuse it too, but only after the embedding and the fit: say so before them
        raise InvalidDataError(
            f"--out {out} is not empty and holds no driftlabel model; --force only replaces a driftlabel "
            "model directory: choose another directory or empty this one"
        )
    expert_overrides: dict[str, Any] = {}
    if args.subset_size is not None:
        expert_overrides["subset_size"] = args.subset_size
    if args.seed is not None:
        expert_overrides["seed"] = args.seed
    expert_settings = load_settings(ExpertSettings, args.config, **expert_overrides)
    _say(
        f"read {len(texts)} examples of {len(counts)} labels from {args.data}"
        + (f", {len(descriptions)} descriptions" if descriptions else "")
    )

    settings = _embedder_settings(args)
    _say(f"loading embedder ({settings.kind}) ...")
    embedder = load_embedder(settings)
    embedder.warmup()
    t_embed = time.perf_counter()
    X = encode_in_chunks(
        embedder, texts, chunk_size=256, progress=True, desc=f"embedding with {embedder.name}"
    )
    desc_emb: dict[str, Any] = {}
    if descriptions:
        keys = list(descriptions)
        D = embedder.encode([descriptions[k] for k in keys])
        desc_emb = {k: D[i] for i, k in enumerate(keys)}
    t_fit = time.perf_counter()
    _say("building label subsets and training experts ...")
    clf = RedClassifier(embedder, expert_settings).fit_embeddings(X, texts, labels, descriptions, desc_emb)
    t_save = time.perf_counter()
    clf.save(out)
    done = time.perf_counter()
    few = sorted(counts.items(), key=lambda kv: kv[1])[:3]
    summary = {
        "model": str(out),
        "examples": len(texts),
        "labels": len(counts),
        "subsets": clf.n_subsets,
        "descriptions": len(descriptions),
        "embedder": embedder.name,
        "model_version": clf.model_version,
        "examples_per_label": {"min": min(counts.values()), "max": max(counts.values())},
        "seconds": {
            "embed": round(t_fit - t_embed, 2),
            "fit": round(t_save - t_fit, 2),
            "save": round(done - t_save, 2),
            "total": round(done - t0, 2),
        },
    }
    _say(
        f"trained {len(counts)} labels in {clf.n_subsets} subsets from {len(texts)} examples "
        f"(embed {t_fit - t_embed:.1f}s, fit {t_save - t_fit:.1f}s); saved to {out}\n"
        f"fewest examples: {', '.join(f'{k} ({v})' for k, v in few)}\n"
        f'next: driftlabel classify --model {out} "some text"'
    )
    print(json.dumps(summary))
    return 0


def _read_texts(items: Sequence[str], stdin: TextIO) -> list[str]:
    texts: list[str] = []
    for item in items:
        if item == "-":
            texts.extend(line.rstrip("\r\n") for line in stdin if line.strip())
        else:
            texts.append(item)
    empty = [i for i, t in enumerate(texts) if not t.strip()]
    if empty:
        raise InvalidDataError(
            f"text #{empty[0] + 1} is empty ({len(empty)} empty in all); give non-empty texts"
        )
    if not texts:
        raise InvalidDataError(
            "no texts to classify: stdin was empty; pass TEXT arguments or pipe lines to '-'"
        )
    return texts


def _chunks(seq: list[str], n: int) -> Iterator[list[str]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def _r(x: float) -> float:
    return round(float(x), 6) if math.isfinite(float(x)) else 0.0


def cmd_classify(args: argparse.Namespace) -> int:
    """Load the model (and its embedder), rank the texts in micro-batches, print JSON lines."""
    from driftlabel.models.classifier import RedClassifier
    from driftlabel.models.embeddings import embedder_for_name, load_embedder

    model: Path = args.model
    if not model.is_dir():
        raise ModelFileError(
            f"model directory {model} does not exist; "
            f"train one with `driftlabel train --data seeds.csv --out {model}`"
        )
    if args.top_k < 1:
        raise InvalidDataError(f"--top-k must be >= 1, got {args.top_k}")
    texts = _read_texts(args.texts, sys.stdin)
    settings = _embedder_settings(args)
    if args.embedder or args.model_path:
        embedder = load_embedder(settings)
    else:
        embedder = embedder_for_name(_saved_embedder_name(model), settings)
    clf = RedClassifier.load(model, embedder=embedder)
    for batch in _chunks(texts, 256):
        r = clf.rank(batch, top_k=args.top_k)
        for i, text in enumerate(batch):
            row = {
                "text": text,
                "label": r.labels[i],
                "score": _r(r.scores[i]),
                "candidates": [[lab, _r(p)] for lab, p in r.candidates[i]],
                "entropy": _r(r.entropy[i]),
                "margin": _r(r.margin[i]),
                "out_of_scope": bool(r.out_of_scope[i]),
                "model_version": clf.model_version,
            }
            print(json.dumps(row, ensure_ascii=False))
        sys.stdout.flush()
    return 0


def _saved_embedder_name(model: Path) -> str:
    """The embedder name recorded in the model's manifest, to rebuild the same embedder."""
    manifest = model / "manifest.json"
    try:
        name = json.loads(manifest.read_text(encoding="utf-8"))["embedder"]["name"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelFileError(
            f"{model} is not a driftlabel model (cannot read the embedder from {manifest.name}: {exc}); "
            "train one with `driftlabel train`"
        ) from exc
    if not isinstance(name, str) or not name:
        raise ModelFileError(f"{manifest} names no embedder; pass --embedder/--model-path")
    return name
