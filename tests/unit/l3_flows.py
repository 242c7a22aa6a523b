"""Flows that use every match field and action of the L3/conntrack model, on tables of
their own (shared by the encoder, simulator and on-switch tests)."""

from __future__ import annotations

from openflow.model import (
    ALL_FIELDS,
    CT_EST,
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
    SetField,
    match,
)
from openflow.tables import Table

T0 = Table(0, "t_in", "test: classify", ALL_FIELDS, (10, 20, 30, 40))
T10 = Table(10, "t_ct", "test: after conntrack", ALL_FIELDS, (20, 30, 40))
T20 = Table(20, "t_conj", "test: conjunctions", ALL_FIELDS, (30, 40))
T30 = Table(30, "t_nat", "test: nat", ALL_FIELDS, (40,))
T40 = Table(40, "t_out", "test: output from a register", ALL_FIELDS, ())
TABLES = (T0, T10, T20, T30, T40)

# Ports on the test bridge (ofport numbers the on-switch test gives its ports).
A, B, C = 1, 2, 3
A_IP, B_IP, C_IP = "100.64.0.10", "100.64.0.20", "100.64.0.30"
SNAT_IP = "100.64.255.1"
VIP, VIP_PORT = "100.64.200.1", 80
COOKIE = 0x0A00000000000001
ZONE_MASK = 0xFFFF
CT_TRACKED = CT_TRK | CT_NEW | CT_EST


def ip(**fields):
    return match(eth_type=ETH_TYPE_IP, **fields)


def flows() -> list[Flow]:
    """A small pipeline: in_port writes the zone into reg0[0..15] and the source kind
    into reg0[16..19]; ct(zone=reg0, table=t_ct); t_ct passes established/reply, commits
    new with ct_mark, and for TCP to B's port 22 (a conjunction of source and
    destination) outputs through reg1; UDP goes to t_nat (SNAT from A to C); TCP to the
    VIP is DNATed to B; t_out outputs to the port in reg1 after dec_ttl."""
    c = COOKIE
    zone = Bits("reg0", 0, 15)
    out = [
        Flow(
            T0,
            100,
            ip(in_port=A),
            c,
            actions=(
                Load("reg0", 0x10005, 0xF_FFFF),
                Load("reg1", B, 0xFFFFFFFF),
                Ct(zone=zone, table=T10, nat=Nat()),
            ),
        ),
        Flow(
            T0,
            100,
            ip(in_port=B),
            c,
            actions=(
                Load("reg0", 0x20005, 0xF_FFFF),
                Load("reg1", A, 0xFFFFFFFF),
                Ct(zone=zone, table=T10, nat=Nat()),
            ),
        ),
        Flow(
            T0,
            100,
            ip(in_port=C),
            c,
            actions=(
                Load("reg0", 0x20005, 0xF_FFFF),
                Load("reg1", A, 0xFFFFFFFF),
                Ct(zone=5, table=T10, nat=Nat()),
            ),
        ),
        Flow(T0, 0, (), c),
        # established either way, and replies: straight to the output stage
        Flow(T10, 200, ip(ct_state=(CT_TRK | CT_EST, CT_TRACKED)), c, actions=(Resubmit(T40),)),
        Flow(
            T10,
            210,
            ip(ct_state=(CT_TRK | CT_EST | CT_RPL, CT_TRACKED | CT_RPL), ct_mark=(0x1, 0x1)),
            c,
            actions=(SetField("reg2", 0xBEEF), Resubmit(T40)),
        ),
        Flow(
            T10, 100, ip(ct_state=(CT_TRK | CT_NEW, CT_TRACKED), ip_proto=IPPROTO_UDP), c, goto=T30
        ),
        Flow(
            T10,
            100,
            ip(ct_state=(CT_TRK | CT_NEW, CT_TRACKED), ip_proto=IPPROTO_ICMP, icmpv4_type=8),
            c,
            actions=(Ct(zone=zone, commit=True, exec=(Load("ct_mark", 0x1, 0x1),)), Resubmit(T40)),
        ),
        Flow(
            T10, 100, ip(ct_state=(CT_TRK | CT_NEW, CT_TRACKED), ip_proto=IPPROTO_TCP), c, goto=T20
        ),
        Flow(T10, 0, (), c),
        # TCP: new connections to B:22 from A, or to the VIP (DNAT to B:22)
        Flow(T20, 100, ip(ipv4_src=A_IP), c, actions=(Conjunction(7, 1, 2),)),
        Flow(
            T20,
            100,
            ip(ipv4_dst=B_IP, ip_proto=IPPROTO_TCP, tcp_dst=22),
            c,
            actions=(Conjunction(7, 2, 2),),
        ),
        Flow(
            T20,
            100,
            ip(conj_id=7),
            c,
            actions=(
                Ct(zone=Bits("reg0", 0, 15), commit=True, exec=(SetField("ct_mark", 2),)),
                Resubmit(T40),
            ),
        ),
        Flow(
            T20,
            90,
            ip(ipv4_dst=VIP, ip_proto=IPPROTO_TCP, tcp_dst=VIP_PORT),
            c,
            actions=(Ct(zone=zone, commit=True, nat=Nat("dst", B_IP, B_IP, 22, 22), table=T40),),
        ),
        Flow(T20, 0, (), c),
        # UDP from A: SNAT to SNAT_IP, out to C
        Flow(
            T30,
            100,
            ip(ip_proto=IPPROTO_UDP, udp_dst=53, reg0=(0x10000, 0xF0000)),
            c,
            actions=(
                Load("reg1", C, 0xFFFFFFFF),
                Ct(zone=5, commit=True, nat=Nat("src", SNAT_IP), table=T40),
            ),
        ),
        Flow(T30, 0, (), c),
        Flow(
            T40,
            100,
            match(eth_type=ETH_TYPE_IP),
            c,
            actions=(DecTtl(), OutputReg(Bits("reg1", 0, 31))),
        ),
        Flow(T40, 0, (), c, actions=(Output(C),)),
    ]
    return out
