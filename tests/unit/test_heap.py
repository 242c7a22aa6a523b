"""controller/heap.py on this machine's glibc: freed heap goes back to the OS."""

from __future__ import annotations

import pytest

from controller import heap

BLOCK = 64 * 1024  # below glibc's mmap threshold: from the heap


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


@pytest.mark.skipif(heap._TRIM is None, reason="not glibc: no malloc_trim")
def test_release_returns_heap_freed_below_live_memory():
    burst = [bytearray(BLOCK) for _ in range(800)]  # 50 MB, touched
    above = bytearray(BLOCK)  # allocated after: the heap's top cannot shrink by itself
    del burst
    before = _rss_mb()
    heap.release()
    assert _rss_mb() < before - 30
    del above
