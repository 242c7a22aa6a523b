"""The br-int pipeline: a host's desired state in, the exact flows and groups out.

    classifier ─┬─ local pod port ──► port_security ──► arp_responder ──► l2_forward ──► output
                ├─ gateway port ─────────────────────► arp_responder
                └─ tunnel, known peer, known VNI ─────────────────────────► l2_forward

The classifier writes the packet's source kind and its network's dense index into
registers (openflow/registers.py); l2_forward decides (the output port in a register,
and for a remote host tun_id/tun_dst, or flood) and output acts on the decision, so the
stages to come (conntrack, policy) sit between deciding and acting.  A packet from the
mesh is never sent back into it, with no flow for that: every peer sits behind the one
tunnel port, and OpenFlow never outputs a packet to its own in_port, so a flood bucket
or a remote-MAC decision aimed at the tunnel simply drops a packet that came from it
(ofproto/trace in the integration tests shows OVS doing so).

Every MAC is known proactively (from the cluster state), so unknown unicast is
dropped rather than flooded, and ARP for a known address is answered in the
switch without leaving the host.
"""

from __future__ import annotations

import functools

from openflow import cookies
from openflow.cookies import Feature
from openflow.model import (
    ARP_REPLY,
    ARP_REQUEST,
    CT_EST,
    CT_INV,
    CT_RPL,
    CT_TRK,
    ETH_TYPE_ARP,
    ETH_TYPE_IP,
    INTERN_SIZE,
    OFPP_IN_PORT,
    Bucket,
    Ct,
    Flow,
    Group,
    GroupAction,
    Load,
    Move,
    Output,
    OutputReg,
    SetField,
    match,
)
from openflow.registers import (
    DEST_KIND,
    FROM_GATEWAY,
    NETWORK,
    OUT_PORT,
    SOURCE_KIND,
    Dest,
    Source,
    matching,
)
from openflow.registers import load as _load
from openflow.state import Gateway, HostState, LocalPort, NetworkSpec, RemoteEndpoint
from openflow.tables import (
    ARP_RESPONDER,
    CANARY,
    CLASSIFIER,
    HOST_CONNTRACK,
    HOST_RETURN,
    L2_FORWARD,
    OUTPUT,
    PORT_SECURITY,
)

# Actions and cookies that many flows share are one object each (see model.INTERN_SIZE):
# the ARP responder's fixed actions, and per network or peer the tunnel actions.
cookie = functools.lru_cache(maxsize=INTERN_SIZE)(cookies.cookie)
_shared_set_field = functools.lru_cache(maxsize=INTERN_SIZE)(SetField)
_shared_load = functools.lru_cache(maxsize=INTERN_SIZE)(_load)
_TO_PORT = _load(DEST_KIND, Dest.PORT)
_TO_POD = _load(DEST_KIND, Dest.POD)
_TO_FLOOD = _load(DEST_KIND, Dest.FLOOD)
_MARK_FROM_GATEWAY = _load(FROM_GATEWAY, 1)
# A reply (either direction's later packets are +est; +rpl only the reply's) of a
# connection conntrack could follow.
_REPLY = (CT_TRK | CT_EST | CT_RPL, CT_TRK | CT_EST | CT_RPL | CT_INV)
_ARP_HEAD = (Move("eth_src", "eth_dst"),)
_ARP_MIDDLE = (
    SetField("arp_op", ARP_REPLY),
    Move("arp_sha", "arp_tha"),
    Move("arp_spa", "arp_tpa"),
)
_ARP_TAIL = (Output(OFPP_IN_PORT),)

MULTICAST = ("01:00:00:00:00:00", "01:00:00:00:00:00")
POD_ADDRESSES = ("100.64.0.0", "255.192.0.0")  # 100.64.0.0/10: every network's pods

PRIO_DEFAULT = 0
PRIO_FLOOD = 50
PRIO_NORMAL = 100
PRIO_COMMIT = 200


