"""``lab up`` says what it does as it goes on a terminal, and nothing new into a pipe."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys

import pytest

from lab import lab

pytestmark = pytest.mark.lab

CTL = [sys.executable, "-m", "ctl.main"]


def test_lab_up_writes_a_line_per_host_to_a_terminal_and_nothing_to_a_pipe(lab_name):
    primary, secondary = pty.openpty()
    try:
        proc = subprocess.Popen(
            [*CTL, "lab", "up", "--name", lab_name, "--hosts", "2"],
            stdout=subprocess.PIPE,
            stderr=secondary,
            text=True,
        )
        out, _ = proc.communicate(timeout=300)
        os.close(secondary)
        secondary = -1
        seen = b""
        while select.select([primary], [], [], 10)[0]:  # until EIO: every writer closed
            try:
                chunk = os.read(primary, 4096)
            except OSError:  # EIO
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(primary)
        if secondary >= 0:
            os.close(secondary)
    assert proc.returncode == 0, seen
    steps = [line.split(" (")[0] for line in seen.decode().splitlines()]
    assert steps == [
        f"lab {lab_name}: underlay {lab_name}-underlay up",
        f"lab {lab_name}: outside {lab_name}-ext up",
        "h1: OVS up",
        "h2: OVS up",
        "h1: agent ready",
        "h2: agent ready",
    ]
    assert "lab " + lab_name in out and "h1:" not in out  # stdout keeps only the result
    lab.down(lab_name)

    piped = subprocess.run(
        [*CTL, "lab", "up", "--name", lab_name, "--hosts", "2"], capture_output=True, text=True
    )
    assert piped.returncode == 0 and piped.stderr == ""
