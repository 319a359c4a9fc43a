"""``LocalLlamaServer`` without a model: a server that cannot start says so, as a :class:`JudgeError`."""

from __future__ import annotations

from pathlib import Path

import pytest

from driftlabel.judge import LocalLlamaServer
from driftlabel.judge.errors import JudgeError


def test_a_python_that_exits_at_once_is_reported(tmp_path: Path) -> None:
    server = LocalLlamaServer(tmp_path / "none.gguf", python="/bin/false", log_file=tmp_path / "log")
    with pytest.raises(JudgeError, match="exited with code 1"):
        server.start(timeout_s=10)
    assert server.python == "/bin/false"


def test_a_missing_python_is_a_judge_error_that_names_it(tmp_path: Path) -> None:
    server = LocalLlamaServer(tmp_path / "none.gguf", python=str(tmp_path / "no-python"))
    with pytest.raises(JudgeError, match="no-python"):
        server.start(timeout_s=10)
