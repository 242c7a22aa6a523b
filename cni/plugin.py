"""The ``ovs-overlay`` CNI plugin: what it checks, asks the agent and answers.

It validates the whole request before asking anything, answers VERSION itself, and
sends ADD, DEL, CHECK, STATUS and GC to the host agent.  Every failure is a CNI error
JSON on stdout with the spec's code.

It runs two ways, answering the same bytes (``serve``).  Runtimes exec the compiled
shim (cni/shim.c), which hands the request to the agent; the agent runs this code on it
(controller/cni_gateway.py) with a direct call for transport.  Without an agent, or for
what the agent cannot do for it (delegating to an IPAM plugin), the shim execs this
module as a process (``ovs-overlay-python``), which reaches the agent over its root-only
unix socket.  Runtimes exec the plugin for every verb (podman calls VERSION before each
ADD and DEL), so that process must start fast: this module imports the standard library
only.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable

from cni import admission  # re and socket only
from controller import api_client  # json and socket only: imported on every exec

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST = SUPPORTED_VERSIONS[-1]
DEFAULT_SOCKET = "/run/ovs-overlay/agent.sock"
AGENT_TIMEOUT = 60.0
SHIM_SILENT_ENV = "OVS_OVERLAY_CNI_AGENT_SILENT"

# Error codes of the CNI spec (SPEC.md, "Error").
ERR_INCOMPATIBLE_VERSION = 1
ERR_UNSUPPORTED_FIELD = 2
ERR_UNKNOWN_CONTAINER = 3
ERR_INVALID_ENV = 4
ERR_IO = 5
ERR_DECODE = 6
ERR_INVALID_CONFIG = 7
ERR_TRY_AGAIN = 11
ERR_PLUGIN_NOT_AVAILABLE = 50

VERBS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")
# The env each verb needs (CNI_NETNS may be empty on DEL: containerd's second DEL).
REQUIRED_ENV = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
}


class CniError(Exception):
    def __init__(self, code: int, msg: str, details: str = ""):
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self, cni_version: str) -> dict:
        out = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out


def version_result(request: dict) -> dict:
    """The VERSION answer, in the request's version when we speak it."""
    asked = request.get("cniVersion")
    return {
        "cniVersion": asked if asked in SUPPORTED_VERSIONS else LATEST,
        "supportedVersions": list(SUPPORTED_VERSIONS),
    }


def parse_config(request: dict, command: str) -> dict:
    """Check the network configuration; raise CniError naming the field and the fix."""
    version = request.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise CniError(ERR_INVALID_CONFIG, 'cniVersion is missing; set it, e.g. "1.0.0"')
    if version not in SUPPORTED_VERSIONS:
        raise CniError(
            ERR_INCOMPATIBLE_VERSION,
            f"cniVersion {version} is not supported; use one of {', '.join(SUPPORTED_VERSIONS)}",
        )
    if command in ("STATUS", "GC") and version != "1.1.0":
        raise CniError(ERR_INCOMPATIBLE_VERSION, f"{command} needs cniVersion 1.1.0, not {version}")
    if request.get("type") != "ovs-overlay":
        raise CniError(
            ERR_INVALID_CONFIG, f'type is {request.get("type")!r}; it must be "ovs-overlay"'
        )
    for field, kind in (("name", str), ("network", str)):
        value = request.get(field, "default" if field == "network" else None)
        if not isinstance(value, kind) or not value:
            raise CniError(ERR_INVALID_CONFIG, f"{field} must be a non-empty string")
    bad_name = admission.check_network_name(request["name"])
    if bad_name is not None:
        raise CniError(ERR_INVALID_CONFIG, bad_name)
    ipam = request.get("ipam")
    if ipam is not None and (
        not isinstance(ipam, dict)
        or not isinstance(ipam.get("type"), str)
        or not ipam["type"]
        or "/" in ipam["type"]
    ):
        raise CniError(
            ERR_INVALID_CONFIG,
            'ipam must be an object naming an IPAM plugin in "type" (e.g. host-local)',
        )
    mtu = request.get("mtu")
    if mtu is not None and (type(mtu) is not int or not 576 <= mtu <= 9000):
        raise CniError(ERR_INVALID_CONFIG, f"mtu {mtu!r} must be a whole number in 576..9000")
    sock = request.get("agentSocket", DEFAULT_SOCKET)
    if not isinstance(sock, str) or not sock.startswith("/"):
        raise CniError(ERR_INVALID_CONFIG, "agentSocket must be an absolute path")
    return {
        "version": version,
        "name": request["name"],
        "network": request.get("network", "default"),
        "socket": sock,
        "mtu": mtu,
        "ipam": ipam,
        "prevResult": request.get("prevResult"),
    }


