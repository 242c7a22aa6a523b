"""The br-int pipeline: a host's desired state in, the exact flows and groups out.

    classifier ─┬─ local pod port ──► port_security ──► arp_responder ──► l2_lookup
                ├─ gateway port ─────────────────────► arp_responder
                └─ tunnel, known peer, known VNI ─────────────────────────► l2_lookup

``metadata`` carries the packet's network as its VNI.  A packet from the mesh
is never sent back into it, with no flow for that: every peer sits behind the
one tunnel port, and OpenFlow never outputs a packet to its own in_port, so a
flood bucket or a remote-MAC flow aimed at the tunnel simply drops a packet
that came from it (ofproto/trace in the integration tests shows OVS doing so).

Every MAC is known proactively (from the cluster state), so unknown unicast is
dropped rather than flooded, and ARP for a known address is answered in the
switch without leaving the host.
"""

from __future__ import annotations

import functools

from openflow.cookies import Feature, cookie
from openflow.model import (
    ARP_REPLY,
    ARP_REQUEST,
    ETH_TYPE_ARP,
    ETH_TYPE_IP,
    METADATA_MASK,
    OFPP_IN_PORT,
    Bucket,
    Flow,
    Group,
    GroupAction,
    Move,
    Output,
    SetField,
    match,
)
from openflow.state import HostState, NetworkSpec
from openflow.tables import ARP_RESPONDER, CANARY, CLASSIFIER, L2_LOOKUP, PORT_SECURITY

MULTICAST = ("01:00:00:00:00:00", "01:00:00:00:00:00")

PRIO_DEFAULT = 0
PRIO_FLOOD = 50
PRIO_NORMAL = 100


def build(state: HostState, generation: int) -> tuple[list[Flow], list[Group]]:
    """Every flow and group this host's br-int must have."""
    flows = [
        *_defaults(generation),
        *_classifier(state, generation),
        *_port_security(state, generation),
        *_arp_responder(state, generation),
        *_l2_lookup(state, generation),
    ]
    return flows, _flood_groups(state)


def _defaults(gen: int) -> list[Flow]:
    c = cookie(Feature.DEFAULTS, gen)
    return [
        Flow(CLASSIFIER, PRIO_DEFAULT, (), c),  # drop
        Flow(PORT_SECURITY, PRIO_DEFAULT, (), c),  # drop: a spoof
        Flow(ARP_RESPONDER, PRIO_DEFAULT, (), c, goto=L2_LOOKUP),
        Flow(L2_LOOKUP, PRIO_DEFAULT, (), c),  # drop: unknown unicast
        Flow(CANARY, PRIO_DEFAULT, (), cookie(Feature.CANARY, gen)),
    ]


def _classifier(state: HostState, gen: int) -> list[Flow]:
    flows = []
    # A pod's port goes through port security; the host's own gateway port is trusted.
    for ports, feature, next_table in (
        (state.local, Feature.CLASSIFY_LOCAL, PORT_SECURITY),
        (state.gateways, Feature.GATEWAY, ARP_RESPONDER),
    ):
        c = cookie(feature, gen)
        for port in ports:
            flows.append(
                Flow(
                    CLASSIFIER,
                    PRIO_NORMAL,
                    match(in_port=port.ofport),
                    c,
                    write_metadata=(state.network(port.network).vni, METADATA_MASK),
                    goto=next_table,
                )
            )
    # Tunnel ingress only from a known peer and for a known VNI: anything else is dropped.
    c_tun = cookie(Feature.CLASSIFY_TUNNEL, gen)
    for peer in state.peers:
        for net in state.networks:
            flows.append(
                Flow(
                    CLASSIFIER,
                    PRIO_NORMAL,
                    match(in_port=state.tunnel_ofport, tun_ipv4_src=peer, tunnel_id=net.vni),
                    c_tun,
                    write_metadata=(net.vni, METADATA_MASK),
                    goto=L2_LOOKUP,
                )
            )
    return flows


