"""The agent's local API: one JSON request and one JSON answer per connection, over a unix
socket only root can open (mode 0600).  The CNI plugin and ``ovs-overlayctl lab pod`` use it
through :mod:`controller.api_client`.
"""

from __future__ import annotations

import json
import logging
import os
import socketserver
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from controller import requestlog
from store.kv import KvError

LOG = logging.getLogger(__name__)

MAX_REQUEST = 1 << 20


class ApiError(Exception):
    """A request the agent refuses, with the CNI error code that fits, and a short reason
    for the refusal metric (one of controller.metrics.REASONS; None: the code's)."""

    def __init__(self, msg: str, code: int = 7, reason: str | None = None):
        super().__init__(msg)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class Raw:
    """A result written as these bytes instead of a JSON answer: the compiled CNI shim
    (cni/shim.c) checks a header and copies the rest to its stdout, with no JSON parser."""

    data: bytes


def answer(handlers: Mapping[str, Callable[..., object]], op: str, request: dict) -> dict:
    """Serve one request (``request`` without its op): the answer, and its log line and
    metrics.  The socket's handler calls this, and so does the agent serving a CNI
    request for the shim, so a request is logged and counted the same either way."""
    started = time.monotonic()
    reason = None
    token = requestlog.begin()
    try:
        handler = handlers.get(op)
        if handler is None:
            op, request, reason = "", {}, "bad_request"
            reply = {
                "ok": False,
                "code": 6,
                "error": "request is not a JSON object with a known 'op'",
            }
        else:
            reply, reason = _call(handler, op, request)
    finally:
        noted = requestlog.end(token)
    # One line per request, refusals included (the runtime sees them; the log must too).
    requestlog.finished(op, request, reply, time.monotonic() - started, noted, reason)
    return reply


def _call(handler: Callable[..., object], op: str, request: dict) -> tuple[dict, str | None]:
    """The handler's answer and, for a refusal, its reason."""
    try:
        return {"ok": True, "result": handler(**request)}, None
    except ApiError as exc:
        return {"ok": False, "code": exc.code, "error": str(exc)}, exc.reason
    except KvError as exc:
        return {
            "ok": False,
            "code": 11,
            "error": f"{op} failed: the cluster store did not answer ({exc}); try again "
            "when the store is back",
        }, "store_unavailable"
    except TypeError as exc:
        return {"ok": False, "code": 7, "error": f"bad arguments for {op}: {exc}"}, "bad_arguments"
    except Exception as exc:
        LOG.exception("api %s failed", op)
        return {"ok": False, "code": 11, "error": f"{op} failed in the agent: {exc}"}, "agent_error"


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        raw = self.rfile.read(MAX_REQUEST)
        try:
            request = json.loads(raw)
            op = request.pop("op")
        except (ValueError, KeyError, TypeError, AttributeError):
            op, request = "", {}
        reply = answer(self.server.handlers, op if isinstance(op, str) else "", request)
        result = reply.get("result")
        if isinstance(result, Raw):
            self.wfile.write(result.data)
        else:
            self.wfile.write(json.dumps(reply).encode())


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    # socketserver's default listen backlog is 5.  A client with a timeout connects
    # non-blocking, and a unix socket with a full backlog then fails at once (EAGAIN)
    # instead of waiting: seen with 50 parallel CNI ADDs under load.
    request_queue_size = 256
    handlers: dict[str, Callable[..., object]]


class PrivateSocket:
    """A socketserver on a unix socket only root may connect to, served by a thread:
    the agent's API here and Docker's driver (controller/cnm/server.py) alike."""

    def __init__(self, path: str, server_class: type, handler: type, name: str):
        self.path = path
        if os.path.exists(path):
            os.unlink(path)  # a stale socket of a previous agent on this host
        old = os.umask(0o177)  # the socket is born 0600: no window where others may connect
        try:
            self.server = server_class(path, handler)
        finally:
            os.umask(old)
        self._thread = threading.Thread(target=self.server.serve_forever, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        if os.path.exists(self.path):
            os.unlink(self.path)


class ApiServer(PrivateSocket):
    def __init__(self, path: str, handlers: dict[str, Callable[..., object]]):
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        super().__init__(path, _Server, _Handler, "api")
        self.server.handlers = handlers
