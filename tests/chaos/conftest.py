"""Fixtures of the chaos suite: one real Tansu broker for the folder, the CLINC150 file, and the opt-in
switch for the long cases (``chaos_long``: skipped unless ``DRIFTLABEL_CHAOS_LONG=1`` or ``-m chaos_long``).

Each test module builds its own :class:`driftlabel.bench.chaos.Cluster` (own topic prefix, own group,
own simulated expert), so modules never see each other's records.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from driftlabel.streams.broker import LocalBroker


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Long chaos cases run only when asked for: they take minutes each."""
    if os.environ.get("DRIFTLABEL_CHAOS_LONG") == "1" or "chaos_long" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="long chaos case: set DRIFTLABEL_CHAOS_LONG=1 or run with -m chaos_long")
    for item in items:
        if "chaos_long" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def chaos_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    """A real Tansu broker on loopback for the chaos modules (memory only)."""
    b = LocalBroker(log_path=tmp_path_factory.mktemp("chaos-broker") / "broker.log")
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture(scope="session")
def clinc_file(data_dir: Path) -> Path:
    return data_dir / "clinc150" / "data_full.json"
