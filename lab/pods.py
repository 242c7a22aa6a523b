"""Lab pods: a namespace per pod, attached through the host agent's own API.

Until the CNI plugin lands, ``lab pod add`` asks the agent to attach the pod
exactly as the CNI server will (same code path: IPAM, veth, OVS port, store,
flows), so what the lab shows is what a runtime will get.
"""

from __future__ import annotations

import json
import os
import re

from controller import api
from controller.netns import namespace_path
from lab import agent_proc, naming, netns
from lab.lab import LabError, LabPaths

POD_NAME_RE = re.compile(r"^[a-z0-9]{1,8}$")
POD_IFNAME = "eth0"


def pod_namespace(lab: str, host: str, pod: str) -> str:
    return f"{lab}-{host}-{pod}"


def _record(paths: LabPaths, ns: str) -> str:
    return os.path.join(paths.root, "pods", ns + ".json")


def _validate(lab: str, host: str, pod: str) -> None:
    naming.validate_lab_name(lab)
    naming.host_index(host)
    if not POD_NAME_RE.match(pod):
        raise LabError(f"pod name {pod!r} is invalid; use 1-8 lower-case letters and digits")
    if not netns.namespace_exists(naming.host_namespace(lab, host)):
        raise LabError(f"lab {lab} has no host {host}; see 'ovs-overlayctl lab status --lab {lab}'")


def pod_add(
    lab: str,
    host: str,
    pod: str,
    network: str = naming.DEFAULT_NETWORK,
    state_root: str = naming.DEFAULT_STATE_ROOT,
) -> dict:
    """Create the pod's namespace and have the host's agent attach it; returns the attachment."""
    _validate(lab, host, pod)
    paths = LabPaths(state_root, lab)
    ns = pod_namespace(lab, host, pod)
    if netns.namespace_exists(ns):
        raise LabError(f"pod {pod} already exists on {host} (namespace {ns})")
    netns.create_namespace(ns)
    try:
        answer = api.call(
            agent_proc.socket_path(paths.host(host)),
            "attach",
            network=network,
            container_id=ns,
            ifname=POD_IFNAME,
            netns=namespace_path(ns),
        )
        if not answer["ok"]:
            raise LabError(answer["error"])
    except OSError as exc:
        netns.delete_namespace(ns)
        raise LabError(
            f"the agent of {host} is not answering ({exc}); start it with "
            f"'ovs-overlayctl lab agent start --lab {lab} {host}'"
        ) from None
    except BaseException:
        netns.delete_namespace(ns)
        raise
    os.makedirs(os.path.dirname(_record(paths, ns)), exist_ok=True)
    with open(_record(paths, ns), "w") as f:
        json.dump(answer["result"], f)
    return answer["result"]


def pod_del(lab: str, host: str, pod: str, state_root: str = naming.DEFAULT_STATE_ROOT) -> None:
    _validate(lab, host, pod)
    paths = LabPaths(state_root, lab)
    ns = pod_namespace(lab, host, pod)
    try:
        with open(_record(paths, ns)) as f:
            att = json.load(f)
    except OSError:
        raise LabError(f"no pod {pod} on {host} in lab {lab}") from None
    answer = api.call(
        agent_proc.socket_path(paths.host(host)),
        "detach",
        network=att["network"],
        container_id=ns,
        ifname=POD_IFNAME,
    )
    if not answer["ok"]:
        raise LabError(answer["error"])
    netns.delete_namespace(ns)
    os.unlink(_record(paths, ns))


def pods(lab: str, state_root: str = naming.DEFAULT_STATE_ROOT) -> list[dict]:
    """Every pod of the lab with its attachment (namespace, network, IP, MAC)."""
    d = os.path.join(LabPaths(state_root, lab).root, "pods")
    out = []
    for entry in sorted(os.listdir(d)) if os.path.isdir(d) else []:
        with open(os.path.join(d, entry)) as f:
            out.append({"namespace": entry.removesuffix(".json"), **json.load(f)})
    return out
