"""The model against the real switch: the agent's flows on br-int equal openflow.pipeline's,
and ofproto/trace forwards packets where openflow.simulate says they go."""

from __future__ import annotations

import collections
import dataclasses
import ipaddress
import re

import pytest

from controller import hoststate
from lab import lab, pods
from netpol.compile import HostView, LocalPod, PolicyProgram
from openflow import pipeline
from openflow.model import (
    ETH_TYPE_ARP,
    ETH_TYPE_IP,
    FIELD_BITS,
    IPPROTO_TCP,
    IPPROTO_UDP,
    IPV4_FIELDS,
    METADATA_MASK,
    OFPP_IN_PORT,
    Ct,
    Flow,
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
)
from openflow.simulate import Switch
from ovsdb.client import OvsdbClient
from store import open_cluster
from store.policy_records import read_policy_state
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
        hosts = cluster.list_hosts()
        [mine] = [h.gateways[0] for h in hosts if h.name == "h1"]
        state = hoststate.build_host_state(
            me="h1",
            tunnel_ofport=client.interface("br-int", "tun-vxlan")["ofport"],
            networks=cluster.list_networks(),
            hosts=hosts,
            endpoints=cluster.list_endpoints(),
            local_ports=client.list_endpoint_ports("br-int"),
            gateways=[
                hoststate.GatewayPort(
                    "default",
                    gw["ofport"],
                    mine.mac,
                    mine.ip,
                    hoststate.gateway_ip(default.cidr),
                )
            ],
        )
        generation = int(br.external_ids["ovs-overlay-generation"])
        # The policy program as the agent compiles it (no Kubernetes pods here: conntrack
        # for the network, and the node's own address let through to its pods).
        policy, _ = read_policy_state(cluster.kv, "default")
        ports = {p.endpoint.ip: p.ofport for p in client.list_endpoint_ports("br-int")}
        local = sorted(
            (LocalPod(p.key, ports[p.ip]) for p in policy.pods if p.ip in ports),
            key=lambda lp: lp.ofport,
        )
        program = PolicyProgram(policy, HostView(default.index, tuple(local), mine.ip))
    cluster.close()
    state = dataclasses.replace(state, policy=program)
    return state, pipeline.build(state, generation)


# How ovs-ofctl prints what the model names: match fields, set_field targets, NXM registers.
_OFCTL_MATCH = {
    "eth_src": "dl_src",
    "eth_dst": "dl_dst",
    "ipv4_src": "nw_src",
    "ipv4_dst": "nw_dst",
    "tun_ipv4_src": "tun_src",
    "tun_ipv4_dst": "tun_dst",
    "tunnel_id": "tun_id",
}
_OFCTL_SET_FIELD = {"tun_ipv4_dst": "tun_dst", "tun_ipv4_src": "tun_src", "tunnel_id": "tun_id"}
_NXM = {
    "eth_src": "NXM_OF_ETH_SRC",
    "eth_dst": "NXM_OF_ETH_DST",
    "arp_sha": "NXM_NX_ARP_SHA",
    "arp_tha": "NXM_NX_ARP_THA",
    "arp_spa": "NXM_OF_ARP_SPA",
    "arp_tpa": "NXM_OF_ARP_TPA",
}
_HEX = {"tunnel_id", "metadata", "ct_mark", *(f"reg{i}" for i in range(16))}
_CT_FLAGS = ("new", "est", "rel", "rpl", "inv", "trk")  # bit 0 up, as ovs-ofctl prints them
_PROTOCOL = {ETH_TYPE_IP: "ip", ETH_TYPE_ARP: "arp"}


def _value(name: str, value) -> str:
    return hex(value) if name in _HEX else str(value)


_IP_PROTOCOL = {IPPROTO_TCP: "tcp", IPPROTO_UDP: "udp"}
# NXM names as ovs-ofctl prints a learn's specs.
_LEARN_NXM = {
    "in_port": "NXM_OF_IN_PORT",
    "eth_src": "NXM_OF_ETH_SRC",
    "eth_dst": "NXM_OF_ETH_DST",
    "ipv4_src": "NXM_OF_IP_SRC",
    "ipv4_dst": "NXM_OF_IP_DST",
    "tcp_src": "NXM_OF_TCP_SRC",
    "tcp_dst": "NXM_OF_TCP_DST",
    "udp_src": "NXM_OF_UDP_SRC",
    "udp_dst": "NXM_OF_UDP_DST",
}
_LEARN_VALUE = {"eth_type": "eth_type={:#x}", "ip_proto": "nw_proto={}"}


