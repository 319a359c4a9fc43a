"""glibc malloc tuning (``streams.allocator``): the soak's RSS growth and its fix, shown in miniature."""

from __future__ import annotations

import ctypes
import ctypes.util
import subprocess
import sys
import textwrap

import pytest

from driftlabel.streams.allocator import tune_malloc
from driftlabel.streams.settings import StreamSettings


def _glibc_has_mallinfo2() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        return hasattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), "mallinfo2")
    except OSError:
        return False


needs_glibc = pytest.mark.skipif(not _glibc_has_mallinfo2(), reason="needs glibc >= 2.33 (mallinfo2)")

# Large temporaries interleaved with small long-lived blocks, as a re-solve's numpy arrays are with the
# objects the worker keeps: then every temporary is freed. Prints the MB glibc keeps free inside its heap.
SCRIPT = textwrap.dedent(
    """
    import ctypes, sys
    import numpy as np
    if sys.argv[1] == "tuned":
        from driftlabel.streams.allocator import tune_malloc
        assert tune_malloc(131072, 2)
    libc = ctypes.CDLL("libc.so.6")
    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                    "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
    libc.mallinfo2.restype = MallInfo2
    a = np.ones(4_000_000 // 8)
    del a  # freeing a 4 MB mapping raises glibc's dynamic mmap threshold to 4 MB
    keep, big = [], []
    for _ in range(200):
        big.append(np.ones(500_000 // 8))
        keep.append(bytearray(2048))
    del big
    print(libc.mallinfo2().fordblks / 2**20)
    """
)


def _free_mb(mode: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=60, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


@needs_glibc
def test_tuned_malloc_gives_freed_temporaries_back() -> None:
    plain, tuned = _free_mb("plain"), _free_mb("tuned")
    assert plain > 50  # ~95 MB of freed 500 KB arrays stay inside the process with glibc's defaults
    assert tuned < 5  # with a fixed threshold each was its own mapping, returned when freed


@needs_glibc
def test_zero_leaves_defaults() -> None:
    assert tune_malloc(0, 0) == {}
    assert tune_malloc(131072, 2) == {"mmap_threshold": 131072, "trim_threshold": 131072, "arena_max": 2}


def test_settings_defaults_and_bounds() -> None:
    s = StreamSettings()
    assert (s.malloc_mmap_threshold, s.malloc_arena_max) == (None, 2)
    # auto: fixed for the ONNX / static embedders, glibc's default under torch (page faults cost 20 %)
    assert s.mmap_threshold_for("onnx") == s.mmap_threshold_for("static") == 131072
    assert s.mmap_threshold_for("sentence-transformers") == 0
    assert StreamSettings(malloc_mmap_threshold=65536).mmap_threshold_for("sentence-transformers") == 65536
    with pytest.raises(ValueError):
        StreamSettings(malloc_mmap_threshold=64 * 2**20)
