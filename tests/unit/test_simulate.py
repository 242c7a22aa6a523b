"""The simulator's L3 and conntrack actions, each on its own and in a small pipeline
(tests/unit/l3_flows.py, which the on-switch test checks against ofproto/trace)."""

from __future__ import annotations

import pytest

from openflow.model import (
    ALL_FIELDS,
    CT_EST,
    CT_INV,
    CT_NEW,
    CT_RPL,
    CT_TRK,
    ETH_TYPE_IP,
    IPPROTO_ICMP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    Bits,
    Conjunction,
    Ct,
    DecTtl,
    Flow,
    Load,
    Nat,
    Output,
    OutputReg,
    Resubmit,
    match,
)
from openflow.simulate import Switch, ct_state_text
from openflow.tables import Table
from tests.unit import l3_flows as L

T0 = Table(0, "a", "test", ALL_FIELDS, (1, 2))
T1 = Table(1, "b", "test", ALL_FIELDS, (2,))
T2 = Table(2, "c", "test", ALL_FIELDS, ())


def ip(**fields):
    return match(eth_type=ETH_TYPE_IP, **fields)


def pkt(in_port, src, dst, proto=IPPROTO_TCP, sport=40000, dport=22, **extra):
    out = {
        "in_port": in_port,
        "eth_type": ETH_TYPE_IP,
        "ipv4_src": src,
        "ipv4_dst": dst,
        "ip_proto": proto,
    }
    if proto == IPPROTO_TCP:
        out.update(tcp_src=sport, tcp_dst=dport)
    elif proto == IPPROTO_UDP:
        out.update(udp_src=sport, udp_dst=dport)
    elif proto == IPPROTO_ICMP:
        out.update(icmpv4_type=sport)
    out.update(extra)
    return out


def test_a_masked_load_keeps_the_other_bits_and_output_reg_reads_the_port():
    sw = Switch(
        [
            Flow(
                T0,
                1,
                (),
                0,
                actions=(
                    Load("reg1", 0x70000, 0xF0000),
                    Load("reg1", 3, 0xFFFF),
                    OutputReg(Bits("reg1", 0, 15)),
                ),
                goto=T1,
            ),
            Flow(T1, 1, match(reg1=(0x70000, 0xF0000)), 0, actions=(Output(9),)),
            Flow(T1, 0, (), 0),
        ],
        [],
    )
    t = sw.process({"in_port": 1})
    assert t.ports == {3, 9}, t.path


def test_resubmit_runs_the_table_and_comes_back():
    sw = Switch(
        [
            Flow(T0, 1, (), 0, actions=(Resubmit(T2), Output(5))),
            Flow(T2, 1, (), 0, actions=(Load("reg0", 1, 1), Output(4))),
        ],
        [],
    )
    t = sw.process({"in_port": 1})
    assert [e.port for e in t.emitted] == [4, 5], t.path


def test_dec_ttl_decrements_and_drops_an_expired_packet():
    sw = Switch([Flow(T0, 1, (), 0, actions=(DecTtl(), Output(2)))], [])
    assert sw.process({"in_port": 1, "nw_ttl": 9}).emitted[0].get("nw_ttl") == 8
    t = sw.process({"in_port": 1, "nw_ttl": 1})
    assert t.ports == set() and "dec_ttl:expired" in t.path


def test_a_conjunction_acts_only_when_every_clause_matches():
    sw = Switch(
        [
            Flow(T0, 10, match(in_port=1), 0, actions=(Conjunction(5, 1, 2),)),
            Flow(T0, 10, match(in_port=2), 0, actions=(Conjunction(5, 1, 2),)),
            Flow(
                T0,
                10,
                match(eth_type=ETH_TYPE_IP, ip_proto=IPPROTO_TCP, tcp_dst=80),
                0,
                actions=(Conjunction(5, 2, 2),),
            ),
            Flow(T0, 10, match(conj_id=5), 0, actions=(Output(7),)),
            Flow(T0, 0, (), 0, actions=(Output(8),)),
        ],
        [],
    )
    assert sw.process(pkt(1, "100.64.0.1", "100.64.0.2", dport=80)).ports == {7}
    assert sw.process(pkt(2, "100.64.0.1", "100.64.0.2", dport=80)).ports == {7}
    assert sw.process(pkt(3, "100.64.0.1", "100.64.0.2", dport=80)).ports == {8}
    assert sw.process(pkt(1, "100.64.0.1", "100.64.0.2", dport=22)).ports == {8}


