"""Progress lines for long work (``lab up`` of many hosts, ``lab demo``): one line per host
or step as it finishes, so a person watching sees what is going on.

Written to stderr only when stderr is a terminal: a pipe, a file or a test capturing the
output sees nothing new (stdout keeps only the result).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO


class Progress:
    def __init__(
        self,
        stream: TextIO | None = None,
        enabled: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._stream = sys.stderr if stream is None else stream
        self.enabled = _is_terminal(self._stream) if enabled is None else enabled
        self._clock = clock

    def step(self, text: str) -> None:
        """One line, now (nothing when not on a terminal)."""
        if self.enabled:
            self._stream.write(text + "\n")
            self._stream.flush()

    def since(self, started: float, text: str) -> None:
        """``text (1.2 s)``: the time since ``started`` (a reading of this clock)."""
        self.step(f"{text} ({self._clock() - started:.1f} s)")

    def now(self) -> float:
        return self._clock()

    @contextmanager
    def timed(self, text: str) -> Iterator[None]:
        """``text (1.2 s)`` once the block is done (not if it raises: the error says it)."""
        started = self._clock()
        yield
        self.since(started, text)


QUIET = Progress(enabled=False)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False