KNOWN_ARGS = {
    "IgnoreUnknown",
    "IP",
    "MAC",
    "K8S_POD_NAMESPACE",
    "K8S_POD_NAME",
    "K8S_POD_INFRA_CONTAINER_ID",
    "K8S_POD_UID",
}


def parse_args(cni_args: str) -> dict:
    """CNI_ARGS ("K=V;K=V"): a static IP= and MAC=, and the Kubernetes pod as ``pod``
    ("NAMESPACE/NAME", when both K8S_POD_NAMESPACE and K8S_POD_NAME are there: kubelet's
    runtime sends them); unknown keys are an error unless IgnoreUnknown=1, as in the
    reference plugins."""
    pairs = {}
    for item in filter(None, cni_args.split(";")):
        key, sep, value = item.partition("=")
        if not sep:
            raise CniError(ERR_INVALID_ENV, f"CNI_ARGS item {item!r} is not KEY=VALUE")
        pairs[key] = value
    ignore = pairs.get("IgnoreUnknown", "").lower() in ("1", "true")
    unknown = sorted(set(pairs) - KNOWN_ARGS)
    if unknown and not ignore:
        raise CniError(
            ERR_INVALID_ENV,
            f"CNI_ARGS has unknown keys {', '.join(unknown)}; add IgnoreUnknown=1 to allow them",
        )
    static = {k.lower(): pairs[k] for k in ("IP", "MAC") if pairs.get(k)}
    try:
        if "ip" in static:
            static["ip"] = admission.check_ip(static["ip"])
        if "mac" in static:
            static["mac"] = admission.check_mac(static["mac"], static.get("ip"))
    except admission.Refused as exc:
        raise CniError(exc.code, str(exc)) from None
    if pairs.get("K8S_POD_NAMESPACE") and pairs.get("K8S_POD_NAME"):
        static["pod"] = f"{pairs['K8S_POD_NAMESPACE']}/{pairs['K8S_POD_NAME']}"
    return static


# How a request reaches the agent: (socket path, op, **args) -> the agent's answer
# (``ok``, ``result`` or ``code`` and ``error``).  Over the socket from a plugin process;
# a direct call when the agent serves the request for the compiled shim (cni/shim.c).
Transport = Callable[..., dict]


def over_socket(path: str, op: str, **args) -> dict:
    """One request to the agent over its socket; no answer is code 11 (try again)."""
    try:
        return api_client.call(path, op, timeout=AGENT_TIMEOUT, **args)
    except (OSError, ValueError) as exc:
        raise CniError(
            ERR_TRY_AGAIN,
            f"the ovs-overlay agent at {path} is not answering ({exc}); start ovs-overlay-agent",
        ) from None


def _agent(transport: Transport, path: str) -> Callable[..., dict]:
    """Calls to the agent at ``path`` whose refusal becomes the CniError it names."""

    def call(op: str, **args) -> dict:
        answer = transport(path, op, **args)
        if not answer.get("ok"):
            raise CniError(
                int(answer.get("code", ERR_TRY_AGAIN)), answer.get("error", "agent error")
            )
        return answer["result"]

    return call


