"""Judge test fixtures: the real CLINC150 file, and a factory for real loopback simulated experts + judges."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from driftlabel.judge import Judge, JudgeSettings, load_judge_settings

REPO = Path(__file__).resolve().parents[2]


def _data_root() -> Path:
    try:
        from driftlabel.models.datasets import default_data_dir
    except ImportError:  # the models area may not be there yet: same rule, written out
        env = os.environ.get("DRIFTLABEL_DATA_DIR")
        return Path(env) if env else (REPO.parent / "shared" / "data")
    return Path(default_data_dir())


@pytest.fixture(scope="session")
def clinc_file() -> Path:
    """CLINC150 ``data_full.json``, read in place."""
    path = _data_root() / "clinc150" / "data_full.json"
    if not path.is_file():
        pytest.fail(f"CLINC150 not found at {path}; set DRIFTLABEL_DATA_DIR to the shared data folder")
    return path


@pytest.fixture(scope="session")
def clinc_rows(clinc_file: Path) -> list[tuple[str, str]]:
    """All (text, label) rows of CLINC150 (train/val/test and out-of-scope)."""
    data = json.loads(clinc_file.read_text(encoding="utf-8"))
    return [(t, lab) for rows in data.values() for t, lab in rows]


@pytest.fixture(scope="session")
def clinc_test(clinc_file: Path) -> list[tuple[str, str]]:
    """CLINC150 in-scope test rows."""
    data = json.loads(clinc_file.read_text(encoding="utf-8"))
    return [(t, lab) for t, lab in data["test"]]


def fast_settings(base_url: str, **overrides: Any) -> JudgeSettings:
    """Settings with small timeouts and backoffs so reliability tests stay quick."""
    values: dict[str, Any] = {
        "base_url": base_url,
        "timeout_s": 2.0,
        "max_retries": 3,
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.05,
        "breaker_failures": 3,
        "breaker_reset_s": 0.3,
    }
    values.update(overrides)
    return load_judge_settings(**values)


@pytest.fixture
def settings_for() -> Callable[..., JudgeSettings]:
    """``settings_for(base_url, **overrides)``: fast judge settings for one simulated expert."""
    return fast_settings


@pytest.fixture
def judge_for() -> Callable[..., Judge]:
    """``judge_for(base_url, **overrides)``: a Judge with fast settings (close it with ``aclose``)."""

    def make(base_url: str, **overrides: Any) -> Judge:
        return Judge(fast_settings(base_url, **overrides))

    return make
