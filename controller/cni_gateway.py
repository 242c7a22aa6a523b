"""The agent's half of the compiled CNI shim (cni/shim.c): a CNI invocation served in
the agent, with the plugin's own code.

The shim forwards its CNI_* environment and stdin (API op ``cni``); the agent runs
``cni.plugin.serve`` on them with a direct call into its API handlers for transport, so
the checks, results and errors are the plugin's, and each request is logged and counted
as if it had come over the socket (controller/api.py ``answer``).  A refusal the plugin's
own checks make before anything reaches a handler is logged and counted here too: a
runtime's malformed request is seen in the agent's metrics however it came.

The answer is raw bytes, not JSON (the shim has no JSON parser): ``HEADER``, the exit
code and a newline, then what the plugin prints.  What the agent cannot do for the
plugin gets ``FALLBACK`` and the shim execs the Python plugin, which does it all itself:
delegating to an IPAM plugin (it runs on the node's filesystem with the runtime's
environment, which an agent in a container has neither of), and a config whose
``agentSocket`` is not this agent's (the shim found it by a plain text search).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping

from cni import plugin
from controller import api, requestlog

HEADER = b"ovs-overlay-cni 1 "
FALLBACK = api.Raw(b"ovs-overlay-cni fallback\n")

# The API op behind each CNI command, for a refusal made before any op was called.
_OPS = {"ADD": "attach", "DEL": "detach", "CHECK": "check", "GC": "gc", "STATUS": "status"}


def serve(
    handlers: Mapping[str, Callable[..., object]],
    own_socket: str,
    env: dict[str, str],
    stdin: str,
) -> api.Raw:
    """Serve one forwarded CNI invocation (``env``: its CNI_* variables)."""
    if not isinstance(stdin, str) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise TypeError("env must map names to strings and stdin must be a string")
    if not _servable(stdin, own_socket):
        return FALLBACK
    started = time.monotonic()
    called: list[str] = []

    def transport(path: str, op: str, **args) -> dict:
        called.append(op)
        return api.answer(handlers, op, args)

    code, out = plugin.serve(env, stdin, transport)
    if code and not called:
        _refused_by_plugin(env, stdin, out, time.monotonic() - started)
    return api.Raw(HEADER + b"%d\n" % code + out.encode())


def _servable(stdin: str, own_socket: str) -> bool:
    """Whether the agent can serve this config for the plugin (not: an IPAM plugin to
    delegate to, another agent's socket).  A config that is not a JSON object is
    servable: the plugin's code refuses it."""
    try:
        conf = json.loads(stdin)
    except ValueError:
        return True
    if not isinstance(conf, dict):
        return True
    return conf.get("ipam") is None and conf.get("agentSocket", plugin.DEFAULT_SOCKET) == own_socket


def _refused_by_plugin(env: Mapping[str, str], stdin: str, out: str, seconds: float) -> None:
    """Log and count a refusal of the plugin's own checks as the agent's are."""
    error = json.loads(out)
    try:
        network = json.loads(stdin).get("network")
    except (ValueError, AttributeError):
        network = None
    request = {
        "container_id": env.get("CNI_CONTAINERID"),
        "ifname": env.get("CNI_IFNAME"),
        "network": network if isinstance(network, str) else None,
    }
    answer = {"ok": False, "code": error["code"], "error": error["msg"]}
    requestlog.finished(_OPS.get(env.get("CNI_COMMAND", ""), ""), request, answer, seconds, {})
