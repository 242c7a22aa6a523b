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
    ETH_TYPE_ARP,
    ETH_TYPE_IP,
    FIELD_BITS,
    INTERN_SIZE,
    IPPROTO_TCP,
    IPPROTO_UDP,
    OFPP_IN_PORT,
    Bits,
    Bucket,
    Flow,
    Group,
    GroupAction,
    Learn,
    LearnLoadField,
    LearnMatchField,
    LearnMatchValue,
    LearnOutput,
    Load,
    Move,
    Output,
    OutputReg,
    SetField,
    match,
)
from openflow.registers import (
    DEST_KIND,
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
    POLICY_CONNTRACK,
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
    if state.policy is not None:
        flows += state.policy.flows(generation)
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
        Flow(POLICY_CONNTRACK, PRIO_DEFAULT, (), c, goto=HOST_CONNTRACK),
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
    then NetworkPolicy judges it (policy_conntrack, 60-72: netpol/compile.py), then
    host_conntrack, where a connection from the gateway learns its reply's way back to
    the gateway and a reply to one is sent there, then the output stage acts."""
    return Flow(
        L2_FORWARD,
        PRIO_NORMAL,
        match(reg2=matching(NETWORK, net.index), eth_dst=mac),
        cookie(feature, gen),
        actions=(*actions, _TO_POD if dest == Dest.POD else _TO_PORT),
        goto=POLICY_CONNTRACK,
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
    """The way back for connections the host's stack forwards into the network.  That
    is what makes kube-proxy's DNAT work without masquerade: pod A's packet to a
    ClusterIP reaches the host through the gateway, is DNATed there to pod B (on any
    host) and comes back into br-int through the gateway; B's reply is addressed to A,
    and delivered straight to A it would carry B's address, not the ClusterIP's.  So a
    pod-sourced TCP or UDP packet from the gateway learns (OVS's ``learn``) a flow in
    host_return matching its reply, which sends the reply to the gateway; a packet
    decided to a local pod only looks host_return up: no conntrack and no
    recirculation on the pod-to-pod path (conntrack there cost 10-15 % of its
    throughput on the userspace datapath, docs/benchmarks.md).  kube-proxy DNATs only
    TCP, UDP and SCTP; ICMP and the rest are not learned."""
    net_match = matching(NETWORK, net.index)
    from_gateway = matching(SOURCE_KIND, Source.GATEWAY)
    return (
        # The host's own connections (from its own address): replies come to its MAC.
        Flow(
            HOST_CONNTRACK,
            PRIO_COMMIT + 10,
            match(reg0=from_gateway, reg2=net_match, eth_type=ETH_TYPE_IP, ipv4_src=gw.ip),
            c,
            goto=OUTPUT,
        ),
        # A pod's packet forwarded by the host (DNATed): learns its reply's way back.
        *(
            Flow(
                HOST_CONNTRACK,
                PRIO_COMMIT,
                match(
                    reg0=from_gateway,
                    reg2=net_match,
                    eth_type=ETH_TYPE_IP,
                    ip_proto=proto,
                    ipv4_src=POD_ADDRESSES,
                ),
                c,
                actions=(_LEARN_REPLY[proto],),
                goto=OUTPUT,
            )
            for proto in (IPPROTO_TCP, IPPROTO_UDP)
        ),
        Flow(
            HOST_CONNTRACK,
            PRIO_NORMAL,
            match(reg0=matching(DEST_KIND, Dest.POD), reg2=net_match, eth_type=ETH_TYPE_IP),
            c,
            goto=HOST_RETURN,
        ),
    )


def _learn_reply(proto: int, src_port: str, dst_port: str, idle: int, fin_idle: int) -> Learn:
    """The learn action installing, in host_return, the flow for the reply of this
    packet's connection: same network, addresses and ports swapped; it sets the
    destination MAC to this packet's source (the gateway's) and outputs to this packet's
    in_port (the gateway's port).  Cookie generation 0 (see Feature.HOST_RETURN_LEARNED)."""

    def bits(name: str) -> Bits:
        return Bits(name, 0, FIELD_BITS[name] - 1)

    return Learn(
        table=HOST_RETURN,
        priority=PRIO_NORMAL,
        cookie=cookies.cookie(Feature.HOST_RETURN_LEARNED, 0),
        idle_timeout=idle,
        fin_idle_timeout=fin_idle,
        specs=(
            LearnMatchValue(bits("eth_type"), ETH_TYPE_IP),
            LearnMatchValue(bits("ip_proto"), proto),
            LearnMatchField(NETWORK, NETWORK),
            LearnMatchField(bits("ipv4_src"), bits("ipv4_dst")),
            LearnMatchField(bits("ipv4_dst"), bits("ipv4_src")),
            LearnMatchField(bits(src_port), bits(dst_port)),
            LearnMatchField(bits(dst_port), bits(src_port)),
            LearnLoadField(bits("eth_dst"), bits("eth_src")),
            LearnOutput(bits("in_port")),
        ),
    )


# Idle timeouts (docs/pipeline.md, 80/81): a TCP connection may idle for long (kube-proxy's
# own conntrack keeps an established one for days), so an hour, and 10 s after a FIN; a
# UDP "connection" is a guess, so 5 minutes (Linux's UDP stream timeout is 2).
_LEARN_REPLY = {
    IPPROTO_TCP: _learn_reply(IPPROTO_TCP, "tcp_src", "tcp_dst", idle=3600, fin_idle=10),
    IPPROTO_UDP: _learn_reply(IPPROTO_UDP, "udp_src", "udp_dst", idle=300, fin_idle=0),
}


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
