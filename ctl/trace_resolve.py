"""A trace's ``--from`` and ``--to`` as the cluster's objects: a Kubernetes pod
``NAMESPACE/NAME`` (the ``pod`` of its endpoint record, from the runtime's
K8S_POD_NAMESPACE/K8S_POD_NAME), a lab pod ``hN/POD``, a node (its gateway port), a pod's
IP, or any other address.

Names are looked up in the store's records only, so a lab and a real host resolve alike;
a name that fits two things, or none, is one sentence and no trace.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from controller.endpoints import host_port_name
from controller.hoststate import GATEWAY_PORT
from ctl.trace_explain import Directory
from lab import naming
from lab.lab import LabError
from store.cluster import Endpoint

_LAB_HOST = re.compile(r"h[0-9]+")


@dataclass(frozen=True)
class Endpointish:
    """A source or destination: where it is and what it sends from."""

    label: str
    host: str | None
    network: str | None
    ip: str
    mac: str | None
    port: str | None  # its port on br-int


def _of(label: str, ep: Endpoint) -> Endpointish:
    port = host_port_name(ep.container_id, ep.ifname)
    return Endpointish(label, ep.host, ep.network, ep.ip, ep.mac, port)


def resolve(d: Directory, lab: str | None, name: str, as_source: bool) -> Endpointish:
    """``name`` in ``d``; ``lab`` (None on a real host) adds its ``hN/POD`` names."""
    if "/" in name:
        return _pod(d, lab, name)
    if any(h.name == name for h in d.hosts) or (lab and _LAB_HOST.fullmatch(name)):
        h = next((h for h in d.hosts if h.name == name), None)
        if h is None or not h.gateways:
            where = f"lab {lab}" if lab else "the cluster"
            raise LabError(f"{where} has no live host {name} with a gateway")
        g = h.gateways[0]
        return Endpointish(f"{name} (node)", name, g.network, g.ip, g.mac, GATEWAY_PORT)
    try:
        addr = ipaddress.IPv4Address(name)
    except ValueError:
        kinds = "hN/POD, NAMESPACE/NAME, hN" if lab else "NAMESPACE/NAME, a host's name"
        raise ValueError(f"{name!r} is neither {kinds} nor an IPv4 address") from None
    found = [ep for ep in d.endpoints if ep.ip == name]
    if len(found) > 1:
        pod = "hN/POD" if lab else "NAMESPACE/NAME"
        raise ValueError(f"{name} is a pod's address in several networks; name the pod {pod}")
    if found:
        return _of(d.pod_name(found[0]), found[0])
    if as_source:
        if lab and addr not in naming.UNDERLAY_NET:
            raise ValueError(f"{name} is no pod's address; trace from hN/POD, hN or a pod's IP")
        if not lab and any(addr in ipaddress.IPv4Network(n.cidr) for n in d.networks):
            raise ValueError(f"{name} is no pod's address; trace from a pod, a node or a pod's IP")
        return Endpointish(f"VXLAN from {name}", None, None, name, None, None)
    return Endpointish(name, None, None, name, None, None)


def _pod(d: Directory, lab: str | None, name: str) -> Endpointish:
    """A lab pod ``hN/POD`` (in a lab) or a Kubernetes pod ``NAMESPACE/NAME``."""
    in_lab = None
    if lab is not None:
        host, pod = name.split("/", 1)
        container = f"{lab}-{host}-{pod}"
        in_lab = next(
            (ep for ep in d.endpoints if ep.host == host and ep.container_id == container), None
        )
    k8s = [ep for ep in d.endpoints if ep.pod == name]
    other = next((ep for ep in k8s if ep != in_lab), None)
    if in_lab is not None and other is not None:
        raise ValueError(
            f"{name} is both a lab pod on {in_lab.host} and a Kubernetes pod on {other.host}; "
            "name the one you mean by its IP"
        )
    if in_lab is not None:
        return _of(name, in_lab)
    if len(k8s) > 1:
        each = ", ".join(f"{ep.ifname} in {ep.network} {ep.ip} on {ep.host}" for ep in k8s)
        raise ValueError(
            f"pod {name} has {len(k8s)} attachments ({each}); name the one you mean by its IP"
        )
    if k8s:
        return _of(name, k8s[0])
    if lab is not None:
        raise LabError(f"lab {lab} has no pod {name}; 'ovs-overlayctl lab pod list' shows them")
    raise ValueError(
        f"no endpoint in the cluster state belongs to pod {name} (NAMESPACE/NAME); "
        "'ovs-overlayctl endpoint list' shows them"
    )


def dest_mac(d: Directory, src: Endpointish, dst: Endpointish, notes: list[str]) -> str:
    """The destination MAC the source would use: the owner of the address in its own
    network (pods ARP through the switch), else its host's gateway's."""
    net = next(n for n in d.networks if n.name == src.network)
    for ep in d.endpoints:
        if ep.network == net.name and ep.ip == dst.ip:
            return ep.mac
    for h in d.hosts:
        for g in h.gateways:
            if g.network == net.name and g.ip == dst.ip:
                return g.mac
    if ipaddress.IPv4Address(dst.ip) in ipaddress.IPv4Network(net.cidr):
        if dst.mac is None:
            raise ValueError(f"no address {dst.ip} in network {net.name}; its ARP goes unanswered")
        notes.append(
            f"no {dst.ip} in network {net.name}: the ARP goes unanswered; "
            f"traced with {dst.label}'s MAC {dst.mac} as if it were known"
        )
        return dst.mac
    gw = next(
        (g for h in d.hosts if h.name == src.host for g in h.gateways if g.network == net.name),
        None,
    )
    if gw is None:
        raise ValueError(
            f"network {net.name} has no gateway on {src.host}; {dst.ip} is unreachable"
        )
    notes.append(f"{dst.ip} is outside network {net.name}: sent to {src.host}'s gateway {gw.mac}")
    return gw.mac
