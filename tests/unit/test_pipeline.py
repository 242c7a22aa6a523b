"""The pipeline, asserted by what the flows do to packets (openflow.simulate)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openflow import pipeline
from openflow.cookies import Feature, feature_of, generation_of
from openflow.model import ETH_TYPE_ARP, ETH_TYPE_IP, Flow, match
from openflow.simulate import Switch
from openflow.state import Gateway, HostState, LocalPort, NetworkSpec, RemoteEndpoint
from openflow.tables import CLASSIFIER, L2_FORWARD

TUN = 1
BCAST = "ff:ff:ff:ff:ff:ff"
H2, H3 = "198.18.0.2", "198.18.0.3"

P1 = LocalPort("default", 2, "0a:58:64:40:00:02", "100.64.0.2")
P2 = LocalPort("default", 3, "0a:58:64:40:00:03", "100.64.0.3")
# The blue network reuses the default network's addresses: only the network tells them apart.
B1 = LocalPort("blue", 4, "0a:58:64:40:01:02", "100.64.0.2")
B2 = LocalPort("blue", 5, "0a:58:64:40:01:03", "100.64.0.3")
# The host's gateway: its own address (unique in the cluster) and the anycast 100.64.0.1.
GW = Gateway("default", 9, "0a:58:64:40:00:0a", "100.64.0.10", "100.64.0.1")
R1 = RemoteEndpoint("default", H2, "0a:58:64:40:00:42", "100.64.0.66")
RB = RemoteEndpoint("blue", H3, "0a:58:64:40:01:42", "100.64.0.66")

STATE = HostState(
    tunnel_ofport=TUN,
    networks=(NetworkSpec("default", 5001, 1), NetworkSpec("blue", 5002, 2)),
    peers=(H2, H3),
    local=(P1, P2, B1, B2),
    remote=(R1, RB),
    gateways=(GW,),
)


@pytest.fixture(scope="module")
def switch():
    return Switch(*pipeline.build(STATE, generation=7))


def ip_packet(src, dst_mac, dst_ip, **over):
    pkt = {
        "in_port": src.ofport,
        "eth_src": src.mac,
        "eth_dst": dst_mac,
        "eth_type": ETH_TYPE_IP,
        "ipv4_src": src.ip,
        "ipv4_dst": dst_ip,
    }
    pkt.update(over)
    return pkt


def arp_request(src, target_ip, **over):
    pkt = {
        "in_port": src.ofport,
        "eth_src": src.mac,
        "eth_dst": BCAST,
        "eth_type": ETH_TYPE_ARP,
        "arp_op": 1,
        "arp_sha": src.mac,
        "arp_spa": src.ip,
        "arp_tha": "00:00:00:00:00:00",
        "arp_tpa": target_ip,
    }
    pkt.update(over)
    return pkt


def from_tunnel(peer, vni, **fields):
    return {"in_port": TUN, "tun_ipv4_src": peer, "tunnel_id": vni, **fields}


def test_local_pod_to_local_pod(switch):
    t = switch.process(ip_packet(P1, P2.mac, P2.ip))
    assert t.ports == {P2.ofport}, t.path


def test_pod_to_remote_pod_leaves_on_the_tunnel_to_its_host_with_the_vni(switch):
    t = switch.process(ip_packet(P1, R1.mac, R1.ip))
    [out] = t.emitted
    assert out.port == TUN
    assert out.get("tunnel_id") == 5001
    assert out.get("tun_ipv4_dst") == H2


def test_tunnel_packet_from_a_peer_reaches_the_local_pod(switch):
    pkt = from_tunnel(H2, 5001, eth_src=R1.mac, eth_dst=P1.mac, eth_type=ETH_TYPE_IP)
    assert switch.process(pkt).ports == {P1.ofport}


@pytest.mark.parametrize(
    "peer,vni",
    [("198.18.0.99", 5001), (H2, 7777)],
    ids=["unknown-peer", "unknown-vni"],
)
def test_tunnel_packets_from_unknown_peers_or_vnis_are_dropped(switch, peer, vni):
    pkt = from_tunnel(peer, vni, eth_src=R1.mac, eth_dst=P1.mac, eth_type=ETH_TYPE_IP)
    assert switch.process(pkt).emitted == ()


def test_a_packet_from_the_mesh_is_never_sent_back_into_it(switch):
    pkt = from_tunnel(H2, 5001, eth_src=R1.mac, eth_dst=R1.mac, eth_type=ETH_TYPE_IP)
    assert switch.process(pkt).emitted == ()


def test_arp_for_a_remote_pod_is_answered_in_the_switch(switch):
    [reply] = switch.process(arp_request(P1, R1.ip)).emitted
    assert reply.port == P1.ofport
    assert reply.get("arp_op") == 2
    assert (reply.get("arp_sha"), reply.get("arp_spa")) == (R1.mac, R1.ip)
    assert (reply.get("arp_tha"), reply.get("arp_tpa")) == (P1.mac, P1.ip)
    assert (reply.get("eth_src"), reply.get("eth_dst")) == (R1.mac, P1.mac)


def test_overlapping_addresses_resolve_within_their_own_network(switch):
    [reply] = switch.process(arp_request(B2, "100.64.0.2")).emitted
    assert reply.get("arp_sha") == B1.mac  # not P1, which has the same IP in default
    [reply] = switch.process(arp_request(P2, "100.64.0.2")).emitted
    assert reply.get("arp_sha") == P1.mac


def test_networks_are_isolated(switch):
    assert switch.process(ip_packet(P1, B1.mac, B1.ip)).emitted == ()
    assert switch.process(ip_packet(P1, RB.mac, RB.ip)).emitted == ()
    pkt = from_tunnel(H3, 5002, eth_src=RB.mac, eth_dst=P1.mac, eth_type=ETH_TYPE_IP)
    assert switch.process(pkt).emitted == ()


@pytest.mark.parametrize(
    "pkt",
    [
        ip_packet(P1, P2.mac, P2.ip, ipv4_src="100.64.0.99"),
        ip_packet(P1, P2.mac, P2.ip, eth_src="0a:58:64:40:00:99"),
        ip_packet(P1, P2.mac, P2.ip, ipv4_src=P2.ip, eth_src=P2.mac),
        arp_request(P1, P2.ip, arp_spa="100.64.0.99"),
        arp_request(P1, P2.ip, arp_sha=P2.mac),
        {"in_port": P1.ofport, "eth_src": P1.mac, "eth_dst": P2.mac, "eth_type": 0x86DD},
    ],
    ids=["forged-ip", "forged-mac", "stolen-identity", "arp-forged-ip", "arp-forged-mac", "ipv6"],
)
def test_spoofed_packets_reach_nobody(switch, pkt):
    t = switch.process(pkt)
    assert t.emitted == (), t.path


def test_broadcast_reaches_the_network_and_only_peers_that_host_it(switch):
    t = switch.process(arp_request(P1, "100.64.0.200"))  # unknown address: flooded
    assert t.ports == {P2.ofport, GW.ofport, TUN}
    tunnelled = [e for e in t.emitted if e.port == TUN]
    assert [(e.get("tun_ipv4_dst"), e.get("tunnel_id")) for e in tunnelled] == [(H2, 5001)]


def test_broadcast_from_the_mesh_is_flooded_locally_only(switch):
    pkt = from_tunnel(H2, 5001, eth_src=R1.mac, eth_dst=BCAST, eth_type=ETH_TYPE_ARP)
    assert switch.process(pkt).ports == {P1.ofport, P2.ofport, GW.ofport}


def test_the_host_gateway_reaches_its_pods_and_resolves_them(switch):
    gw = LocalPort(GW.network, GW.ofport, GW.mac, GW.ip)
    assert switch.process(ip_packet(gw, P1.mac, P1.ip)).ports == {P1.ofport}
    [reply] = switch.process(arp_request(gw, P2.ip)).emitted
    assert (reply.port, reply.get("arp_sha")) == (GW.ofport, P2.mac)
    assert switch.process(ip_packet(P1, GW.mac, GW.ip)).ports == {GW.ofport}


def test_pods_resolve_the_anycast_gateway_to_their_own_hosts_gateway(switch):
    for pod in (P1, P2):
        [reply] = switch.process(arp_request(pod, "100.64.0.1")).emitted
        assert (reply.port, reply.get("arp_sha"), reply.get("arp_spa")) == (
            pod.ofport,
            GW.mac,
            "100.64.0.1",
        )
    assert switch.process(ip_packet(P1, GW.mac, "198.18.255.254")).ports == {GW.ofport}


def test_another_hosts_gateway_is_reached_through_the_tunnel_like_its_pods():
    """A peer's gateway (from its host record) is a remote endpoint: this host's gateway and
    pods resolve its unique address and reach its MAC through the tunnel, and its replies
    to this host's gateway come out of the gateway port."""
    peer_gw = RemoteEndpoint("default", H3, "0a:58:64:40:00:80", "100.64.0.128")
    state = HostState(
        tunnel_ofport=TUN,
        networks=STATE.networks,
        peers=STATE.peers,
        local=STATE.local,
        remote=(*STATE.remote, peer_gw),
        gateways=STATE.gateways,
    )
    sw = Switch(*pipeline.build(state, generation=1))
    gw = LocalPort(GW.network, GW.ofport, GW.mac, GW.ip)
    [reply] = sw.process(arp_request(gw, peer_gw.ip)).emitted
    assert (reply.port, reply.get("arp_sha")) == (GW.ofport, peer_gw.mac)
    [out] = sw.process(ip_packet(gw, peer_gw.mac, peer_gw.ip)).emitted
    assert (out.port, out.get("tun_ipv4_dst"), out.get("tunnel_id")) == (TUN, H3, 5001)
    back = from_tunnel(H2, 5001, eth_src=R1.mac, eth_dst=GW.mac, eth_type=ETH_TYPE_IP)
    assert sw.process(back).ports == {GW.ofport}


