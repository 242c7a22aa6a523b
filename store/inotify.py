"""Waking a watcher when another process commits to the SQLite store (Linux inotify).

SQLite cannot notify another process of a commit.  Watching its files does not do
either: the commit's frames are written to the WAL with ``write(2)`` (an inotify
event) *before* the commit is visible, which happens only when the WAL index in the
shared memory file is updated through ``mmap`` (no event).  A reader woken by the WAL
write reads the old revision and goes back to sleep, and the commit waits for the next
poll (seen in testing).  So a writer, after its commit returned, touches a sidecar file
``<db>-changed`` (``notify_change``) and watchers wait for that (``FileChanges``).  The
directory is watched, not the file, so the sidecar may be created after the watch.

Without this a watcher polls, and a pod on another host becomes reachable only after
half a poll interval on average; with it, after one revision read.
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import time

IN_ATTRIB = 0x004
IN_CREATE = 0x100
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
SUFFIX = "-changed"

LOG = logging.getLogger(__name__)

_libc = ctypes.CDLL(None, use_errno=True)  # the C library the interpreter already has


def notify_change(db_path: str) -> None:
    """Tell every watcher of ``db_path`` that a commit is visible now.  Failing to is
    logged, not raised: the commit stands, and watchers' polls still find it."""
    marker = db_path + SUFFIX
    try:
        try:
            os.utime(marker)
        except FileNotFoundError:
            with open(marker, "a"):
                pass
    except OSError as exc:
        LOG.warning("cannot wake the watchers of %s (%s); they will poll", db_path, exc)


class FileChanges:
    """Commits to the store at ``path``, as announced by notify_change, as a wait()."""

    def __init__(self, path: str):
        self._name = (os.path.basename(path) + SUFFIX).encode()
        fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self._fd = fd
        directory = os.path.dirname(os.path.abspath(path))
        if _libc.inotify_add_watch(fd, directory.encode(), IN_ATTRIB | IN_CREATE) < 0:
            err = ctypes.get_errno()
            os.close(fd)
            raise OSError(err, f"cannot watch {directory} for changes to the store")

    def wait(self, timeout: float) -> bool:
        """Block until a commit is announced or ``timeout`` seconds pass; returns whether
        one was.  Every pending event is consumed."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            # select, not poll: under Ryu the agent runs with eventlet's green select,
            # which has no poll.
            if select.select([self._fd], [], [], left)[0] and self._drain():
                return True
        return False

    def _drain(self) -> bool:
        announced = False
        while True:
            try:
                buf = os.read(self._fd, 65536)
            except BlockingIOError:
                return announced
            offset = 0
            while offset < len(buf):
                # struct inotify_event: int wd; uint32 mask, cookie, len; char name[len]
                name_len = int.from_bytes(buf[offset + 12 : offset + 16], "little")
                name = buf[offset + 16 : offset + 16 + name_len].rstrip(b"\0")
                announced |= name == self._name
                offset += 16 + name_len

    def close(self) -> None:
        os.close(self._fd)
