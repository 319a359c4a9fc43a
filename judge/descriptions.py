"""Label descriptions: user-given or LLM-generated, stored in an editable YAML/JSON file.

The judge shows a label's description next to the question, which is how it learns what each label means.
Users may write them by hand; ``driftlabel describe`` fills in the missing ones by asking the LLM (label name
+ examples) and never overwrites a description a user wrote unless told to. Editing a description changes
its version (:func:`driftlabel.judge.cache.description_version`), so old cached verdicts stop applying.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import yaml

from driftlabel.judge.errors import JudgeDataError, JudgeError

if TYPE_CHECKING:
    from driftlabel.judge.judge import Judge

__all__ = ["DescriptionsResult", "generate_descriptions", "load_descriptions", "save_descriptions"]

log = logging.getLogger(__name__)

_HEADER = (
    "# driftlabel label descriptions: label -> one-sentence definition shown to the LLM judge.\n"
    "# Edit freely; `driftlabel describe` only fills in labels that are missing here (unless --overwrite).\n"
)


def load_descriptions(path: str | os.PathLike[str], *, missing_ok: bool = False) -> dict[str, str]:
    """Read ``{label: description}`` from a YAML (.yaml/.yml) or JSON file."""
    p = Path(path)
    if not p.is_file():
        if missing_ok:
            return {}
        raise JudgeDataError(f"descriptions file {p} does not exist; create it or run `driftlabel describe`")
    text = p.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if p.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise JudgeDataError(f"descriptions file {p} cannot be parsed: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise JudgeDataError(
            f"descriptions file {p} must map label -> description, got {type(data).__name__}"
        )
    out: dict[str, str] = {}
    for label, desc in data.items():
        if not isinstance(desc, str) or not desc.strip():
            raise JudgeDataError(
                f"descriptions file {p}: label {label!r} needs a non-empty string description"
            )
        out[str(label)] = desc.strip()
    return out


def save_descriptions(path: str | os.PathLike[str], descriptions: Mapping[str, str]) -> Path:
    """Write descriptions atomically (temp file + rename), sorted by label, YAML unless the path is .json."""
    p = Path(path)
    data = {str(k): str(v) for k, v in sorted(descriptions.items())}
    if p.suffix.lower() == ".json":
        body = json.dumps(data, ensure_ascii=False, indent=2) + "\n"
    else:
        body = _HEADER + yaml.safe_dump(data, allow_unicode=True, sort_keys=True, width=110)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(body)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


class DescriptionsResult(NamedTuple):
    """All descriptions after generation, which labels were generated, and which failed (with why)."""

    descriptions: dict[str, str]
    generated: list[str]
    failed: dict[str, str]


async def generate_descriptions(
    judge: Judge,
    examples: Mapping[str, Sequence[str]],
    existing: Mapping[str, str] | None = None,
    *,
    overwrite: bool = False,
    per_label: int = 10,
) -> DescriptionsResult:
    """Ask the LLM for a description of every label in ``examples`` that lacks one (all if ``overwrite``).

    Calls run concurrently (bounded by the judge's ``concurrency``); a label whose call fails, whatever the
    error, keeps its old description (if any) and is listed in ``failed`` so the user can retry or write it
    by hand; the other labels' descriptions are kept.
    """
    result = dict(existing or {})
    todo = [label for label in examples if overwrite or label not in result]

    async def one(label: str) -> tuple[str, str | None, str | None]:
        try:
            return label, await judge.describe_label(label, list(examples[label])[:per_label]), None
        except JudgeError as exc:
            return label, None, str(exc)
        except Exception as exc:  # anything else must not lose the other labels' descriptions either
            log.exception("describing %r failed", label)
            return label, None, f"unexpected {type(exc).__name__}: {exc}"

    done = await asyncio.gather(*(one(label) for label in todo))
    generated: list[str] = []
    failed: dict[str, str] = {}
    for label, desc, err in done:
        if desc is not None:
            result[label] = desc
            generated.append(label)
        else:
            failed[label] = err or "unknown error"
    return DescriptionsResult(result, generated, failed)