def tcp(pkt, sport, dport, flags=0x02):
    return {**pkt, "ip_proto": 6, "tcp_src": sport, "tcp_dst": dport, "tcp_flags": flags}


@pytest.mark.parametrize("server", [R1, P2], ids=["remote-endpoint", "local-endpoint"])
def test_replies_of_connections_from_the_gateway_go_back_to_the_gateway(server):
    """kube-proxy: pod P1's connection to a ClusterIP enters the host through the gateway,
    is DNATed there to a pod on any host and comes back into br-int from the gateway with
    P1's address as source.  The server's reply, addressed to P1, must go to the gateway
    (to be un-DNATed), with the gateway's MAC; P1's own connections are untouched."""
    sw = Switch(*pipeline.build(STATE, generation=1))
    gw = LocalPort(GW.network, GW.ofport, GW.mac, GW.ip)
    dnated = ip_packet(gw, server.mac, server.ip, ipv4_src=P1.ip)
    [out] = sw.process(tcp(dnated, 40000, 80)).emitted
    assert out.port == (TUN if server is R1 else server.ofport)
    reply = (
        ip_packet(server, P1.mac, P1.ip)
        if server is P2
        else from_tunnel(
            H2,
            5001,
            eth_src=R1.mac,
            eth_dst=P1.mac,
            eth_type=ETH_TYPE_IP,
            ipv4_src=R1.ip,
            ipv4_dst=P1.ip,
        )
    )
    back = sw.process(tcp(reply, 80, 40000, flags=0x12))
    [to_host] = back.emitted
    assert (to_host.port, to_host.get("eth_dst")) == (GW.ofport, GW.mac), back.path
    # The same server answering P1's own connection (not through the host): to P1.
    direct = ip_packet(P1, server.mac, server.ip)
    sw.process(tcp(direct, 40001, 80))
    [to_pod] = sw.process(tcp(reply, 80, 40001, flags=0x12)).emitted
    assert (to_pod.port, to_pod.get("eth_dst")) == (P1.ofport, P1.mac)
    # No conntrack anywhere on the way: the reply's way back was learned.
    assert back.ct_states == () and sw.conntrack.zones == {}


