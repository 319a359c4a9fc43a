"""glibc's allocator, tuned for a worker that runs for weeks.

Measured in the 10-minute soak (``docs/reliability.md``, Memory): the worker's live heap stayed flat
(75-79 MB in use) while its RSS grew ~1 MiB/min, because glibc kept the freed temporaries of the
background re-solves (numpy arrays of a few hundred KB to MBs) inside its heap: "free" bytes held by the
process grew 9 -> 34 MB. glibc's dynamic mmap threshold is the cause: after the first large array is freed
it raises the threshold (up to 32 MB), so later large arrays come from the heap, where freed space is
rarely at the top and cannot be given back. Fixing the threshold keeps large arrays in their own mappings,
returned to the OS when freed; fewer arenas keep threads from each holding their own free space.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

__all__ = ["tune_malloc"]

log = logging.getLogger(__name__)

# mallopt(3) parameter numbers (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8


def tune_malloc(mmap_threshold: int, arena_max: int) -> dict[str, int] | None:
    """Apply glibc ``mallopt`` settings to this process; 0 leaves a setting at glibc's default.

    Returns what was applied, or None where there is no glibc (macOS, musl): nothing to tune there.
    Setting the mmap threshold also turns glibc's dynamic threshold off; the trim threshold is set to
    the same value so that freed space at the top of the heap goes back too."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    applied: dict[str, int] = {}
    wanted = (
        ("mmap_threshold", M_MMAP_THRESHOLD, mmap_threshold),
        ("trim_threshold", M_TRIM_THRESHOLD, mmap_threshold),
        ("arena_max", M_ARENA_MAX, arena_max),
    )
    for name, param, value in wanted:
        if value > 0:
            if mallopt(param, value) == 1:
                applied[name] = value
            else:  # mallopt returns 0 for a value this glibc does not accept
                log.warning("mallopt(%s=%d) was refused; glibc's default stays", name, value)
    return applied