def build(state: HostState, generation: int) -> tuple[list[Flow], list[Group]]:
    """Every flow and group this host's br-int must have: the composition of the
    per-object builders below (openflow/incremental.py applies the same builders one
    object at a time; this full build is its oracle and the (re)connect path)."""
    flows = list(defaults_flows(generation))
    for port in state.local:
        flows += local_port_flows(port, state.network(port.network), generation)
    for gw in state.gateways:
        flows += gateway_flows(gw, state.network(gw.network), generation)
    for peer in state.peers:
        for net in state.networks:
            flows += tunnel_flows(peer, net, state.tunnel_ofport, generation)
    for ep in state.remote:
        flows += remote_flows(ep, state.network(ep.network), state.tunnel_ofport, generation)
    for net in state.networks:
        flows += network_flows(net, generation)
    groups = []
    for net in state.networks:
        groups.append(
            flood_group(
                net,
                [p.ofport for p in state.local if p.network == net.name],
                [g.ofport for g in state.gateways if g.network == net.name],
                sorted({ep.host_ip for ep in state.remote if ep.network == net.name}),
                state.tunnel_ofport,
            )
        )
    return flows, groups


# -- per-object builders: the flows of one object, keyed in openflow/incremental.py by
#    (feature, object) -----------------------------------------------------------------


def defaults_flows(gen: int) -> tuple[Flow, ...]:
    """Table misses, acting on a port decision, and the canary: there whatever the state."""
    c = cookie(Feature.DEFAULTS, gen)
    return (
        Flow(CLASSIFIER, PRIO_DEFAULT, (), c),  # drop
        Flow(PORT_SECURITY, PRIO_DEFAULT, (), c),  # drop: a spoof
        Flow(ARP_RESPONDER, PRIO_DEFAULT, (), c, goto=L2_FORWARD),
        Flow(L2_FORWARD, PRIO_DEFAULT, (), c),  # drop: unknown unicast
        Flow(HOST_CONNTRACK, PRIO_DEFAULT, (), c, goto=OUTPUT),
        Flow(HOST_RETURN, PRIO_DEFAULT, (), c, goto=OUTPUT),
        *(
            Flow(
                OUTPUT,
                PRIO_NORMAL,
                match(reg0=matching(DEST_KIND, dest)),
                c,
                actions=(OutputReg(OUT_PORT),),
            )
            for dest in (Dest.PORT, Dest.POD)
        ),
        Flow(OUTPUT, PRIO_DEFAULT, (), c),  # drop: no decision
        Flow(CANARY, PRIO_DEFAULT, (), cookie(Feature.CANARY, gen)),
    )


def _classify(source: Source, net: NetworkSpec) -> tuple[Load, Load]:
    return (_shared_load(SOURCE_KIND, source), _shared_load(NETWORK, net.index))


def _forward(
    net: NetworkSpec, mac: str, feature: Feature, gen: int, *actions, dest: Dest = Dest.PORT
) -> Flow:
    """The decision for ``mac`` in ``net``: ``actions`` set the output port (and tunnel),
    then on to the output stage; a pod's (``dest`` POD, or a remote one's through the
    tunnel) by way of host_conntrack, where a connection from the gateway is committed
    and a reply to one is sent back to the gateway."""
    pod = dest == Dest.POD or feature == Feature.L2_REMOTE
    return Flow(
        L2_FORWARD,
        PRIO_NORMAL,
        match(reg2=matching(NETWORK, net.index), eth_dst=mac),
        cookie(feature, gen),
        actions=(*actions, _TO_POD if dest == Dest.POD else _TO_PORT),
        goto=HOST_CONNTRACK if pod else OUTPUT,
    )


def local_port_flows(port: LocalPort, net: NetworkSpec, gen: int) -> tuple[Flow, ...]:
    """A pod's port: classified into its network, then port security (its own MAC and IP
    only), its ARP answered, and its MAC delivered to it."""
    return (
        Flow(
            CLASSIFIER,
            PRIO_NORMAL,
            match(in_port=port.ofport),
            cookie(Feature.CLASSIFY_LOCAL, gen),
            actions=_classify(Source.POD, net),
            goto=PORT_SECURITY,
        ),
        *_port_security(port, gen),
        _arp_flow(net, port.mac, port.ip, gen),
        _forward(
            net, port.mac, Feature.L2_LOCAL, gen, SetField("reg1", port.ofport), dest=Dest.POD
        ),
    )


