"""Join what OVSDB says about local ports with what the cluster state says about everyone
else, into the pipeline's HostState.  Pure: the agent passes in what it read."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from openflow.state import Gateway, HostState, LocalPort, NetworkSpec, RemoteEndpoint
from ovsdb.endpoint import AttachedEndpoint

GATEWAY_PORT = "overlay-gw0"


@dataclass(frozen=True)
class GatewayPort:
    """This host's own port into a network, as found on br-int."""

    network: str
    ofport: int
    mac: str
    ip: str


def gateway_ip(cidr: str) -> str:
    """The network's first host address: the gateway's, on every host (an anycast gateway)."""
    return str(next(ipaddress.ip_network(cidr).hosts()))


def gateway_mac(vni: int) -> str:
    """One MAC per network for the anycast gateway; locally administered (0a:...)."""
    return "0a:58:00:" + ":".join(f"{b:02x}" for b in vni.to_bytes(3, "big"))


def build_host_state(
    me: str,
    tunnel_ofport: int,
    networks: Iterable,
    hosts: Iterable,
    endpoints: Iterable,
    local_ports: Iterable[AttachedEndpoint],
    gateways: Iterable[GatewayPort] = (),
) -> HostState:
    """``networks``, ``hosts``, ``endpoints`` are the cluster state's records (name/vni/index,
    a network without an index left out,
    name/tunnel_ip, network/host/mac/ip); ``local_ports`` come from OVSDB."""
    nets = {n.name: NetworkSpec(n.name, n.vni, n.index) for n in networks if n.index is not None}
    peer_ip = {h.name: h.tunnel_ip for h in hosts if h.name != me}
    local = tuple(
        sorted(
            (
                LocalPort(a.endpoint.network, a.ofport, a.endpoint.mac, a.endpoint.ip)
                for a in local_ports
                if a.ofport and a.ofport > 0 and a.endpoint.network in nets
            ),
            key=lambda p: p.ofport,
        )
    )
    remote = tuple(
        sorted(
            (
                RemoteEndpoint(e.network, peer_ip[e.host], e.mac, e.ip)
                for e in endpoints
                if e.host in peer_ip and e.network in nets
            ),
            key=lambda r: (r.network, r.mac),
        )
    )
    gws = tuple(Gateway(g.network, g.ofport, g.mac, g.ip) for g in gateways if g.network in nets)
    return HostState(
        tunnel_ofport=tunnel_ofport,
        networks=tuple(sorted(nets.values(), key=lambda n: n.vni)),
        peers=tuple(sorted(peer_ip.values())),
        local=local,
        remote=remote,
        gateways=gws,
    )