def _learned(sw):
    return [f for fs in sw.tables.values() for f in fs if feature_of(f.cookie) == LEARNED]


def test_a_udp_reply_is_learned_too_and_icmp_is_not():
    """kube-proxy DNATs TCP, UDP and SCTP; a forwarded ICMP packet learns nothing (its
    reply goes straight to the pod, as without kube-proxy)."""
    sw = Switch(*pipeline.build(STATE, generation=1))
    gw = LocalPort(GW.network, GW.ofport, GW.mac, GW.ip)
    udp = {"ip_proto": 17, "udp_src": 5353, "udp_dst": 53}
    sw.process(ip_packet(gw, P2.mac, P2.ip, ipv4_src=P1.ip, **udp))
    [learned] = _learned(sw)
    assert generation_of(learned.cookie) == 0
    swapped = {"ip_proto": 17, "udp_src": 53, "udp_dst": 5353}
    [back] = sw.process(ip_packet(P2, P1.mac, P1.ip, **swapped)).emitted
    assert (back.port, back.get("eth_dst")) == (GW.ofport, GW.mac)
    sw.process(ip_packet(gw, P2.mac, P2.ip, ipv4_src=P1.ip, ip_proto=1))
    assert len(_learned(sw)) == 1
    [echo_reply] = sw.process(ip_packet(P2, P1.mac, P1.ip, ip_proto=1)).emitted
    assert echo_reply.port == P1.ofport


