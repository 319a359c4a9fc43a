"""Fixtures shared by every test area: the real data folder and the real packaged embedding model."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """``../shared/data`` (or ``$DRIFTLABEL_DATA_DIR``): real CLINC150 / BANKING77 / O*NET, read in place."""
    from driftlabel.models.datasets import default_data_dir

    path = default_data_dir()
    if not (path / "clinc150" / "data_full.json").is_file():
        pytest.fail(f"test data not found at {path}; set DRIFTLABEL_DATA_DIR to the shared data folder")
    return path


@pytest.fixture(scope="session")
def embedder() -> Iterator[object]:
    """The real packaged all-MiniLM-L6-v2, loaded once per test session."""
    from driftlabel.models import load_embedder

    emb = load_embedder()
    emb.warmup()
    yield emb
