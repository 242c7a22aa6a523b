"""Progress lines (lab/progress.py): on a terminal one line per step with its time; on
anything else nothing at all."""

from __future__ import annotations

import io
import os
import pty
import select

import pytest

from lab.progress import Progress


class _Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_on_a_terminal_each_step_is_a_line_with_its_time():
    primary, secondary = pty.openpty()
    clock = _Clock()
    try:
        with os.fdopen(secondary, "w", closefd=False) as tty:
            progress = Progress(tty, clock=clock)
            assert progress.enabled
            with progress.timed("h3: OVS up"):
                clock.t += 0.44
            started = progress.now()
            clock.t += 0.8
            progress.since(started, "h3: agent ready")
            progress.step("lab L: underlay up")
        out = _read_lines(primary, 3)
    finally:
        os.close(primary)
        os.close(secondary)
    assert out.splitlines() == [
        "h3: OVS up (0.4 s)",
        "h3: agent ready (0.8 s)",
        "lab L: underlay up",
    ]


def _read_lines(fd: int, count: int) -> str:
    """What the terminal got, up to ``count`` lines: the kernel hands a pty's output to its
    reader asynchronously (a workqueue pushes it), so one read may return only part."""
    out = b""
    while out.count(b"\n") < count:
        ready, _, _ = select.select([fd], [], [], 10)
        assert ready, f"the terminal got only {out!r}"
        out += os.read(fd, 4096)
    return out.decode()


def test_a_pipe_or_a_file_gets_nothing():
    out = io.StringIO()
    progress = Progress(out)
    assert not progress.enabled
    with progress.timed("h1: OVS up"):
        pass
    progress.step("anything")
    assert out.getvalue() == ""


def test_a_step_that_fails_is_not_reported_done():
    out = io.StringIO()
    progress = Progress(out, enabled=True)
    with pytest.raises(RuntimeError), progress.timed("h1: OVS up"):
        raise RuntimeError("ovs-vswitchd did not start")
    assert out.getvalue() == ""
