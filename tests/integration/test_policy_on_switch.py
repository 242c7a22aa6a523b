"""The compiled NetworkPolicy flows on a real ovs-vswitchd: every flow netpol/compile.py
builds (conjunctions, ct in the network's zone, sctp_dst, masked port ranges) is accepted
as openflow/encode.py encodes it, and ofproto/trace, told the conntrack states the
simulator computed, delivers (or drops) each probe as openflow.simulate does."""

from __future__ import annotations

import os
import re

import pytest

from netpol.compile import HostView, LocalPod, compile_policy
from openflow.model import ETH_TYPE_IP, Flow, OutputReg, SetField, match
from openflow.registers import NETWORK, OUT_PORT, load
from openflow.simulate import Switch, ct_state_text
from openflow.tables import HOST_CONNTRACK, POLICY_CONNTRACK, Table
from tests.helpers import add_test_bridge, host_paths, ovs
from tests.integration.test_l3_actions_on_switch import _send_flows
from tests.unit.netpol_e2e import Case, ip_of, ns_name, pod_label, policy

pytestmark = pytest.mark.integration

BRIDGE = "br-npt"
NET = 3
LOCAL = {"x/a": 1, "x/b": 2, "y/a": 3}
TUNNEL = 9  # every other pod is behind it
# The test's own entry: what l2_forward decides (reg1, the network), then policy.
ENTRY = Table(0, "entry", "", frozenset({"eth_type", "ipv4_dst"}), (60,))
POLICIES = [
    policy("deny-ingress", "x", {}, ingress=[]),
    policy(
        "y-to-a-81-and-sctp",
        "x",
        pod_label("a"),
        ingress=[
            {"from": [{"namespaceSelector": ns_name("y")}], "ports": [{"port": 81}]},
            {"ports": [{"port": 80, "endPort": 81, "protocol": "SCTP"}]},
        ],
    ),
    policy("b-named-egress", "x", pod_label("b"), egress=[{"ports": [{"port": "serve-80-tcp"}]}]),
]


def _flows() -> list[Flow]:
    state = Case("", POLICIES, []).state()
    local = tuple(LocalPod(k, p) for k, p in LOCAL.items())
    flows = list(compile_policy(state, HostView(NET, local), generation=1))
    for key, port in LOCAL.items():
        flows.append(
            Flow(
                ENTRY,
                100,
                match(eth_type=ETH_TYPE_IP, ipv4_dst=ip_of(key)),
                0,
                actions=(SetField("reg1", port), load(NETWORK, NET)),
                goto=POLICY_CONNTRACK,
            )
        )
    flows.append(
        Flow(
            ENTRY,
            0,
            match(eth_type=ETH_TYPE_IP),
            0,
            actions=(SetField("reg1", TUNNEL), load(NETWORK, NET)),
            goto=POLICY_CONNTRACK,
        )
    )
    flows.append(Flow(HOST_CONNTRACK, 0, (), 0, actions=(OutputReg(OUT_PORT),)))
    return flows


@pytest.fixture(scope="module")
def bridge(one_host_lab):
    name = one_host_lab.name
    add_test_bridge(name, BRIDGE, (*LOCAL.values(), TUNNEL), "npt")
    _send_flows(os.path.join(host_paths(name).rundir, f"{BRIDGE}.mgmt"), _flows())
    return name


def _probe(src: str, dst: str, proto: str, dport: int, sport: int = 40000) -> dict:
    l4 = proto.lower()
    return {
        "in_port": LOCAL.get(src, TUNNEL),
        "eth_type": ETH_TYPE_IP,
        "ip_proto": {"tcp": 6, "udp": 17, "sctp": 132}[l4],
        "ipv4_src": ip_of(src),
        "ipv4_dst": ip_of(dst),
        f"{l4}_src": sport,
        f"{l4}_dst": dport,
        "nw_ttl": 64,
    }


def _trace(name: str, pkt: dict, ct_states) -> set[int]:
    proto = {6: "tcp", 17: "udp", 132: "sctp"}[pkt["ip_proto"]]
    names = {"ipv4_src": "nw_src", "ipv4_dst": "nw_dst"}
    fields = [proto] + [
        f"{names.get(k, k)}={v}" for k, v in pkt.items() if k not in ("eth_type", "ip_proto")
    ]
    argv = ["ovs-appctl", "ofproto/trace", BRIDGE, ",".join(fields)]
    for state in ct_states:
        argv += ["--ct-next", ct_state_text(state)]
    out = ovs(name, "h1", *argv)
    return {int(m) for m in re.findall(r"^\s*output:(\d+)$", out, re.M)} | {
        int(m) for m in re.findall(r"-> output port is (\d+)", out)
    }


def test_every_policy_flow_is_accepted(bridge):
    dump = ovs(bridge, "h1", "ovs-ofctl", "-O", "OpenFlow13", "--no-stats", "dump-flows", BRIDGE)
    assert len([line for line in dump.splitlines() if "actions=" in line]) == len(_flows())
    for needle in ("ct(table=61,zone=NXM_NX_REG2[0..15])", "ct(commit,zone=NXM_NX_REG2[0..15])"):
        assert needle in dump, needle
    assert "conjunction(" in dump and "sctp,tp_dst=0x50/0xfffe" in dump, dump


def test_ofproto_trace_agrees_with_the_simulator(bridge):
    cases = {
        "y/b to x/a:81, allowed from y": _probe("y/b", "x/a", "TCP", 81),
        "y/b to x/a:80, isolated": _probe("y/b", "x/a", "TCP", 80),
        "z/a to x/a:81, not y": _probe("z/a", "x/a", "TCP", 81),
        "x/b to x/a, SCTP 80-81": _probe("x/b", "x/a", "SCTP", 80),
        "z/c to x/a, SCTP 81": _probe("z/c", "x/a", "SCTP", 81),
        "x/b out to y/c:80 named": _probe("x/b", "y/c", "TCP", 80),
        "x/b out to y/c:81 not named": _probe("x/b", "y/c", "TCP", 81),
        "y/a to z/b, no policy": _probe("y/a", "z/b", "UDP", 53),
        "x/a to itself by way of the host": {**_probe("x/a", "x/a", "TCP", 80), "in_port": TUNNEL},
    }
    seen = set()
    for case, pkt in cases.items():
        expected = Switch(_flows(), ()).process(pkt)
        ports = _trace(bridge, pkt, expected.ct_states)
        assert ports == expected.ports, (case, expected.path)
        seen.add(bool(ports))
    assert seen == {True, False}