def test_a_pod_to_pod_packet_passes_no_conntrack_and_learns_nothing(switch):
    """The fast path: a pod's packet to a local pod looks host_return up and goes on to
    output; nothing is committed or learned."""
    t = switch.process(tcp(ip_packet(P2, P1.mac, P1.ip), 40000, 80))
    assert t.ports == {P1.ofport} and t.ct_states == (), t.path
    assert "host_return:0" in t.path and _learned(switch) == []


def test_the_hosts_own_connections_and_egress_replies_are_not_learned(switch):
    own = tcp(ip_packet(GW, P1.mac, P1.ip), 40000, 80)
    outside = tcp(ip_packet(GW, P1.mac, P1.ip, ipv4_src="198.18.255.254"), 80, 40000, 0x12)
    for pkt in (own, outside):
        t = switch.process(pkt)
        assert t.ports == {P1.ofport} and _learned(switch) == [], t.path


def test_a_network_without_a_gateway_learns_nothing(switch):
    t = switch.process(tcp(ip_packet(B1, B2.mac, B2.ip), 40000, 80))
    assert t.ports == {B2.ofport} and t.ct_states == () and "host_return:0" not in t.path


def test_unknown_ports_are_dropped(switch):
    assert switch.process({"in_port": 77, "eth_dst": P1.mac}).emitted == ()


LEARNED = Feature.HOST_RETURN_LEARNED


def test_every_flow_is_cookied_with_its_feature_and_generation():
    flows, _ = pipeline.build(STATE, generation=0xABCD)
    assert {generation_of(f.cookie) for f in flows} == {0xABCD}
    assert Feature.CANARY in {feature_of(f.cookie) for f in flows}
    assert all(
        feature_of(f.cookie) == Feature.ARP_RESPONDER
        for f in flows
        if f.table.name == "arp_responder" and f.priority > 0
    )


def test_a_flow_outside_its_table_declaration_fails_when_built():
    with pytest.raises(ValueError, match="does not match on eth_dst"):
        Flow(CLASSIFIER, 1, match(eth_dst=P1.mac), 0)
    with pytest.raises(ValueError, match="may not go to table classifier"):
        Flow(L2_FORWARD, 1, (), 0, goto=CLASSIFIER)


def test_state_refuses_endpoints_of_unknown_networks_or_hosts():
    with pytest.raises(ValueError, match="unknown network"):
        HostState(tunnel_ofport=1, local=(P1,))
    with pytest.raises(ValueError, match="not a known peer"):
        HostState(tunnel_ofport=1, networks=(NetworkSpec("default", 5001, 1),), remote=(R1,))


@st.composite
def host_states(draw):
    nets = draw(st.integers(1, 3))
    networks = tuple(NetworkSpec(f"n{i}", 100 + i, 1 + i) for i in range(nets))
    n_local = draw(st.integers(1, 6))
    local = tuple(
        LocalPort(
            f"n{draw(st.integers(0, nets - 1))}",
            10 + i,
            f"0a:00:00:00:00:{i:02x}",
            f"100.64.0.{10 + i}",
        )
        for i in range(n_local)
    )
    peers = ("198.18.0.2", "198.18.0.3")
    remote = tuple(
        RemoteEndpoint(
            f"n{draw(st.integers(0, nets - 1))}",
            draw(st.sampled_from(peers)),
            f"0a:00:00:00:01:{i:02x}",
            f"100.64.0.{100 + i}",
        )
        for i in range(draw(st.integers(0, 4)))
    )
    return HostState(tunnel_ofport=1, networks=networks, peers=peers, local=local, remote=remote)


@settings(max_examples=60, deadline=None)
@given(host_states())
def test_any_state_connects_within_networks_and_never_across(state):
    sw = Switch(*pipeline.build(state, generation=1))
    for src in state.local:
        for dst in (*state.local, *state.remote):
            if dst is src:
                continue
            t = sw.process(ip_packet(src, dst.mac, dst.ip))
            if dst.network != src.network:
                assert t.emitted == ()
            elif isinstance(dst, LocalPort):
                assert t.ports == {dst.ofport}
            else:
                [out] = t.emitted
                assert (out.port, out.get("tun_ipv4_dst")) == (1, dst.host_ip)