def _learn_bits(bits) -> str:
    name = _LEARN_NXM.get(bits.name, f"NXM_NX_{bits.name.upper()}")
    whole = bits.start == 0 and bits.end == FIELD_BITS[bits.name] - 1
    return f"{name}[]" if whole and bits.name in _LEARN_NXM else f"{name}[{bits.start}..{bits.end}]"


def _ofctl_learn(a: Learn) -> str:
    parts = [f"table={a.table.table_id}"]
    for name in ("idle_timeout", "hard_timeout", "fin_idle_timeout", "fin_hard_timeout"):
        if getattr(a, name):
            parts.append(f"{name}={getattr(a, name)}")
    parts.append(f"priority={a.priority}")
    if a.cookie:
        parts.append(f"cookie={a.cookie:#x}")
    for spec in a.specs:
        if isinstance(spec, LearnMatchValue):
            parts.append(_LEARN_VALUE[spec.dst.name].format(spec.value))
        elif isinstance(spec, LearnMatchField) and spec.dst == spec.src:
            parts.append(_learn_bits(spec.dst))
        elif isinstance(spec, LearnMatchField):
            parts.append(f"{_learn_bits(spec.dst)}={_learn_bits(spec.src)}")
        elif isinstance(spec, LearnLoadField):
            parts.append(f"load:{_learn_bits(spec.src)}->{_learn_bits(spec.dst)}")
        elif isinstance(spec, LearnOutput):
            parts.append(f"output:{_learn_bits(spec.src)}")
        else:
            raise AssertionError(f"no ovs-ofctl form for {spec!r}")
    return "learn(" + ",".join(parts) + ")"


def _ofctl_match(flow: Flow) -> frozenset[str]:
    out = set()
    proto = next((m.value for m in flow.match if m.name == "ip_proto"), None)
    for m in flow.match:
        if m.name == "eth_type":
            out.add(_IP_PROTOCOL[proto] if proto is not None else _PROTOCOL[m.value])
            continue
        if m.name == "ip_proto":
            continue
        if m.name == "ct_state":
            flags = "".join(
                ("+" if m.value >> bit & 1 else "-") + name
                for bit, name in enumerate(_CT_FLAGS)
                if m.mask >> bit & 1
            )
            out.add(f"ct_state={flags}")
            continue
        text = f"{_OFCTL_MATCH.get(m.name, m.name)}={_value(m.name, m.value)}"
        if m.mask is not None and m.name in IPV4_FIELDS:  # ovs-ofctl prints a prefix
            text += f"/{ipaddress.IPv4Network(f'0.0.0.0/{m.mask}').prefixlen}"
        elif m.mask is not None:
            text += f"/{_value(m.name, m.mask)}"
        out.add(text)
    return frozenset(out)


def _ofctl_actions(actions) -> list[str]:
    out = []
    for a in actions:
        if isinstance(a, Output):
            out.append("IN_PORT" if a.port == OFPP_IN_PORT else f"output:{a.port}")
        elif isinstance(a, SetField):
            name = _OFCTL_SET_FIELD.get(a.name, a.name)
            out.append(f"set_field:{_value(a.name, a.value)}->{name}")
        elif isinstance(a, Move):
            out.append(f"move:{_NXM[a.src]}[]->{_NXM[a.dst]}[]")
        elif isinstance(a, GroupAction):
            out.append(f"group:{a.group_id}")
        elif isinstance(a, Load):
            mask = "" if a.mask == (1 << 32) - 1 else f"/{hex(a.mask)}"
            out.append(f"set_field:{hex(a.value)}{mask}->{a.name}")
        elif isinstance(a, OutputReg):
            whole = (a.src.start, a.src.end) == (0, 31)
            bits = "" if whole else f"{a.src.start}..{a.src.end}"
            out.append(f"output:NXM_NX_{a.src.name.upper()}[{bits}]")
        elif isinstance(a, Ct) and a.nat is None:
            zone = (
                a.zone
                if isinstance(a.zone, int)
                else f"NXM_NX_{a.zone.name.upper()}[{a.zone.start}..{a.zone.end}]"
            )
            parts = (["commit"] if a.commit else []) + (
                [f"table={a.table.table_id}"] if a.table is not None else []
            )
            parts.append(f"zone={zone}")
            if a.exec:
                parts.append("exec(" + ",".join(_ofctl_actions(a.exec)) + ")")
            out.append("ct(" + ",".join(parts) + ")")
        elif isinstance(a, Learn):
            out.append(_ofctl_learn(a))
        else:
            raise AssertionError(f"no ovs-ofctl form for {a!r}")
    return out


