"""The worker's allocator settings (glibc): set unless the environment already chose them."""

from __future__ import annotations

import ctypes

import pytest

from driftlabel.streams.worker import ALLOCATOR, tune_allocator


def _glibc() -> bool:
    try:
        return hasattr(ctypes.CDLL("libc.so.6"), "mallopt")
    except OSError:
        return False


@pytest.mark.skipif(not _glibc(), reason="not glibc: the worker leaves the allocator alone")
def test_the_environment_wins_and_the_rest_is_set() -> None:
    assert tune_allocator({}) == {var: value for var, (_, value) in ALLOCATOR.items()}
    assert "MALLOC_ARENA_MAX" not in tune_allocator({"MALLOC_ARENA_MAX": "8"})
    assert tune_allocator(dict.fromkeys(ALLOCATOR, "1")) == {}
