"""A diagnostic of the worker, off unless asked for: where its memory goes over a soak."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import os
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

__all__ = ["memory_probe"]

#: glibc's ``struct mallinfo2``, for the memory probe
MALLINFO2_FIELDS = (
    "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
)  # fmt: skip


async def memory_probe(
    path: Path, every_s: float, ready: asyncio.Event, sizes: Callable[[], dict[str, int]]
) -> None:
    """Debug hook (``DRIFTLABEL_DEBUG_MEMORY=FILE``): every ``every_s`` append one JSON line to FILE
    with RSS, glibc's heap figures, object counts by type and what ``sizes()`` reports (the worker's
    long-lived structures), so a slope in a soak can be attributed. ``DRIFTLABEL_DEBUG_MEMORY_FRAMES=N``
    (> 0) adds tracemalloc's growth since the worker became ready (top sites by line and by traceback;
    slows the worker a lot); ``DRIFTLABEL_DEBUG_MEMORY_TRIM=1`` calls ``malloc_trim(0)`` before each
    sample (freed heap memory that RSS still counts then goes back to the OS: what is left is in use)."""
    frames = int(os.environ.get("DRIFTLABEL_DEBUG_MEMORY_FRAMES", "0"))
    trim = os.environ.get("DRIFTLABEL_DEBUG_MEMORY_TRIM") == "1"
    try:
        libc: Any = ctypes.CDLL("libc.so.6")
    except OSError:
        libc = None
    if libc is not None and hasattr(libc, "mallinfo2"):

        class MallInfo2(ctypes.Structure):
            _fields_ = [(n, ctypes.c_size_t) for n in MALLINFO2_FIELDS]

        libc.mallinfo2.restype = MallInfo2
    if frames > 0:
        tracemalloc.start(frames)
    await ready.wait()
    await asyncio.sleep(every_s)
    skip = (tracemalloc.Filter(False, tracemalloc.__file__),)
    base = tracemalloc.take_snapshot().filter_traces(skip) if frames > 0 else None
    base_types = Counter(type(o).__name__ for o in gc.get_objects())
    t0 = time.monotonic()
    while True:
        trim_ms = None
        if trim and libc is not None:
            t_trim = time.perf_counter()
            libc.malloc_trim(0)
            trim_ms = round(1000 * (time.perf_counter() - t_trim), 2)
        rss = 0
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) // 1024
        types = Counter(type(o).__name__ for o in gc.get_objects())
        rec: dict[str, Any] = {
            "t": round(time.monotonic() - t0, 1),
            "rss_mb": rss,
            "py_blocks": sys.getallocatedblocks(),
            "trim_ms": trim_ms,
            "sizes": sizes(),
            "types": {k: types[k] - base_types.get(k, 0) for k, _ in (types - base_types).most_common(15)},
        }
        if libc is not None and hasattr(libc, "mallinfo2"):
            mi = libc.mallinfo2()
            rec["heap_mb"] = {  # arena: heap from brk/arenas; in use; free inside it; mmapped blocks
                k: round(getattr(mi, f) / 2**20, 1)
                for k, f in (
                    ("arena", "arena"),
                    ("in_use", "uordblks"),
                    ("free", "fordblks"),
                    ("mmap", "hblkhd"),
                )
            }
        if base is not None:
            snap = tracemalloc.take_snapshot().filter_traces(skip)
            rec["traced_mb"] = round(tracemalloc.get_traced_memory()[0] / 2**20, 2)
            rec["by_line"] = [
                (str(d.traceback), d.size_diff, d.count_diff) for d in snap.compare_to(base, "lineno")[:25]
            ]
            rec["by_traceback"] = [
                (d.traceback.format()[-12:], d.size_diff, d.count_diff)
                for d in snap.compare_to(base, "traceback")[:8]
            ]
        with path.open("a") as f:
            f.write(orjson.dumps(rec).decode() + "\n")
        await asyncio.sleep(every_s)
