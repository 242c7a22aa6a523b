"""nftables through libnftables, the library the ``nft`` tool is built on (no process per
change, and the same parser and one-transaction semantics).

A buffer of commands runs as one netlink batch: all of it takes effect or none, so a
table deleted and defined again in one buffer is replaced atomically (no packet sees it
half-written).  The library acts in the network namespace of the calling thread.
"""

from __future__ import annotations

import ctypes
import functools
import threading

LIBRARY = "libnftables.so.1"  # Debian: libnftables1 (a dependency of the nftables package)


class NftError(RuntimeError):
    """nftables refused a ruleset; the message is libnftables' own."""


@functools.cache
def _lib() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(LIBRARY)
    except OSError as exc:
        raise NftError(
            f"cannot load {LIBRARY} ({exc}); install libnftables1 (Debian's nftables package "
            "brings it)"
        ) from None
    lib.nft_ctx_new.restype = ctypes.c_void_p
    lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
    lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
    lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
    lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
    lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
    lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    return lib


_lock = threading.Lock()  # a context is not thread-safe; one at a time is plenty


def run(commands: str) -> str:
    """Run ``commands`` (nft syntax) as one transaction; returns what nft printed (for a
    ``list``).  Raises NftError with nft's message when any command is refused."""
    lib = _lib()
    with _lock:
        ctx = lib.nft_ctx_new(0)
        if not ctx:
            raise NftError("libnftables could not make a context (out of memory?)")
        try:
            lib.nft_ctx_buffer_output(ctx)
            lib.nft_ctx_buffer_error(ctx)
            rc = lib.nft_run_cmd_from_buffer(ctx, commands.encode())
            if rc != 0:
                err = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace")
                raise NftError(err.strip() or f"nft refused the commands (rc {rc})")
            return (lib.nft_ctx_get_output_buffer(ctx) or b"").decode(errors="replace")
        finally:
            lib.nft_ctx_free(ctx)
