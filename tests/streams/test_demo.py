"""The demo: its data resolution (local file, download from a configurable URL, a clear offline error)
and one short real run of ``driftlabel demo`` (broker + simulated judge + worker process)."""

from __future__ import annotations

import contextlib
import http.server
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from driftlabel.streams.broker import free_port
from driftlabel.streams.demo import DemoStats, load_clinc150_file, resolve_clinc150, split_demo
from driftlabel.streams.errors import DataUnavailableError

TINY = {
    "train": [["hi there", "greet"], ["hello", "greet"], ["bye", "farewell"], ["see you", "farewell"]],
    "val": [["hey", "greet"]],
    "test": [["ciao", "farewell"]],
    "oos_train": [["what is love", "oos"]],
}


@contextlib.contextmanager
def serve(folder: Path) -> Iterator[str]:
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_local_data_dir_wins(tmp_path: Path) -> None:
    (tmp_path / "clinc150").mkdir()
    (tmp_path / "clinc150" / "data_full.json").write_text(json.dumps(TINY))
    path = resolve_clinc150(tmp_path, "http://127.0.0.1:9/never", tmp_path / "cache")
    assert path == tmp_path / "clinc150" / "data_full.json"


def test_download_into_cache_once(tmp_path: Path) -> None:
    served = tmp_path / "www"
    served.mkdir()
    (served / "data_full.json").write_text(json.dumps(TINY))
    cache = tmp_path / "cache"
    with serve(served) as base:
        path = resolve_clinc150(tmp_path / "empty", f"{base}/data_full.json", cache)
    assert path == cache / "clinc150" / "data_full.json"
    assert load_clinc150_file(path)["train"][0] == ("hi there", "greet")
    # the cached copy is used without any network next time
    assert resolve_clinc150(tmp_path / "empty", "http://127.0.0.1:9/never", cache) == path


def test_offline_error_names_the_file_and_where(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(DataUnavailableError) as exc:
        resolve_clinc150(tmp_path / "empty", f"http://127.0.0.1:{port}/data_full.json", tmp_path / "cache")
    msg = str(exc.value)
    assert "data_full.json" in msg and str(tmp_path / "cache" / "clinc150" / "data_full.json") in msg
    assert not (tmp_path / "cache" / "clinc150" / "data_full.part").exists()


def test_a_broken_download_is_refused(tmp_path: Path) -> None:
    served = tmp_path / "www"
    served.mkdir()
    (served / "data_full.json").write_text("<html>rate limited</html>")
    with serve(served) as base, pytest.raises(DataUnavailableError):
        resolve_clinc150(tmp_path / "empty", f"{base}/data_full.json", tmp_path / "cache")


def test_split_keeps_seeds_out_of_the_stream() -> None:
    data = {k: [tuple(r) for r in v] for k, v in TINY.items() if k in ("train", "val", "test")}
    seeds, stream = split_demo(data, per_class=1, limit=0)  # type: ignore[arg-type]
    assert seeds == [("hi there", "greet"), ("bye", "farewell")]
    assert sorted(stream) == sorted([("hello", "greet"), ("see you", "farewell"), ("hey", "greet"),
                                     ("ciao", "farewell")])  # fmt: skip
    assert len(split_demo(data, 1, 2)[1]) == 2  # type: ignore[arg-type]
    assert {lab for _, lab in split_demo(data, 1, 0, classes=1)[0]} == {"farewell"}  # type: ignore[arg-type]


@pytest.mark.slow
def test_demo_command_runs_end_to_end(data_dir: Path, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "driftlabel.streams.cli", "demo", "--data", str(data_dir), "--classes", "6",
           "--limit", "60", "--progress-every", "1", "--timeout", "240"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=420, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "items     60/60" in out.stdout and "demo summary" in out.stdout
    assert "accuracy of final labels" in out.stdout and "stopped everything" in out.stdout


def test_demo_counts_judge_calls_as_the_endpoint_answered_them() -> None:
    """With ``choose`` one call answers three verdicts (a batch, several texts'): the progress line and the
    summary count the endpoint's requests, not verdicts."""
    stats = DemoStats(truth={"t0": "a"}, verdicts=9, requests=lambda: 3)
    assert stats.calls == 3 and "judge calls     3" in stats.line(1.0)
    assert DemoStats(truth={}, verdicts=9).calls == 9  # an endpoint the demo does not run: one per verdict
