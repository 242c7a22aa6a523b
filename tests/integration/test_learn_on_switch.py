"""host_conntrack's learn on a real ovs-vswitchd: a pod's TCP packet the host forwards
(from the gateway port, with the pod's address) makes OVS add the reply's flow to
host_return, with the match and actions openflow.simulate learns; the reply then goes
to the gateway, and a pod-to-pod packet still to the pod.  ``ofproto/trace -generate``
executes the learn as a real packet would."""

from __future__ import annotations

import os
import re

import pytest

from openflow import cookies, pipeline
from openflow.cookies import Feature
from openflow.model import GroupAction
from openflow.simulate import Switch
from tests.helpers import add_test_bridge, host_paths, ovs
from tests.integration.test_l3_actions_on_switch import _send_flows
from tests.unit.test_pipeline import GW, P1, P2, STATE, ip_packet, tcp

pytestmark = pytest.mark.integration

BRIDGE = "br-lrn"


@pytest.fixture(scope="module")
def bridge(one_host_lab):
    """The pipeline of tests/unit/test_pipeline.py's host on a bridge of its own, with
    the gateway's and two pods' ports (flood flows left out: they need the groups)."""
    name = one_host_lab.name
    add_test_bridge(name, BRIDGE, (GW.ofport, P1.ofport, P2.ofport), "lrn")
    flows, _ = pipeline.build(STATE, generation=1)
    flows = [f for f in flows if not any(isinstance(a, GroupAction) for a in f.actions)]
    _send_flows(os.path.join(host_paths(name).rundir, f"{BRIDGE}.mgmt"), flows)
    return name, flows


def _trace(name: str, flow: str, *options: str) -> str:
    return ovs(name, "h1", "ovs-appctl", "ofproto/trace", BRIDGE, flow, *options)


def _learned(name: str) -> list[str]:
    value, mask = cookies.feature_mask(Feature.HOST_RETURN_LEARNED)
    dump = ovs(
        name,
        "h1",
        "ovs-ofctl",
        "-O",
        "OpenFlow13",
        "--no-stats",
        "dump-flows",
        BRIDGE,
        f"cookie={value:#x}/{mask:#x}",
    )
    return [line.strip() for line in dump.splitlines() if "cookie=" in line]


def _outputs(trace: str) -> set[int]:
    ports = {int(p) for p in re.findall(r"^\s*output:(\d+)$", trace, re.M)}
    return ports | {int(p) for p in re.findall(r"-> output port is (\d+)", trace)}


def _tcp(in_port: int, src_mac: str, dst_mac: str, src: str, dst: str, sport, dport) -> str:
    return (
        f"in_port={in_port},tcp,dl_src={src_mac},dl_dst={dst_mac},nw_src={src},nw_dst={dst},"
        f"nw_ttl=64,tp_src={sport},tp_dst={dport}"
    )


def test_a_forwarded_connection_learns_its_replys_way_back_to_the_gateway(bridge):
    name, flows = bridge
    assert _learned(name) == []
    dnated = _tcp(GW.ofport, GW.mac, P2.mac, P1.ip, P2.ip, 40000, 80)
    out = _trace(name, dnated, "-generate")
    assert _outputs(out) == {P2.ofport}, out
    [learned] = _learned(name)
    # As the simulator learns it from the same packet.
    sim = Switch(flows, [])
    sim.process(tcp(ip_packet(GW, P2.mac, P2.ip, ipv4_src=P1.ip), 40000, 80))
    [model] = [
        f for f in sim.tables[81] if cookies.feature_of(f.cookie) == Feature.HOST_RETURN_LEARNED
    ]
    assert f"cookie={model.cookie:#x}" in learned and "table=81" in learned
    # OVS gives a learned flow its fin_idle_timeout as a fin_timeout action.
    assert "idle_timeout=3600" in learned and "fin_timeout(idle_timeout=10)" in learned
    for needle in (
        "priority=100,tcp",
        "reg2=0x1/0xffff",
        f"nw_src={P2.ip}",
        f"nw_dst={P1.ip}",
        "tp_src=80",
        "tp_dst=40000",
        f"load:{int(GW.mac.replace(':', ''), 16):#x}->NXM_OF_ETH_DST[],output:{GW.ofport}",
    ):
        assert needle in learned, (needle, learned)

    reply = _tcp(P2.ofport, P2.mac, P1.mac, P2.ip, P1.ip, 80, 40000)
    out = _trace(name, reply)
    assert f"Datapath actions: set(eth(dst={GW.mac}))" in out or re.search(rf"dst={GW.mac}", out), (
        out
    )
    assert re.search(rf"^\s*output:{GW.ofport}$", out, re.M), out
    # Another connection between the same pods (no learned flow): straight to the pod.
    other = _tcp(P2.ofport, P2.mac, P1.mac, P2.ip, P1.ip, 80, 40001)
    out = _trace(name, other)
    assert _outputs(out) == {P1.ofport} and "ct(" not in out, out