def gateway_flows(gw: Gateway, net: NetworkSpec, gen: int) -> tuple[Flow, ...]:
    """The host's own port into a network: trusted (no port security); its unique address
    and the network's anycast gateway address are both answered with its MAC."""
    c = cookie(Feature.GATEWAY, gen)
    anycast = gw.anycast not in (None, gw.ip)
    anycast_arp = (_arp_flow(net, gw.mac, gw.anycast, gen),) if anycast else ()
    return (
        Flow(
            CLASSIFIER,
            PRIO_NORMAL,
            match(in_port=gw.ofport),
            c,
            actions=_classify(Source.GATEWAY, net),
            goto=ARP_RESPONDER,
        ),
        _arp_flow(net, gw.mac, gw.ip, gen),
        *anycast_arp,
        _forward(net, gw.mac, Feature.GATEWAY, gen, SetField("reg1", gw.ofport)),
        *_host_conntrack(gw, net, c),
    )


def _host_conntrack(gw: Gateway, net: NetworkSpec, c: int) -> tuple[Flow, ...]:
    """Connections the host's stack sends into the network are committed in the network's
    zone with ct_mark FROM_GATEWAY; a packet decided to a local pod is looked up there,
    and a reply of such a connection goes to the gateway instead (its MAC as destination),
    whatever address it is for.  That is what makes kube-proxy's DNAT work without
    masquerade (Antrea's gateway ct_mark): pod A's packet to a ClusterIP reaches the host
    through the gateway, is DNATed there to pod B (on any host) and comes back into br-int
    through the gateway; B's reply is addressed to A, and without this would reach A with
    B's address, not the ClusterIP's.  Only this network's local pods pay the lookup (one
    recirculation); packets to remote pods are committed only when they come from the
    gateway."""
    zone = NETWORK  # the network's index is its zone (written by the classifier)
    from_gateway = matching(SOURCE_KIND, Source.GATEWAY)
    return (
        # The host's own connections (from its own address): replies come to its MAC.
        Flow(
            HOST_CONNTRACK,
            PRIO_COMMIT + 10,
            match(
                reg0=from_gateway,
                reg2=matching(NETWORK, net.index),
                eth_type=ETH_TYPE_IP,
                ipv4_src=gw.ip,
            ),
            c,
            goto=OUTPUT,
        ),
        # A pod's packet forwarded by the host (DNATed): committed.  Replies of the pods'
        # egress (from outside addresses) are not: nothing needs to find them again.
        Flow(
            HOST_CONNTRACK,
            PRIO_COMMIT,
            match(
                reg0=from_gateway,
                reg2=matching(NETWORK, net.index),
                eth_type=ETH_TYPE_IP,
                ipv4_src=POD_ADDRESSES,
            ),
            c,
            actions=(Ct(zone=zone, commit=True, exec=(_MARK_FROM_GATEWAY,)),),
            goto=OUTPUT,
        ),
        Flow(
            HOST_CONNTRACK,
            PRIO_NORMAL,
            match(
                reg0=matching(DEST_KIND, Dest.POD),
                reg2=matching(NETWORK, net.index),
                eth_type=ETH_TYPE_IP,
            ),
            c,
            actions=(Ct(zone=zone, table=HOST_RETURN),),
        ),
        Flow(
            HOST_RETURN,
            PRIO_NORMAL,
            match(
                reg2=matching(NETWORK, net.index),
                ct_state=_REPLY,
                ct_mark=matching(FROM_GATEWAY, 1),
            ),
            c,
            actions=(
                SetField("eth_dst", gw.mac),
                SetField("reg1", gw.ofport),
                _TO_PORT,
            ),
            goto=OUTPUT,
        ),
    )