def _port_security(state: HostState, gen: int) -> list[Flow]:
    c = cookie(Feature.PORT_SECURITY, gen)
    flows = []
    for port in state.local:
        flows.append(
            Flow(
                PORT_SECURITY,
                PRIO_NORMAL,
                match(
                    in_port=port.ofport, eth_src=port.mac, eth_type=ETH_TYPE_IP, ipv4_src=port.ip
                ),
                c,
                goto=ARP_RESPONDER,
            )
        )
        flows.append(
            Flow(
                PORT_SECURITY,
                PRIO_NORMAL,
                match(
                    in_port=port.ofport,
                    eth_src=port.mac,
                    eth_type=ETH_TYPE_ARP,
                    arp_sha=port.mac,
                    arp_spa=port.ip,
                ),
                c,
                goto=ARP_RESPONDER,
            )
        )
    return flows


@functools.lru_cache(maxsize=1 << 16)
def _arp_reply(mac: str, ip: str) -> tuple:
    """Turn an ARP request into the reply for ``ip`` is-at ``mac``, back out the way it came."""
    return (
        Move("eth_src", "eth_dst"),
        SetField("eth_src", mac),
        SetField("arp_op", ARP_REPLY),
        Move("arp_sha", "arp_tha"),
        Move("arp_spa", "arp_tpa"),
        SetField("arp_sha", mac),
        SetField("arp_spa", ip),
        Output(OFPP_IN_PORT),
    )


def _arp_responder(state: HostState, gen: int) -> list[Flow]:
    c = cookie(Feature.ARP_RESPONDER, gen)
    flows = []
    for ep in (*state.local, *state.remote, *state.gateways):
        vni = state.network(ep.network).vni
        flows.append(
            Flow(
                ARP_RESPONDER,
                PRIO_NORMAL,
                match(metadata=vni, eth_type=ETH_TYPE_ARP, arp_op=ARP_REQUEST, arp_tpa=ep.ip),
                c,
                actions=_arp_reply(ep.mac, ep.ip),
            )
        )
    return flows


def _l2_lookup(state: HostState, gen: int) -> list[Flow]:
    flows = []
    for ports, feature in ((state.local, Feature.L2_LOCAL), (state.gateways, Feature.GATEWAY)):
        c = cookie(feature, gen)
        for port in ports:
            vni = state.network(port.network).vni
            flows.append(
                Flow(
                    L2_LOOKUP,
                    PRIO_NORMAL,
                    match(metadata=vni, eth_dst=port.mac),
                    c,
                    actions=(Output(port.ofport),),
                )
            )
    c_remote = cookie(Feature.L2_REMOTE, gen)
    for ep in state.remote:
        vni = state.network(ep.network).vni
        flows.append(
            Flow(
                L2_LOOKUP,
                PRIO_NORMAL,
                match(metadata=vni, eth_dst=ep.mac),
                c_remote,
                actions=(
                    SetField("tunnel_id", vni),
                    SetField("tun_ipv4_dst", ep.host_ip),
                    Output(state.tunnel_ofport),
                ),
            )
        )
    c_flood = cookie(Feature.FLOOD, gen)
    for net in state.networks:
        flows.append(
            Flow(
                L2_LOOKUP,
                PRIO_FLOOD,
                match(metadata=net.vni, eth_dst=MULTICAST),
                c_flood,
                actions=(GroupAction(net.vni),),
            )
        )
    return flows


def _flood_groups(state: HostState) -> list[Group]:
    """One ALL group per network, its id the VNI: local ports, gateway, and peers."""
    groups = []
    for net in state.networks:
        local = [
            Bucket((Output(p.ofport),))
            for p in (*state.local, *state.gateways)
            if p.network == net.name
        ]
        groups.append(Group(net.vni, (*local, *_peer_buckets(state, net))))
    return groups


def _peer_buckets(state: HostState, net: NetworkSpec) -> list[Bucket]:
    """One bucket per peer that has an endpoint in ``net``: broadcast reaches only hosts
    that can use it."""
    hosts = sorted({ep.host_ip for ep in state.remote if ep.network == net.name})
    return [
        Bucket(
            (
                SetField("tunnel_id", net.vni),
                SetField("tun_ipv4_dst", host),
                Output(state.tunnel_ofport),
            )
        )
        for host in hosts
    ]
