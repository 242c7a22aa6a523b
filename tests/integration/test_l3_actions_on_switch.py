"""The L3 and conntrack model on a real ovs-vswitchd: every new match field and action
(tests/unit/l3_flows.py) is sent as openflow/encode.py encodes it and accepted, and
ofproto/trace, told the conntrack states the simulator computed (``--ct-next``), outputs
where openflow.simulate says."""

from __future__ import annotations

import os
import re
import socket
import struct

import pytest

from openflow import encode
from openflow.model import ETH_TYPE_IP, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP
from openflow.simulate import Switch, ct_state_text
from tests.helpers import add_test_bridge, host_paths, ovs
from tests.unit import l3_flows as L

pytestmark = pytest.mark.integration

BRIDGE = "br-l3t"
OFPT_ERROR, OFPT_HELLO, OFPT_BARRIER_REQUEST, OFPT_BARRIER_REPLY = 1, 0, 20, 21


@pytest.fixture(scope="module")
def bridge(one_host_lab):
    """A bridge of its own on the lab host's vswitchd, ports A, B, C, and the test flows
    sent over its management socket."""
    name = one_host_lab.name
    add_test_bridge(name, BRIDGE, (L.A, L.B, L.C), "l3t")
    _send_flows(os.path.join(host_paths(name).rundir, f"{BRIDGE}.mgmt"), L.flows())
    return name


def _send_flows(sock_path: str, flows) -> None:
    """HELLO, every flow add as encode.py makes it, a barrier; an OFPT_ERROR fails."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(sock_path)
        sock.sendall(struct.pack("!BBHI", 4, OFPT_HELLO, 8, 0))
        data = b"".join(encode.flow_add(f, 100 + i) for i, f in enumerate(flows))
        sock.sendall(data + struct.pack("!BBHI", 4, OFPT_BARRIER_REQUEST, 8, 1))
        buf = b""
        while True:
            while len(buf) < 8 or len(buf) < struct.unpack("!H", buf[2:4])[0]:
                chunk = sock.recv(65536)
                assert chunk, "switch closed the connection"
                buf += chunk
            _, kind, length, xid = struct.unpack("!BBHI", buf[:8])
            body, buf = buf[8:length], buf[length:]
            if kind == OFPT_ERROR:
                err_type, code = struct.unpack("!HH", body[:4])
                pytest.fail(f"switch refused {flows[xid - 100]}: type {err_type} code {code}")
            if kind == OFPT_BARRIER_REPLY:
                return


def test_every_flow_is_on_the_switch(bridge):
    dump = ovs(bridge, "h1", "ovs-ofctl", "-O", "OpenFlow13", "--no-stats", "dump-flows", BRIDGE)
    lines = [line for line in dump.splitlines() if "cookie=" in line]
    assert len(lines) == len(L.flows()), dump
    for needle in (
        "ct(table=10,zone=NXM_NX_REG0[0..15],nat)",
        "ct(commit,table=40,zone=NXM_NX_REG0[0..15],nat(dst=100.64.0.20:22))",
        "ct(commit,table=40,zone=5,nat(src=100.64.255.1))",
        "exec(set_field:0x2->ct_mark)",
        "exec(set_field:0x1/0x1->ct_mark)",
        "set_field:0x10005/0xfffff->reg0",
        "conjunction(7,2/2)",
        "conj_id=7",
        "output:NXM_NX_REG1[]",
        "resubmit(,40)",
        "dec_ttl",
        "ct_state=+new-est+trk",
    ):
        assert needle in dump, needle


def _ofctl(pkt: dict) -> str:
    names = {"ipv4_src": "nw_src", "ipv4_dst": "nw_dst", "icmpv4_type": "icmp_type"}
    proto = {IPPROTO_TCP: "tcp", IPPROTO_UDP: "udp", IPPROTO_ICMP: "icmp"}[pkt["ip_proto"]]
    fields = [proto]
    for k, v in pkt.items():
        if k in ("eth_type", "ip_proto"):
            continue
        fields.append(f"{names.get(k, k)}={v}")
    return ",".join(fields)


def _trace_ports(name: str, pkt: dict, ct_states: tuple[int, ...]) -> set[int]:
    argv = ["ovs-appctl", "ofproto/trace", BRIDGE, _ofctl(pkt)]
    for state in ct_states:
        argv += ["--ct-next", ct_state_text(state)]
    out = ovs(name, "h1", *argv)
    ports = {int(m) for m in re.findall(r"^\s*output:(\d+)$", out, re.M)}
    ports |= {int(m) for m in re.findall(r"-> output port is (\d+)", out)}
    return ports


def _pkt(in_port, src, dst, proto=IPPROTO_TCP, sport=40000, dport=22):
    out = {"in_port": in_port, "eth_type": ETH_TYPE_IP, "ipv4_src": src, "ipv4_dst": dst}
    out["nw_ttl"] = 64  # ofproto/trace's default is 0
    out["ip_proto"] = proto
    if proto == IPPROTO_TCP:
        out.update(tcp_src=sport, tcp_dst=dport)
    elif proto == IPPROTO_UDP:
        out.update(udp_src=sport, udp_dst=dport)
    else:
        out.update(icmpv4_type=sport)
    return out


def test_ofproto_trace_agrees_with_the_simulator(bridge):
    sim = Switch(L.flows(), [])
    cases = {
        "conjunction: A to B:22, new": _pkt(L.A, L.A_IP, L.B_IP),
        "reply B to A": _pkt(L.B, L.B_IP, L.A_IP, sport=22, dport=40000),
        "no conjunction: B to A:22": _pkt(L.B, L.B_IP, L.A_IP),
        "udp from A: snat out of C": _pkt(L.A, L.A_IP, L.C_IP, IPPROTO_UDP, 5353, 53),
        "udp reply from C": _pkt(L.C, L.C_IP, L.SNAT_IP, IPPROTO_UDP, 53, 5353),
        "tcp to the vip: dnat": _pkt(L.A, L.A_IP, L.VIP, dport=L.VIP_PORT),
        "icmp echo, ct_mark 1": _pkt(L.A, L.A_IP, L.B_IP, IPPROTO_ICMP, 8),
        "ttl expires": {**_pkt(L.A, L.A_IP, L.B_IP, dport=23), "nw_ttl": 1},
    }
    seen_ports = set()
    for case, pkt in cases.items():
        expected = sim.process(pkt)
        ports = _trace_ports(bridge, pkt, expected.ct_states)
        assert ports == expected.ports, (case, expected.path)
        seen_ports |= ports
    assert seen_ports == {L.A, L.B, L.C}
