"""The model against the real switch: the agent's flows on br-int equal openflow.pipeline's,
and ofproto/trace forwards packets where openflow.simulate says they go."""

from __future__ import annotations

import collections
import re

import pytest

from controller import hoststate
from lab import lab, pods
from openflow import pipeline
from openflow.model import ETH_TYPE_ARP, ETH_TYPE_IP
from openflow.simulate import Switch
from ovsdb.client import OvsdbClient
from store import open_cluster
from tests.helpers import host_paths, ovs, running_lab

pytestmark = pytest.mark.integration

BCAST = "ff:ff:ff:ff:ff:ff"


@pytest.fixture(scope="module")
def world():
    with running_lab(2) as name:
        p1 = pods.pod_add(name, "h1", "p1")
        pods.pod_add(name, "h1", "p2")
        r1 = pods.pod_add(name, "h2", "p1")
        yield name, p1, r1, _model(name)


def _model(name: str):
    """The pipeline h1's agent should have installed, rebuilt from OVSDB and the store."""
    paths = lab.LabPaths(lab.naming.DEFAULT_STATE_ROOT, name)
    cluster = open_cluster(paths.store_url)
    with OvsdbClient(host_paths(name, "h1").db_sock) as client:
        br = client.bridge_info("br-int")
        default = cluster.get_network("default")
        gw = client.interface("br-int", hoststate.GATEWAY_PORT)
        state = hoststate.build_host_state(
            me="h1",
            tunnel_ofport=client.interface("br-int", "tun-vxlan")["ofport"],
            networks=cluster.list_networks(),
            hosts=cluster.list_hosts(),
            endpoints=cluster.list_endpoints(),
            local_ports=client.list_endpoint_ports("br-int"),
            gateways=[
                hoststate.GatewayPort(
                    "default",
                    gw["ofport"],
                    hoststate.gateway_mac(default.vni),
                    hoststate.gateway_ip(default.cidr),
                )
            ],
        )
        generation = int(br.external_ids["ovs-overlay-generation"])
    cluster.close()
    return state, pipeline.build(state, generation)


def test_flows_on_the_switch_are_the_model(world):
    name, _, _, (_, (flows, groups)) = world
    dump = ovs(name, "h1", "ovs-ofctl", "-O", "OpenFlow13", "--no-stats", "dump-flows", "br-int")
    on_switch = collections.Counter(  # ovs-ofctl leaves out "table=0"
        (int(m["cookie"], 16), int(m["table"] or 0), int(m["priority"]))
        for m in re.finditer(
            r"cookie=(?P<cookie>0x[0-9a-f]+),(?: table=(?P<table>\d+),)? "
            r"priority=(?P<priority>\d+)",
            dump,
        )
    )
    model = collections.Counter((f.cookie, f.table.table_id, f.priority) for f in flows)
    assert on_switch == model
    dump_groups = ovs(name, "h1", "ovs-ofctl", "-O", "OpenFlow13", "dump-groups", "br-int")
    assert sorted(int(g) for g in re.findall(r"group_id=(\d+)", dump_groups)) == sorted(
        g.group_id for g in groups
    )


def _trace(name: str, flow: str) -> tuple[set, set]:
    """Output ports and tunnel destinations that ofproto/trace shows in br-int."""
    out = ovs(name, "h1", "ovs-appctl", "ofproto/trace", "br-int", flow)
    section = out.split('bridge("br-int")', 1)[1].split('bridge("br-phy")', 1)[0]
    in_port = int(re.search(r"in_port=(\d+)", flow).group(1))
    lines = section.splitlines()
    ports, tun_dsts = set(), set()
    for i, line in enumerate(lines):
        skipped = i + 1 < len(lines) and "skipping output to input port" in lines[i + 1]
        if m := re.fullmatch(r"\s*output:(\d+)", line):
            if not skipped:
                ports.add(int(m.group(1)))
        elif line.strip() == "IN_PORT":
            ports.add(in_port)
        elif m := re.fullmatch(r"\s*set_field:([\d.]+)->tun_dst", line):
            tun_dsts.add(m.group(1))
    return ports, tun_dsts


def _ofctl(pkt: dict) -> str:
    names = {
        "eth_src": "dl_src",
        "eth_dst": "dl_dst",
        "ipv4_src": "nw_src",
        "ipv4_dst": "nw_dst",
        "tun_ipv4_src": "tun_src",
        "tunnel_id": "tun_id",
    }
    fields = []
    if pkt.get("eth_type") == ETH_TYPE_IP:
        fields.append("ip")
    elif pkt.get("eth_type") == ETH_TYPE_ARP:
        fields.append("arp")
    for k, v in pkt.items():
        if k != "eth_type":
            fields.append(f"{names.get(k, k)}={v}")
    return ",".join(fields)


def test_ofproto_trace_agrees_with_the_simulator(world):
    name, p1, r1, (state, (flows, groups)) = world
    sim = Switch(flows, groups)
    local = next(p for p in state.local if p.ip == p1["ip"])
    gw = state.gateways[0]
    tun = state.tunnel_ofport
    ip = {
        "in_port": local.ofport,
        "eth_src": local.mac,
        "eth_type": ETH_TYPE_IP,
        "ipv4_src": local.ip,
    }
    arp = {
        "in_port": local.ofport,
        "eth_src": local.mac,
        "eth_dst": BCAST,
        "eth_type": ETH_TYPE_ARP,
        "arp_op": 1,
        "arp_sha": local.mac,
        "arp_spa": local.ip,
    }
    cases = {
        "to a remote pod": {**ip, "eth_dst": r1["mac"], "ipv4_dst": r1["ip"]},
        "to the gateway": {**ip, "eth_dst": gw.mac, "ipv4_dst": gw.ip},
        "forged source": {
            **ip,
            "eth_dst": r1["mac"],
            "ipv4_dst": r1["ip"],
            "ipv4_src": "100.64.9.9",
        },
        "arp for a remote pod": {**arp, "arp_tpa": r1["ip"]},
        "arp for an unknown address": {**arp, "arp_tpa": "100.64.9.9"},
        "from a peer": {
            "in_port": tun,
            "tun_ipv4_src": "198.18.0.2",
            "tunnel_id": 5001,
            "eth_src": r1["mac"],
            "eth_dst": local.mac,
            "eth_type": ETH_TYPE_IP,
        },
        "from a stranger": {
            "in_port": tun,
            "tun_ipv4_src": "198.18.0.99",
            "tunnel_id": 5001,
            "eth_src": r1["mac"],
            "eth_dst": local.mac,
            "eth_type": ETH_TYPE_IP,
        },
    }
    for case, pkt in cases.items():
        expected = sim.process(pkt)
        ports, tun_dsts = _trace(name, _ofctl(pkt))
        assert ports == expected.ports, case
        assert tun_dsts == {e.get("tun_ipv4_dst") for e in expected.emitted if e.port == tun}, case