def delegate_ipam(ipam_type: str, env: dict[str, str], stdin: str) -> dict | None:
    """Run the IPAM plugin named in the config (found on CNI_PATH) with our own env and
    config, as the spec's delegation says; its error comes back as ours."""
    for directory in filter(None, env.get("CNI_PATH", "").split(":")):
        path = os.path.join(directory, ipam_type)
        if os.access(path, os.X_OK):
            break
    else:
        raise CniError(
            ERR_INVALID_CONFIG,
            f"IPAM plugin {ipam_type} is not in CNI_PATH ({env.get('CNI_PATH', '')}); install it",
        )
    import subprocess  # only here: the common path never pays for importing it

    proc = subprocess.run([path], input=stdin, env=env, capture_output=True, text=True)
    out = proc.stdout.strip()
    try:
        answer = json.loads(out) if out else None
    except ValueError:
        raise CniError(ERR_IO, f"IPAM plugin {ipam_type} printed no JSON: {out[:200]}") from None
    if proc.returncode != 0:
        msg = answer.get("msg", "") if isinstance(answer, dict) else proc.stderr.strip()
        code = answer.get("code", ERR_IO) if isinstance(answer, dict) else ERR_IO
        raise CniError(int(code), f"IPAM plugin {ipam_type}: {msg}")
    return answer


def _release_ipam(ipam: dict, env: dict[str, str], stdin: str) -> None:
    try:
        delegate_ipam(ipam["type"], {**env, "CNI_COMMAND": "DEL"}, stdin)
    except CniError as exc:  # the ADD's own error is the one to report on stdout
        sys.stderr.write(f"releasing the address from {ipam['type']} failed too: {exc}\n")


def prev_routes(prev: dict | None) -> list[dict]:
    """The routes of the ADD result a runtime passes back on CHECK (``prevResult``)."""
    if prev is not None and not isinstance(prev, dict):
        raise CniError(ERR_INVALID_CONFIG, "prevResult must be the ADD result, a JSON object")
    routes = (prev or {}).get("routes") or []
    if not isinstance(routes, list) or not all(
        isinstance(r, dict) and isinstance(r.get("dst"), str) for r in routes
    ):
        raise CniError(ERR_INVALID_CONFIG, "prevResult.routes must be a list of {dst, gw} objects")
    return [{"dst": r["dst"], "gw": r.get("gw")} for r in routes]


def add_result(att: dict, version: str) -> dict:
    """The ADD result for an attachment, in the request's CNI version."""
    ip = {"address": f"{att['ip']}/{att['prefixlen']}", "interface": 1}
    if att.get("gateway"):
        ip["gateway"] = att["gateway"]
    if version.startswith("0."):
        ip["version"] = "4"
    result = {
        "cniVersion": version,
        "interfaces": [
            {"name": att["host_port"], "mac": att["host_mac"]},
            {"name": att["ifname"], "mac": att["mac"], "sandbox": att["netns"]},
        ],
        "ips": [ip],
        "routes": [{"dst": "0.0.0.0/0", "gw": att["gateway"]}] if att["default_route"] else [],
        "dns": {},
    }
    return result