def _ofctl_flow(flow: Flow) -> tuple:
    """A model flow as ovs-ofctl prints it: (cookie, table, priority, match, actions)."""
    actions = _ofctl_actions(flow.actions)
    if flow.write_metadata is not None:
        value, mask = flow.write_metadata
        actions.append(
            f"write_metadata:{hex(value)}" + ("" if mask == METADATA_MASK else f"/{hex(mask)}")
        )
    if flow.goto is not None:
        actions.append(f"goto_table:{flow.goto.table_id}")
    return (
        flow.cookie,
        flow.table.table_id,
        flow.priority,
        _ofctl_match(flow),
        ",".join(actions) or "drop",
    )


_DUMP_LINE = re.compile(
    r"cookie=(?P<cookie>0x[0-9a-f]+),(?: table=(?P<table>\d+),)? "
    r"priority=(?P<priority>\d+)(?:,(?P<match>\S+))? actions=(?P<actions>\S+)"
)


def _switch_flows(dump: str) -> collections.Counter:
    """``ovs-ofctl --no-stats --no-names dump-flows`` lines in _ofctl_flow's form."""
    flows = collections.Counter()
    for line in dump.splitlines():
        if not line.strip():
            continue
        m = _DUMP_LINE.fullmatch(line.strip())
        assert m, f"unparsed dump-flows line: {line}"
        flows[
            (
                int(m["cookie"], 16),
                int(m["table"] or 0),  # ovs-ofctl leaves out "table=0"
                int(m["priority"]),
                frozenset(m["match"].split(",")) if m["match"] else frozenset(),
                m["actions"],
            )
        ] += 1
    return flows


def test_flows_on_the_switch_are_the_model(world):
    """Every flow on br-int, field by field and action by action, is the model's, and
    nothing else is there: cookie, table, priority, every match field with its mask, and
    the exact action list (order matters) with write_metadata and goto_table."""
    name, _, _, (_, (flows, groups)) = world
    dump = ovs(
        name,
        "h1",
        "ovs-ofctl",
        "-O",
        "OpenFlow13",
        "--no-stats",
        "--no-names",
        "dump-flows",
        "br-int",
    )
    on_switch = _switch_flows(dump)
    model = collections.Counter(_ofctl_flow(f) for f in flows)
    assert on_switch - model == collections.Counter(), "on br-int but not in the model"
    assert model - on_switch == collections.Counter(), "in the model but not on br-int"

    dump_groups = ovs(
        name, "h1", "ovs-ofctl", "-O", "OpenFlow13", "--no-names", "dump-groups", "br-int"
    )
    switch_groups = {}
    for m in re.finditer(r"group_id=(\d+),type=all((?:,bucket=\S+?)*)(?=\s|$)", dump_groups):
        buckets = m[2].split(",bucket=")[1:]
        switch_groups[int(m[1])] = sorted(b.removeprefix("actions=") for b in buckets)
    model_groups = {
        g.group_id: sorted(",".join(_ofctl_actions(b.actions)) for b in g.buckets) for g in groups
    }
    assert switch_groups == model_groups


def _trace(name: str, flow: str) -> tuple[set, set]:
    """Output ports and tunnel destinations that ofproto/trace shows in br-int."""
    out = ovs(name, "h1", "ovs-appctl", "ofproto/trace", "br-int", flow)
    section = out.split('bridge("br-int")', 1)[1].split('bridge("br-phy")', 1)[0]
    in_port = int(re.search(r"in_port=(\d+)", flow).group(1))
    lines = section.splitlines()
    ports, tun_dsts = set(), set()
    for i, line in enumerate(lines):
        skipped = i + 1 < len(lines) and "skipping output to input port" in lines[i + 1]
        if m := re.fullmatch(r"\s*(?:output:|-> output port is )(\d+)", line):
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
