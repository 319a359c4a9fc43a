"""The background re-forming process must not outlive a worker killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from driftlabel.streams.builds import background_pool

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX process semantics")


def _gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie that nobody reaps counts as exited)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return not stat.exists()


def test_the_pool_runs_jobs_in_another_process() -> None:
    pool = background_pool()
    try:
        assert pool.submit(os.getpid).result(timeout=120) != os.getpid()
    finally:
        pool.shutdown()


def test_the_pool_child_exits_when_its_parent_is_killed() -> None:
    script = textwrap.dedent(
        """
        import os, sys, time
        from driftlabel.streams.builds import background_pool
        pool = background_pool(check_parent_every_s=0.2)
        print(pool.submit(os.getpid).result(), flush=True)
        time.sleep(600)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert child != parent.pid and not _gone(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 30
        while not _gone(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not _gone(child):
            os.kill(child, signal.SIGKILL)
            pytest.fail(f"the pool's child {child} outlived its SIGKILLed parent by 30 s")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
