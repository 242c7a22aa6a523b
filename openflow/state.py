"""The desired state of one host's pipeline: everything the flows are computed from.

The agent fills it from OVSDB (ofports) and the cluster state (networks, peers,
remote endpoints); the pipeline is a pure function of it.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from netpol.compile import PolicyProgram


# The pipeline's objects have slots: the agent holds one per remote endpoint (10,000 and
# more); without, each carried a dict of its own.
@dataclass(frozen=True, slots=True)
class NetworkSpec:
    """A network as the pipeline sees it: its VNI on the wire, and its dense index
    (store.cluster: equal on every host) in a register and as its conntrack zone."""

    name: str
    vni: int
    index: int


@dataclass(frozen=True, slots=True)
class LocalPort:
    """An endpoint on this host: its port on br-int and its addresses."""

    network: str
    ofport: int
    mac: str
    ip: str


@dataclass(frozen=True, slots=True)
class RemoteEndpoint:
    """An endpoint on another host, reached through the tunnel to ``host_ip``."""

    network: str
    host_ip: str
    mac: str
    ip: str


@dataclass(frozen=True, slots=True)
class Gateway:
    """The host's own port into a network: ``ip`` is this host's unique address in it (so
    the host reaches every pod, and their replies come back to this host), ``anycast`` the
    network's gateway address every host answers for itself (pods' default gateway stays
    on their own host).  Both are answered with ``mac``, the port's own."""

    network: str
    ofport: int
    mac: str
    ip: str
    anycast: str | None = None


@dataclass(frozen=True)
class HostState:
    tunnel_ofport: int
    networks: tuple[NetworkSpec, ...] = ()
    peers: tuple[str, ...] = ()  # tunnel IPs of the other hosts
    local: tuple[LocalPort, ...] = ()
    remote: tuple[RemoteEndpoint, ...] = ()
    gateways: tuple[Gateway, ...] = field(default_factory=tuple)
    policy: PolicyProgram | None = None  # NetworkPolicy of the Kubernetes network, if any

    def __post_init__(self) -> None:
        names = [n.name for n in self.networks]
        vnis = [n.vni for n in self.networks]
        indexes = [n.index for n in self.networks]
        if len({len(names), len(set(names)), len(set(vnis)), len(set(indexes))}) != 1:
            raise ValueError("networks must have distinct names, VNIs and indexes")
        known = set(names)
        for ep in (*self.local, *self.remote, *self.gateways):
            if ep.network not in known:
                raise ValueError(f"endpoint {ep.mac} names unknown network {ep.network}")
        for ep in self.remote:
            if ep.host_ip not in self.peers:
                raise ValueError(f"remote endpoint {ep.mac} is on {ep.host_ip}, not a known peer")
        for ip in self.peers:
            ipaddress.ip_address(ip)

    def network(self, name: str) -> NetworkSpec:
        return self._networks_by_name[name]

    @functools.cached_property
    def _networks_by_name(self) -> dict[str, NetworkSpec]:
        return {n.name: n for n in self.networks}
