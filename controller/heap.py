"""Give the heap a burst freed back to the operating system.

A full sync or a large batch (an agent's first listing of 10,000 endpoints) allocates
tens of MB for a moment: the listing's JSON pages and their decoded records, the
change lists, 20,000 flows and their encoded flow mods.  Python frees them, but glibc
keeps freed heap memory mapped (only a free block at the very top of the heap goes back
by itself, and long-lived objects allocated meanwhile sit above), so the agent's RSS
stayed at its peak.  ``malloc_trim(0)`` returns every free page of every malloc arena
(glibc >= 2.8 releases pages inside the heap too, not only its top).  Python's own small
object arenas are freed when empty, without it.  Measured at 500 peers and 10,000
remote endpoints: docs/benchmarks.md, "One agent at scale on etcd".
"""

from __future__ import annotations

import ctypes
import gc


def _malloc_trim():
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except AttributeError:  # not glibc (musl has no malloc_trim): nothing to give back
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_TRIM = _malloc_trim()


def release() -> None:
    """Collect garbage cycles, then hand free heap pages back to the OS (a few ms at
    10,000 endpoints; call it after a burst, not per change)."""
    gc.collect()
    if _TRIM is not None:
        _TRIM(0)