def run(env: dict[str, str], stdin: str, transport: Transport = over_socket) -> dict | None:
    """Serve one CNI invocation; returns the JSON to print (None: print nothing)."""
    command = env.get("CNI_COMMAND")
    if command not in VERBS:
        raise CniError(
            ERR_INVALID_ENV,
            f"CNI_COMMAND is {command!r}; set it to one of {', '.join(VERBS)}",
        )
    try:
        request = json.loads(stdin) if stdin.strip() else {}
    except ValueError as exc:
        raise CniError(
            ERR_DECODE, f"the network configuration on stdin is not valid JSON: {exc}"
        ) from None
    if not isinstance(request, dict):
        raise CniError(ERR_DECODE, "the network configuration on stdin must be a JSON object")
    if command == "VERSION":
        return version_result(request)
    conf = parse_config(request, command)
    for var in REQUIRED_ENV.get(command, ()):
        if var != "CNI_NETNS" and not env.get(var):
            raise CniError(
                ERR_INVALID_ENV, f"{var} is not set; the runtime must pass it for {command}"
            )
        if var == "CNI_NETNS" and not env.get(var):
            raise CniError(
                ERR_INVALID_ENV, f"CNI_NETNS is not set; {command} needs the container's netns path"
            )
    if command in REQUIRED_ENV:
        try:
            admission.check_request(
                command, env["CNI_CONTAINERID"], env["CNI_IFNAME"], env.get("CNI_NETNS"), None, None
            )
        except admission.Refused as exc:
            raise CniError(exc.code, str(exc)) from None
    base = {"network": conf["network"]}
    call_agent = _agent(transport, conf["socket"])
    ipam = conf["ipam"]
    if command == "ADD":
        static = parse_args(env.get("CNI_ARGS", ""))
        if ipam is not None:
            ips = (delegate_ipam(ipam["type"], env, stdin) or {}).get("ips") or [{}]
            address = ips[0].get("address", "")
            if "/" not in address:
                _release_ipam(ipam, env, stdin)
                raise CniError(ERR_IO, f"IPAM plugin {ipam['type']} returned no address")
            static["ip"] = address.split("/")[0]
        try:
            att = call_agent(
                "attach",
                **base,
                container_id=env["CNI_CONTAINERID"],
                ifname=env["CNI_IFNAME"],
                netns=env["CNI_NETNS"],
                mtu=conf["mtu"],
                **static,
            )
        except CniError:
            if ipam is not None:  # roll back the delegated allocation too
                _release_ipam(ipam, env, stdin)
            raise
        return add_result(att, conf["version"])
    if command == "DEL":
        try:
            call_agent(
                "detach",
                **base,
                container_id=env["CNI_CONTAINERID"],
                ifname=env["CNI_IFNAME"],
            )
        finally:
            if ipam is not None:  # DEL always releases IPAM
                delegate_ipam(ipam["type"], env, stdin)
        return None
    if command == "CHECK":
        call_agent(
            "check",
            **base,
            container_id=env["CNI_CONTAINERID"],
            ifname=env["CNI_IFNAME"],
            netns=env["CNI_NETNS"],
            routes=prev_routes(conf["prevResult"]),
        )
        return None
    if command == "STATUS":
        try:
            status = call_agent("status")
        except CniError as err:
            raise CniError(ERR_PLUGIN_NOT_AVAILABLE, err.msg) from None
        if not status.get("ready"):
            raise CniError(ERR_PLUGIN_NOT_AVAILABLE, "the agent has not installed its pipeline yet")
        return None
    # GC: every attachment of this network not in the runtime's list goes.
    valid = request.get("cni.dev/valid-attachments", request.get("cni.dev/attachments", []))
    if not isinstance(valid, list):
        raise CniError(ERR_INVALID_CONFIG, "cni.dev/valid-attachments must be a list")
    keep = [f"{a.get('containerID')}/{a.get('ifname')}" for a in valid if isinstance(a, dict)]
    call_agent("gc", **base, keep=keep)
    return None


def serve(env: dict[str, str], stdin: str, transport: Transport = over_socket) -> tuple[int, str]:
    """One CNI invocation as the runtime sees it: the exit code and what goes to stdout
    (the result, a CNI error JSON, or nothing).  The plugin process and the agent (serving
    the shim) both answer through here, so their answers are the same bytes."""
    try:
        result = run(env, stdin, transport)
    except CniError as err:
        try:
            asked = json.loads(stdin).get("cniVersion", LATEST)
        except (ValueError, AttributeError):
            asked = LATEST
        return 1, json.dumps(err.to_json(asked if asked in SUPPORTED_VERSIONS else LATEST)) + "\n"
    return 0, "" if result is None else json.dumps(result) + "\n"


def _silent(why: str) -> Transport:
    """The transport when the shim's agent took the request and did not answer: asking
    again could repeat an ADD under way, so the answer is the one for no answer."""

    def no_answer(path: str, op: str, **args) -> dict:
        raise CniError(
            ERR_TRY_AGAIN,
            f"the ovs-overlay agent at {path} is not answering ({why}); start ovs-overlay-agent",
        )

    return no_answer


def main() -> int:
    stdin = sys.stdin.read() if not sys.stdin.isatty() else ""
    env = dict(os.environ)
    silent = env.pop(SHIM_SILENT_ENV, None)  # set by the shim (cni/shim.c) only
    code, out = serve(env, stdin, over_socket if silent is None else _silent(silent))
    sys.stdout.write(out)
    return code


if __name__ == "__main__":
    sys.exit(main())