def test_of_several_complete_conjunctions_one_acts():
    """OVS takes one (the first its classifier completes); the simulator the lowest id."""
    both = (Conjunction(5, 1, 2), Conjunction(6, 1, 2))
    sw = Switch(
        [
            Flow(T0, 10, match(in_port=1), 0, actions=both),
            Flow(
                T0,
                10,
                match(eth_type=ETH_TYPE_IP, ip_proto=IPPROTO_TCP, tcp_dst=80),
                0,
                actions=(Conjunction(5, 2, 2), Conjunction(6, 2, 2)),
            ),
            Flow(T0, 10, match(conj_id=5), 0, actions=(Output(7),)),
            Flow(T0, 10, match(conj_id=6), 0, actions=(Output(9),)),
        ],
        [],
    )
    assert sw.process(pkt(1, "100.64.0.1", "100.64.0.2", dport=80)).ports == {7}


def test_model_refuses_what_ovs_refuses():
    with pytest.raises(ValueError, match="ip_proto"):
        match(eth_type=ETH_TYPE_IP, tcp_dst=80)
    with pytest.raises(ValueError, match="conjunction"):
        Flow(T0, 1, (), 0, actions=(Conjunction(1, 1, 2), Output(1)))
    with pytest.raises(ValueError, match="fit"):
        Load("reg0", 0x10, 0xF)
    with pytest.raises(ValueError, match="16 bits"):
        Ct(zone=Bits("reg0", 0, 7))
    with pytest.raises(ValueError, match="commit"):
        Ct(zone=1, exec=(Load("ct_mark", 1, 1),))
    with pytest.raises(ValueError, match="eth_type"):
        Flow(T0, 1, (), 0, actions=(Ct(zone=1, nat=Nat()),))
    with pytest.raises(ValueError, match="may not go"):
        Flow(T2, 1, (), 0, actions=(Resubmit(T0),))


def _ct_switch(zone=1, nat=None, commit=True, mark=()):
    """ct(zone, [nat]) then resubmit to t1 which records the state by output port."""
    return Switch(
        [
            Flow(T0, 1, ip(in_port=1), 0, actions=(Ct(zone=zone, table=T1, nat=Nat()),)),
            Flow(T0, 1, ip(in_port=2), 0, actions=(Ct(zone=zone, table=T1, nat=Nat()),)),
            Flow(T0, 0, ip(), 0, actions=(Ct(zone=zone, table=T1),)),
            Flow(
                T1,
                10,
                ip(ct_state=(CT_TRK | CT_NEW, CT_TRK | CT_NEW)),
                0,
                actions=(Ct(zone=zone, commit=commit, nat=nat, exec=mark), Output(2)),
            ),
            Flow(
                T1,
                10,
                match(ct_state=(CT_TRK | CT_EST, CT_TRK | CT_EST | CT_RPL)),
                0,
                actions=(Output(2),),
            ),
            Flow(
                T1,
                10,
                match(ct_state=(CT_TRK | CT_EST | CT_RPL, CT_TRK | CT_EST | CT_RPL)),
                0,
                actions=(Output(1),),
            ),
            Flow(T1, 0, (), 0),
        ],
        [],
    )


def test_conntrack_new_then_established_then_reply_with_the_mark():
    sw = _ct_switch(mark=(Load("ct_mark", 4, 0xF),))
    first = sw.process(pkt(1, "100.64.0.1", "100.64.0.2"))
    assert first.ct_states == (CT_TRK | CT_NEW,) and first.ports == {2}
    again = sw.process(pkt(1, "100.64.0.1", "100.64.0.2"))
    assert again.ct_states == (CT_TRK | CT_EST,) and again.ports == {2}
    reply = sw.process(pkt(2, "100.64.0.2", "100.64.0.1", sport=22, dport=40000))
    assert reply.ct_states == (CT_TRK | CT_EST | CT_RPL,) and reply.ports == {1}
    (conn,) = sw.conntrack.connections(1)
    assert conn.mark == 4
    assert ct_state_text(CT_TRK | CT_EST | CT_RPL) == "trk,est,rpl"


def test_conntrack_without_commit_remembers_nothing_and_zones_are_apart():
    sw = _ct_switch(commit=False)
    sw.process(pkt(1, "100.64.0.1", "100.64.0.2"))
    assert sw.process(pkt(1, "100.64.0.1", "100.64.0.2")).ct_states == (CT_TRK | CT_NEW,)
    committed = _ct_switch(zone=1)
    committed.process(pkt(1, "100.64.0.1", "100.64.0.2"))
    assert committed.conntrack.connections(2) == []


