"""What policy is judged over: every Namespace, every Pod with its address, every
NetworkPolicy.  One value shared by the evaluator (netpol/evaluate.py, the spec read
literally) and the compiler (netpol/compile.py, the spec as flows), so the two are
compared on exactly the same input.

Addresses are IPv4 (the data path is): a Pod is the address its endpoint has in the
network Kubernetes pods live in.  A Pod without an address yet (not attached) is
absent: it can neither be reached nor select anything that matters to a packet.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property

from netpol.model import NAME_LABEL, Namespace, NetworkPolicy, Peer, Pod


@dataclass(frozen=True)
class PodAddress:
    """A Pod and the IPv4 address its endpoint has."""

    pod: Pod
    ip: str

    @property
    def key(self) -> str:
        return self.pod.key


@dataclass(frozen=True)
class PolicyState:
    """The cluster as policy sees it.  Immutable; its indexes are built on first use.
    Objects are unique by key (namespace/name), as in the store."""

    namespaces: tuple[Namespace, ...] = ()
    pods: tuple[PodAddress, ...] = ()
    policies: tuple[NetworkPolicy, ...] = ()

    @cached_property
    def _namespace_labels(self) -> dict[str, Mapping[str, str]]:
        return {ns.name: ns.labels for ns in self.namespaces}

    def namespace_labels(self, name: str) -> Mapping[str, str]:
        """A namespace's labels; one not (yet) known has only the name label the API
        server sets, so a pod whose Namespace has not arrived is still judged."""
        return self._namespace_labels.get(name) or {NAME_LABEL: name}

    @cached_property
    def by_ip(self) -> dict[str, PodAddress]:
        return {p.ip: p for p in self.pods}

    def selects(self, policy: NetworkPolicy, pod: Pod) -> bool:
        """The policy applies to the pod (its namespace and pod selector)."""
        return pod.namespace == policy.namespace and policy.pod_selector.matches(pod.labels)

    def peer_selects(self, policy: NetworkPolicy, peer: Peer, pod: Pod) -> bool:
        """A selector peer (no ipBlock) of ``policy`` selects ``pod``: both selectors hold
        (AND); no namespace selector means the policy's own namespace, no pod selector
        every pod of the selected namespaces."""
        if peer.namespace_selector is None:
            in_namespace = pod.namespace == policy.namespace
        else:
            labels = self.namespace_labels(pod.namespace)
            in_namespace = peer.namespace_selector.matches(labels)
        return in_namespace and (peer.pod_selector is None or peer.pod_selector.matches(pod.labels))


def in_block(ip: str, cidr: str, excepts: tuple[str, ...]) -> bool:
    """An address is in an ipBlock: inside its CIDR and outside every except."""
    addr = ipaddress.ip_address(ip)
    if addr not in ipaddress.ip_network(cidr):
        return False
    return not any(addr in ipaddress.ip_network(e) for e in excepts)


# The revision a host's own ports have in ``from_records``: newer than any record, since
# this host's OVSDB says where its pods are now (the store may not have told it yet).
LOCAL_REVISION = 1 << 62


def from_records(
    objects: Iterable[Namespace | Pod | NetworkPolicy], addresses: Iterable[tuple[str, str, int]]
) -> PolicyState:
    """The PolicyState of the store's records: its Kubernetes objects, and ``addresses``
    (pod key, IP, revision) from the endpoint records of the network Kubernetes pods are
    on (the record's mod_revision; LOCAL_REVISION for this host's own ports).  The agent
    (controller/policy_watch.py) and ``ovs-overlayctl policy check`` both build it here,
    so the check judges exactly what the agent compiles.  A pod has one address: the
    newest, if records disagree (a pod rescheduled from a host that died left its old
    record behind: the new one is the pod); a Pod without an endpoint, or an endpoint
    without a Pod, is absent."""
    objects = list(objects)
    pods = {o.key: o for o in objects if isinstance(o, Pod)}
    newest: dict[str, tuple[int, str]] = {}
    for key, ip, revision in addresses:
        if key in pods:
            best = newest.get(key)
            if best is None or (-revision, ip) < (-best[0], best[1]):
                newest[key] = (revision, ip)
    return PolicyState(
        tuple(sorted((o for o in objects if isinstance(o, Namespace)), key=lambda n: n.name)),
        tuple(PodAddress(pods[k], newest[k][1]) for k in sorted(newest)),
        tuple(sorted((o for o in objects if isinstance(o, NetworkPolicy)), key=lambda p: p.key)),
    )
