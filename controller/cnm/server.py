"""libnetwork's remote driver protocol, served over a unix socket dockerd discovers.

dockerd finds ``/run/docker/plugins/NAME.sock`` and speaks HTTP/1.1 to it: a POST of a
JSON body to ``/Plugin.Activate``, ``/NetworkDriver.Join``, ``/IpamDriver.RequestPool``...
and reads a JSON answer.  A refusal is HTTP 500 with ``{"Err": "..."}``: dockerd's plugin
client (pkg/plugins) turns any non-200 answer into an error carrying that ``Err``, for the
network and the IPAM driver alike (whose 200 answers would name it ``Error``); a path we
do not serve is 404, which it takes as "not implemented".

The fault boundary is controller/api.py's: every connection has its own thread, and every
exception a handler raises becomes an answer (logged with its traceback when it is not a
refusal), so no request stops the agent or holds up another.
"""

from __future__ import annotations

import json
import logging
import os
import socketserver
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler

from controller import metrics
from controller.api import ApiError, PrivateSocket
from controller.cnm import cleanup, ipam, network
from controller.cnm.common import CnmError, Context
from store.kv import KvError

LOG = logging.getLogger(__name__)

SOCKET_NAME = "ovs-overlay.sock"  # Docker's driver name is the socket's: ovs-overlay
CONTENT_TYPE = "application/vnd.docker.plugins.v1+json"
MAX_BODY = 1 << 20
IDLE_TIMEOUT = 300.0  # seconds a kept-alive connection may sit idle

Handler = Callable[[Context, dict], dict]

IMPLEMENTS = {"Implements": ["NetworkDriver", "IpamDriver"]}


def activate(ctx: Context, body: dict) -> dict:
    """A dockerd starts using the driver: what a dockerd that died left goes now
    (controller/cnm/cleanup.py).  A failure there is logged; Activate still answers."""
    try:
        cleanup.collect(ctx, time.time(), activate=True)
    except Exception:
        LOG.exception(
            "cleaning what a previous dockerd left failed; the agent's next start retries"
        )
    return IMPLEMENTS


ROUTES: dict[str, Handler] = {
    "Plugin.Activate": activate,
    "NetworkDriver.GetCapabilities": network.get_capabilities,
    "NetworkDriver.CreateNetwork": network.create_network,
    "NetworkDriver.DeleteNetwork": network.delete_network,
    "NetworkDriver.CreateEndpoint": network.create_endpoint,
    "NetworkDriver.DeleteEndpoint": network.delete_endpoint,
    "NetworkDriver.EndpointOperInfo": network.endpoint_oper_info,
    "NetworkDriver.Join": network.join,
    "NetworkDriver.Leave": network.leave,
    "NetworkDriver.DiscoverNew": network.nothing,
    "NetworkDriver.DiscoverDelete": network.nothing,
    "NetworkDriver.ProgramExternalConnectivity": network.nothing,
    "NetworkDriver.RevokeExternalConnectivity": network.nothing,
    "IpamDriver.GetCapabilities": ipam.get_capabilities,
    "IpamDriver.GetDefaultAddressSpaces": ipam.get_default_address_spaces,
    "IpamDriver.RequestPool": ipam.request_pool,
    "IpamDriver.ReleasePool": ipam.release_pool,
    "IpamDriver.RequestAddress": ipam.request_address,
    "IpamDriver.ReleaseAddress": ipam.release_address,
}


def serve(ctx: Context, method: str, raw: bytes) -> tuple[int, dict]:
    """One request: its HTTP status and JSON answer, counted and (refusals) logged."""
    started = time.monotonic()
    handler = ROUTES.get(method)
    label = method if handler is not None else "unknown"
    status, answer, result, reason = _call(ctx, method, handler, raw)
    metrics.CNM_REQUEST_SECONDS.labels(label, result).observe(time.monotonic() - started)
    if result != "ok":
        metrics.REFUSED.labels(
            metrics.CNM_COMMAND, str(status), reason if reason in metrics.REASONS else "other"
        ).inc()
        LOG.warning("%s refused: %s", method or "request", answer.get("Err"))
    return status, answer


def _call(
    ctx: Context, method: str, handler: Handler | None, raw: bytes
) -> tuple[int, dict, str, str]:
    """(HTTP status, answer, result label, refusal reason)."""
    if handler is None:
        err = f"{method or '/'} is not a method of the ovs-overlay Docker driver"
        return 404, {"Err": err}, "refused", "bad_request"
    try:
        body = json.loads(raw) if raw.strip() else None
    except ValueError as exc:
        return 500, {"Err": f"{method}: the body is not JSON ({exc})"}, "refused", "bad_request"
    if body is None:
        body = {}
    if not isinstance(body, dict):
        return 500, {"Err": f"{method}: the body must be a JSON object"}, "refused", "bad_request"
    try:
        return 200, handler(ctx, body), "ok", ""
    except CnmError as exc:
        return 500, {"Err": str(exc)}, "refused", exc.reason
    except ApiError as exc:  # from the steps CNI shares (plug, publish)
        return 500, {"Err": str(exc)}, "refused", exc.reason or "agent_error"
    except KvError as exc:
        err = (
            f"{method} failed: the cluster store did not answer ({exc}); try again when the "
            "store is back"
        )
        return 500, {"Err": err}, "refused", "store_unavailable"
    except Exception as exc:
        LOG.exception("Docker driver %s failed", method)
        return 500, {"Err": f"{method} failed in the agent: {exc}"}, "error", "agent_error"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # dockerd's client keeps connections alive
    timeout = IDLE_TIMEOUT
    server: _Server

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            self._answer(
                413, {"Err": f"the body must be 0 to {MAX_BODY} bytes with a Content-Length"}
            )
            self.close_connection = True
            return
        raw = self.rfile.read(length)
        status, answer = serve(self.server.ctx, self.path.lstrip("/"), raw)
        self._answer(status, answer)

    def _answer(self, status: int, answer: dict) -> None:
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def address_string(self) -> str:
        return "docker"  # a unix socket's peer has no address (the default indexes one)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base's name)
        LOG.debug("docker driver: " + format, *args)


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    request_queue_size = 64
    ctx: Context


class CnmServer(PrivateSocket):
    """The driver's socket: ``plugin_dir``/ovs-overlay.sock, the directory 0700 and the
    socket 0600 (root's dockerd only)."""

    def __init__(self, plugin_dir: str, ctx: Context):
        os.makedirs(plugin_dir, mode=0o700, exist_ok=True)
        super().__init__(os.path.join(plugin_dir, SOCKET_NAME), _Server, _Handler, "docker-driver")
        self.server.ctx = ctx
