"""One connected br-int: send pipeline messages, wait for barriers, name the flow an error is about.

os-ken delivers replies on its event thread while the reconciler sends from
its own, so replies are matched to waiters by xid.  Recent xids are kept so an
OFPT_ERROR is reported with the message that caused it, not just a code.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable

from openflow import sender
from openflow.diff import Barrier, Message

LOG = logging.getLogger(__name__)

RECENT_XIDS = 4096


class SwitchError(RuntimeError):
    """The switch refused a message, or did not answer in time."""


class SwitchLink:
    def __init__(self, dp):
        self.dp = dp
        self._lock = threading.Lock()
        self._recent: OrderedDict[int, Message] = OrderedDict()
        self._errors: dict[int, str] = {}
        self._waiting: dict[int, threading.Event] = {}
        self._replies: dict[int, list] = {}
        self._closed = False

    @property
    def datapath_id(self) -> int:
        return self.dp.id

    def apply(self, messages: Iterable[Message], timeout: float = 10.0) -> None:
        """Send ``messages`` (a barrier is added unless they end in one; a generator is
        sent as it yields) and wait until the switch has processed them."""
        recent: OrderedDict[int, Message] = OrderedDict()  # its last RECENT_XIDS messages

        def note(xid: int, message: Message) -> None:
            recent[xid] = message
            if len(recent) > RECENT_XIDS:
                recent.popitem(last=False)

        with self._lock:
            self._recent = recent
            last_xid = sender.send(self.dp, messages, note)
            if last_xid is None:
                return
            if not isinstance(recent[last_xid], Barrier):
                last_xid = sender.send(self.dp, [Barrier()], note)
            done = self._waiting[last_xid] = threading.Event()
        answered = done.wait(timeout)
        with self._lock:
            # The switch answers a message's error before the barrier after it, so past the
            # barrier (or a timeout) no error names these: they are not kept (4,096 flows
            # of a full sync, ~2 MB, stayed until as many later messages pushed them out).
            if self._recent is recent:
                self._recent = OrderedDict()
            self._waiting.pop(last_xid, None)
            failed = [self._errors.pop(xid) for xid in recent if xid in self._errors]
        if not answered:
            raise SwitchError(f"switch {self.dp.id:#x} did not answer a barrier in {timeout}s")
        self._check_open()
        if failed:
            raise SwitchError(f"switch refused {len(failed)} message(s): {failed[0]}")

    def request(self, msg, timeout: float = 10.0) -> list:
        """Send a multipart request and return the bodies of all its replies.  The wait
        for the lock (held while ``apply`` sends, a full sync's flows included) counts in
        ``timeout`` too, so a caller that cannot wait long (a metrics scrape) does not."""
        deadline = time.monotonic() + timeout
        if not self._lock.acquire(timeout=timeout):
            raise SwitchError(f"switch {self.dp.id:#x} is busy; {type(msg).__name__} not sent")
        try:
            try:
                self.dp.set_xid(msg)
                done = self._waiting[msg.xid] = threading.Event()
                self._replies[msg.xid] = []
                self.dp.send_msg(msg)
            finally:
                self._lock.release()
            if not done.wait(max(0.0, deadline - time.monotonic())):
                raise SwitchError(f"switch {self.dp.id:#x} did not answer {type(msg).__name__}")
            self._check_open()
            with self._lock:
                return list(self._replies[msg.xid])
        finally:
            # Also on a timeout: a reply arriving later finds no entry and is dropped,
            # instead of piling up under an xid nobody waits for.
            with self._lock:
                self._waiting.pop(msg.xid, None)
                self._replies.pop(msg.xid, None)

    def _check_open(self) -> None:
        if self._closed:
            raise SwitchError(f"switch {self.dp.id:#x} disconnected before it answered")

    # -- called from the os-ken event thread --------------------------------

    def close(self) -> None:
        """The connection is gone: wake everyone waiting for a reply that will never come
        (a reconciler blocked on a dead switch would miss the new connection)."""
        with self._lock:
            self._closed = True
            waiting = list(self._waiting.values())
        for event in waiting:
            event.set()

    def on_barrier_reply(self, xid: int) -> None:
        with self._lock:
            event = self._waiting.get(xid)
        if event is not None:
            event.set()

    def on_multipart_reply(self, xid: int, body: list, more: bool) -> None:
        with self._lock:
            if xid in self._replies:
                self._replies[xid].extend(body)
            event = None if more else self._waiting.get(xid)
        if event is not None:
            event.set()

    def on_error(self, xid: int, err_type: int, code: int) -> None:
        with self._lock:
            message = self._recent.get(xid)
            text = f"OFPT_ERROR type={err_type} code={code} for {message!r}"
            if message is not None:
                self._errors[xid] = text
        LOG.error("switch %#x: %s", self.dp.id, text)
