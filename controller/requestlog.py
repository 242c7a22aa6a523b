"""One log line and the metrics of every request the agent's API answers.

A CNI request (ADD, DEL, CHECK) gets one line, with its fields (controller/logformat.py):
the command, container id, ifname, pod (Kubernetes NAMESPACE/NAME when the runtime sent
it), network, IP, duration, the result (``ok`` or the CNI code, with the error), and for
ADD and DEL the milliseconds of each step (``ms_ipam``, ``ms_veth``, ...): where a slow
pod start went.  Its sentence is the one operators knew (``attached c1/eth0 as
100.64.0.7 in 31 ms (ipam 1, veth 10, ...)``, ``detached ...``, ``attach of c1/eth0
refused (CNI error 4): ...``).  The steps and the facts only the endpoint code learns
(a DEL's IP and pod, read from its OVS port) are noted into the request's context while
it runs, on the API's thread for that request.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Mapping

from controller import logformat, metrics

LOG = logging.getLogger(__name__)

_NOTED: contextvars.ContextVar[dict | None] = contextvars.ContextVar("request_notes", default=None)

_CNI = {"attach": "ADD", "detach": "DEL", "check": "CHECK"}
_DONE = {"attach": "attached", "detach": "detached", "check": "checked"}


def begin() -> contextvars.Token:
    """A request starts (the API's handler thread): notes go to a fresh record."""
    return _NOTED.set({})


def note(**facts: object) -> None:
    """Facts of the request being served (no-op outside one, e.g. a GC's own detaches)."""
    noted = _NOTED.get()
    if noted is not None:
        noted.update(facts)


def end(token: contextvars.Token) -> dict:
    noted = _NOTED.get() or {}
    _NOTED.reset(token)
    return noted


def finished(
    op: str,
    request: Mapping[str, object],
    answer: Mapping,
    seconds: float,
    noted: Mapping,
    reason: str | None = None,
) -> None:
    """Log and count one answered request (``request`` without its op; ``reason``: a
    refusal's, from metrics.REASONS, when the raise site named one)."""
    command = metrics.command_label(op)
    ok = bool(answer.get("ok"))
    code = None if ok else int(answer.get("code", 0))
    if not ok:
        reason = metrics.reason_label(code, reason, command)
        metrics.REFUSED.labels(command, str(code), reason).inc()
    if op not in _CNI:
        if not ok:
            LOG.warning(
                "%s refused (CNI error %d): %s",
                op or "request",
                code,
                answer.get("error"),
                extra=logformat.fields(cni=command, result=code, error=answer.get("error")),
            )
        return
    metrics.CNI_REQUEST_SECONDS.labels(command, "ok" if ok else str(code)).observe(seconds)
    who = f"{request.get('container_id')}/{request.get('ifname')}"
    result = answer.get("result") if ok else None
    ip = (result or {}).get("ip") if isinstance(result, dict) else None
    ip = ip or noted.get("ip")
    steps: Mapping[str, float] = noted.get("steps") or {}
    ms = seconds * 1000
    fields = logformat.fields(
        cni=command,
        container=request.get("container_id"),
        ifname=request.get("ifname"),
        pod=request.get("pod") or noted.get("pod"),
        network=request.get("network"),
        ip=ip,
        duration_ms=round(ms, 1),
        result="ok" if ok else code,
        error=None if ok else answer.get("error"),
        **{f"ms_{step.replace(' ', '_')}": round(v, 1) for step, v in steps.items()},
    )
    if not ok:
        LOG.warning(
            "%s of %s refused (CNI error %d): %s", op, who, code, answer.get("error"), extra=fields
        )
        return
    detail = f" ({', '.join(f'{s} {v:.0f}' for s, v in steps.items())})" if steps else ""
    as_ip = f" as {ip}" if op == "attach" else ""
    LOG.info("%s %s%s in %.0f ms%s", _DONE[op], who, as_ip, ms, detail, extra=fields)