def test_what_conntrack_cannot_tell_is_invalid():
    sw = _ct_switch()
    # (a non-IP packet never meets ct(): OVS refuses ct() in a flow not matching IP)
    fragment = {"in_port": 3, "eth_type": ETH_TYPE_IP, "ip_proto": IPPROTO_TCP}
    fragment.update(ipv4_src="100.64.0.1", ipv4_dst="100.64.0.2")  # no ports: a fragment
    assert sw.process(fragment).ct_states == (CT_TRK | CT_INV,)
    not_syn = pkt(1, "100.64.0.1", "100.64.0.2", tcp_flags=0x10)
    assert sw.process(not_syn).ct_states == (CT_TRK | CT_INV,)


def test_snat_translates_the_connection_and_un_nats_its_replies():
    sw = _ct_switch(nat=Nat("src", "198.18.0.1", None, 50000, 50000))
    out = sw.process(pkt(1, "100.64.0.1", "198.18.255.254", dport=80)).emitted[0]
    assert (out.get("ipv4_src"), out.get("tcp_src")) == ("198.18.0.1", 50000)
    back = sw.process(pkt(2, "198.18.255.254", "198.18.0.1", sport=80, dport=50000))
    assert back.ports == {1}
    assert (back.emitted[0].get("ipv4_dst"), back.emitted[0].get("tcp_dst")) == (
        "100.64.0.1",
        40000,
    )


def test_a_pipeline_with_every_action_forwards_as_designed():
    """tests/unit/l3_flows.py: conjunction-allowed TCP, ICMP with ct_mark, UDP SNAT, TCP
    DNAT to a VIP, each with its reply."""
    sw = Switch(L.flows(), [])
    a_to_b = sw.process(pkt(L.A, L.A_IP, L.B_IP, dport=22))
    assert a_to_b.ports == {L.B} and a_to_b.emitted[0].get("nw_ttl") == 63, a_to_b.path
    b_to_a = sw.process(pkt(L.B, L.B_IP, L.A_IP, sport=22, dport=40000))
    assert b_to_a.ports == {L.A} and b_to_a.ct_states == (CT_TRK | CT_EST | CT_RPL,)
    # TCP from B to A's port 22 is no conjunction: dropped
    assert sw.process(pkt(L.B, L.B_IP, L.A_IP, dport=22)).ports == set()
    # UDP from A to anyone: SNAT, out of C; C's reply un-SNATs back to A
    dns = sw.process(pkt(L.A, L.A_IP, L.C_IP, IPPROTO_UDP, 5353, 53))
    assert dns.ports == {L.C} and dns.emitted[0].get("ipv4_src") == L.SNAT_IP
    answer = sw.process(pkt(L.C, L.C_IP, L.SNAT_IP, IPPROTO_UDP, 53, 5353))
    assert answer.ports == {L.A} and answer.emitted[0].get("ipv4_dst") == L.A_IP
    # TCP from A to the VIP: DNAT to B:22
    vip = sw.process(pkt(L.A, L.A_IP, L.VIP, dport=L.VIP_PORT))
    assert vip.ports == {L.B}
    assert (vip.emitted[0].get("ipv4_dst"), vip.emitted[0].get("tcp_dst")) == (L.B_IP, 22)
    # ICMP echo: committed with ct_mark 1, whose reply takes the marked flow (reg2)
    assert sw.process(pkt(L.A, L.A_IP, L.B_IP, IPPROTO_ICMP, 8)).ports == {L.B}
    echo = sw.process(pkt(L.B, L.B_IP, L.A_IP, IPPROTO_ICMP, 0))
    assert echo.ports == {L.A} and "t_ct:210" in echo.path


def test_a_learn_is_checked_when_built():
    """A learned flow OVS would refuse (an L4 match without its ip_proto, an address
    without eth_type) or one that ends nowhere fails when the action is built."""
    from openflow.model import Bits, Learn, LearnMatchField, LearnMatchValue, LearnOutput
    from openflow.tables import HOST_RETURN

    out = LearnOutput(Bits("in_port", 0, 15))
    ip = LearnMatchValue(Bits("eth_type", 0, 15), 0x0800)
    tp = LearnMatchField(Bits("tcp_src", 0, 15), Bits("tcp_dst", 0, 15))
    with pytest.raises(ValueError, match="ip_proto"):
        Learn(HOST_RETURN, 100, 0, (ip, tp, out))
    with pytest.raises(ValueError, match="eth_type"):
        Learn(HOST_RETURN, 100, 0, (LearnMatchField(Bits("ipv4_src"), Bits("ipv4_dst")), out))
    with pytest.raises(ValueError, match="output"):
        Learn(HOST_RETURN, 100, 0, (ip,))
    with pytest.raises(ValueError, match="width"):
        LearnMatchField(Bits("reg2", 0, 15), Bits("reg2", 0, 31))
