"""The client of the agent's local API (:mod:`controller.api`).

The CNI plugin imports this on every exec, on the pod-start path, so it imports only
``json`` and ``socket``: no logging, no threads.
"""

from __future__ import annotations

import json
import socket


def call(path: str, op: str, timeout: float = 30.0, **args) -> dict:
    """Send one request to an agent and return its answer (``ok``, ``result`` or ``error``)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(json.dumps({"op": op, **args}).encode())
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return json.loads(b"".join(chunks))