def test_remote_endpoints_flows_share_their_common_values():
    """10,000 remote endpoints must not hold 10,000 copies of one network's register match,
    the ARP responder's fixed actions or a peer's tunnel actions (engine memory)."""
    a, b = (
        pipeline.remote_flows(
            RemoteEndpoint("n", "198.18.0.2", mac, ip), NetworkSpec("n", 5, 1), 2, 1
        )
        for mac, ip in (("0a:58:00:00:00:01", "100.64.0.1"), ("0a:58:00:00:00:02", "100.64.0.2"))
    )
    for fa, fb in zip(a, b, strict=True):
        assert fa.cookie is fb.cookie
        shared = [(x, y) for x, y in zip(fa.match, fb.match, strict=True) if x == y]
        assert shared and all(x is y for x, y in shared)
        same = [(x, y) for x, y in zip(fa.actions, fb.actions, strict=True) if x == y]
        assert same and all(x is y for x, y in same)


def test_cookie_layout_selects_by_feature_object_and_generation():
    from openflow import cookies

    c = cookies.cookie(Feature.L2_REMOTE, 0xABCD, object_id=0x123456)
    assert c == 0x07_123456_0000ABCD
    assert (feature_of(c), cookies.object_of(c), generation_of(c)) == (
        Feature.L2_REMOTE,
        0x123456,
        0xABCD,
    )
    value, mask = cookies.feature_mask(Feature.L2_REMOTE)
    assert c & mask == value
    assert cookies.cookie(Feature.L2_LOCAL, 0xABCD) & mask != value
    value, mask = cookies.object_mask(Feature.L2_REMOTE, 0x123456)
    assert c & mask == value
    assert cookies.cookie(Feature.L2_REMOTE, 1, object_id=7) & mask != value
    with pytest.raises(ValueError):
        cookies.cookie(Feature.L2_REMOTE, 1, object_id=1 << 24)


def test_group_ids_are_ranged_per_feature():
    from openflow import cookies

    assert cookies.group_id(Feature.FLOOD, 5001) == 5001
    assert cookies.group_id(Feature.FLOOD, (1 << 24) - 1) < cookies.group_id(Feature.GATEWAY, 1)
    flows, groups = pipeline.build(STATE, generation=1)
    assert {g.group_id for g in groups} == {n.vni for n in STATE.networks}


def test_the_decision_and_the_output_are_separate_stages(switch):
    """Every kind of source reaches l2_forward, which only decides (no output of its
    own), and output acts on the decision; policy sits between the two (here, with no
    policy program, policy_conntrack lets everything on)."""
    from openflow.model import GroupAction, Output, OutputReg

    to_remote = switch.process(ip_packet(P1, R1.mac, R1.ip))
    assert [p.split(":")[0] for p in to_remote.path] == [
        "classifier",
        "port_security",
        "arp_responder",
        "l2_forward",
        "policy_conntrack",
        "host_conntrack",
        "output",
    ]
    from_gw = switch.process(ip_packet(GW, P1.mac, P1.ip))
    assert from_gw.ports == {P1.ofport} and from_gw.path[-4:] == (
        "l2_forward:100",
        "policy_conntrack:0",
        "host_conntrack:210",
        "output:100",
    )
    from_peer = switch.process(
        from_tunnel(H2, 5001, eth_src=R1.mac, eth_dst=P2.mac, eth_type=ETH_TYPE_IP)
    )
    assert from_peer.ports == {P2.ofport} and from_peer.path[0] == "classifier:100"
    flows, _ = pipeline.build(STATE, generation=1)
    outputs = (Output, OutputReg, GroupAction)
    deciding = [f for f in flows if f.table is L2_FORWARD]
    assert deciding and not any(isinstance(a, outputs) for f in deciding for a in f.actions)


def test_the_network_index_not_the_vni_tells_networks_apart():
    """Two networks, the same addresses: the classifier's register, not metadata, keeps
    a pod's ARP and traffic in its own network."""
    flows, _ = pipeline.build(STATE, generation=1)
    assert not any(f.write_metadata for f in flows)
    assert not any(m.name == "metadata" for f in flows for m in f.match)
    sw = Switch(flows, pipeline.build(STATE, generation=1)[1])
    assert sw.process(ip_packet(B1, B2.mac, B2.ip)).ports == {B2.ofport}
    assert sw.process(ip_packet(B1, P2.mac, P2.ip)).ports == set()