def tunnel_flows(peer: str, net: NetworkSpec, tunnel_ofport: int, gen: int) -> tuple[Flow, ...]:
    """Tunnel ingress from one known peer for one known VNI; anything else is dropped."""
    return (
        Flow(
            CLASSIFIER,
            PRIO_NORMAL,
            match(in_port=tunnel_ofport, tun_ipv4_src=peer, tunnel_id=net.vni),
            cookie(Feature.CLASSIFY_TUNNEL, gen),
            actions=_classify(Source.TUNNEL, net),
            goto=L2_FORWARD,
        ),
    )


def remote_flows(
    ep: RemoteEndpoint, net: NetworkSpec, tunnel_ofport: int, gen: int
) -> tuple[Flow, ...]:
    """A pod on another host: its ARP answered here, its MAC sent into the tunnel."""
    return (
        _arp_flow(net, ep.mac, ep.ip, gen),
        _forward(
            net,
            ep.mac,
            Feature.L2_REMOTE,
            gen,
            _shared_set_field("tunnel_id", net.vni),
            _shared_set_field("tun_ipv4_dst", ep.host_ip),
            _shared_set_field("reg1", tunnel_ofport),
        ),
    )


def network_flows(net: NetworkSpec, gen: int) -> tuple[Flow, ...]:
    """Broadcast and multicast of a network are decided to flood, and flooding is its
    group."""
    c = cookie(Feature.FLOOD, gen)
    return (
        Flow(
            L2_FORWARD,
            PRIO_FLOOD,
            match(reg2=matching(NETWORK, net.index), eth_dst=MULTICAST),
            c,
            actions=(_TO_FLOOD,),
            goto=OUTPUT,
        ),
        Flow(
            OUTPUT,
            PRIO_NORMAL,
            match(reg0=matching(DEST_KIND, Dest.FLOOD), reg2=matching(NETWORK, net.index)),
            c,
            actions=(GroupAction(flood_group_id(net)),),
        ),
    )


def flood_group(
    net: NetworkSpec,
    local_ofports: list[int],
    gateway_ofports: list[int],
    peer_ips: list[str],
    tunnel_ofport: int,
) -> Group:
    """One ALL group per network, its id the VNI: local ports, gateway, and one bucket per
    peer that has an endpoint in the network (broadcast reaches only hosts that can use
    it).  The caller gives the members in order (ports as the state lists them, peers
    sorted), so the full build and the incremental engine make equal groups."""
    return Group(
        flood_group_id(net),
        (
            *(Bucket((Output(p),)) for p in (*local_ofports, *gateway_ofports)),
            *(
                Bucket(
                    (
                        SetField("tunnel_id", net.vni),
                        SetField("tun_ipv4_dst", host),
                        Output(tunnel_ofport),
                    )
                )
                for host in peer_ips
            ),
        ),
    )


def flood_group_id(net: NetworkSpec) -> int:
    """A network's flood group id: its VNI (openflow/cookies.py ranges group ids per
    feature; openflow/incremental.py keys flood groups by VNI for that reason)."""
    return cookies.group_id(Feature.FLOOD, net.vni)


def _port_security(port: LocalPort, gen: int) -> tuple[Flow, ...]:
    c = cookie(Feature.PORT_SECURITY, gen)
    return (
        Flow(
            PORT_SECURITY,
            PRIO_NORMAL,
            match(in_port=port.ofport, eth_src=port.mac, eth_type=ETH_TYPE_IP, ipv4_src=port.ip),
            c,
            goto=ARP_RESPONDER,
        ),
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
        ),
    )


def _arp_flow(net: NetworkSpec, mac: str, ip: str, gen: int) -> Flow:
    """An ARP request for ``ip`` in the network turned into the reply "``ip`` is at ``mac``",
    sent back out the way it came."""
    return Flow(
        ARP_RESPONDER,
        PRIO_NORMAL,
        match(
            reg2=matching(NETWORK, net.index), eth_type=ETH_TYPE_ARP, arp_op=ARP_REQUEST, arp_tpa=ip
        ),
        cookie(Feature.ARP_RESPONDER, gen),
        actions=(
            *_ARP_HEAD,
            SetField("eth_src", mac),
            *_ARP_MIDDLE,
            SetField("arp_sha", mac),
            SetField("arp_spa", ip),
            *_ARP_TAIL,
        ),
    )
