"""``ovs-overlayctl trace``: a packet built as its source would send it, run through the
host's real ``ofproto/trace`` and, when it leaves through the tunnel, through the receiving
host's, explained step by step in the pipeline's words (ctl/trace_explain.py).

Observes only: ofproto/trace changes no flow and sends no packet.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import re
from dataclasses import dataclass

from controller.endpoints import host_port_name
from controller.hoststate import GATEWAY_PORT
from ctl import lab_host, trace_explain, trace_parse
from ctl.trace_explain import Directory, HostView, PacketFacts, Step
from lab import naming, netns
from lab.lab import LabError, open_lab_cluster

_PORT_LINE = re.compile(r"^\s*(\d+)\(([^)]+)\):")
MAX_HOPS = 4  # pod -> tunnel -> pod is 2; more means a loop


@dataclass(frozen=True)
class Drop:
    host: str
    table: str
    reason: str


@dataclass(frozen=True)
class TraceReport:
    source: str
    destination: str
    packet: str  # the first host's ofproto/trace flow
    notes: tuple[str, ...]
    steps: tuple[Step, ...]
    verdict: str  # delivered, delivered-to-host, dropped
    delivered_to: str | None
    drop: Drop | None


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "trace", help="trace a packet through br-int (and the receiving host) in plain words"
    )
    p.add_argument("--lab", required=True, help="the lab")
    p.add_argument("--state-dir", help=f"where labs live (default {naming.DEFAULT_STATE_ROOT})")
    p.add_argument("--from", dest="source", required=True, help="hN/POD, hN (the node) or an IP")
    p.add_argument("--to", dest="destination", required=True, help="hN/POD or an IP")
    p.add_argument("--proto", choices=("icmp", "tcp", "udp"), default="icmp")
    p.add_argument("--dport", type=int, help="destination port (tcp, udp)")
    p.add_argument("--src-ip", help="forge the source IP")
    p.add_argument("--src-mac", help="forge the source MAC")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")
    p.set_defaults(func=cmd_trace)


@dataclass(frozen=True)
class Endpointish:
    """A source or destination: where it is and what it sends from."""

    label: str
    host: str | None
    network: str | None
    ip: str
    mac: str | None
    port: str | None  # its port on br-int


def cmd_trace(args: argparse.Namespace) -> int:
    state = args.state_dir or naming.DEFAULT_STATE_ROOT
    lab_host.host_paths(args.lab, "h1", state)  # the lab exists
    if args.dport is not None and args.proto == "icmp":
        raise ValueError("--dport needs --proto tcp or udp")
    with open_lab_cluster(args.lab, state) as cluster:
        d = Directory(
            tuple(cluster.list_hosts()),
            tuple(cluster.list_networks()),
            tuple(cluster.list_endpoints()),
        )
    report = trace(args, d, state)
    if args.output == "json":
        print(json.dumps(dataclasses.asdict(report), indent=2))
    else:
        print("\n".join(render(report)))
    return 0


def resolve(d: Directory, lab: str, name: str, as_source: bool) -> Endpointish:
    """A pod (hN/POD or its IP), a node (hN, as a source) or any other address."""
    if "/" in name:
        host, pod = name.split("/", 1)
        container = f"{lab}-{host}-{pod}"
        for ep in d.endpoints:
            if ep.host == host and ep.container_id == container:
                port = host_port_name(ep.container_id, ep.ifname)
                return Endpointish(name, host, ep.network, ep.ip, ep.mac, port)
        raise LabError(f"lab {lab} has no pod {name}; 'ovs-overlayctl lab pod list' shows them")
    if re.fullmatch(r"h[0-9]+", name):
        h = next((h for h in d.hosts if h.name == name), None)
        if h is None or not h.gateways:
            raise LabError(f"lab {lab} has no live host {name} with a gateway")
        g = h.gateways[0]
        return Endpointish(f"{name} (node)", name, g.network, g.ip, g.mac, GATEWAY_PORT)
    try:
        ipaddress.IPv4Address(name)
    except ValueError:
        raise ValueError(f"{name!r} is neither hN/POD, hN nor an IPv4 address") from None
    found = [ep for ep in d.endpoints if ep.ip == name]
    if len(found) > 1:
        raise ValueError(f"{name} is a pod's address in several networks; name the pod hN/POD")
    if found:
        ep = found[0]
        port = host_port_name(ep.container_id, ep.ifname)
        return Endpointish(d.pod_name(ep), ep.host, ep.network, ep.ip, ep.mac, port)
    if as_source:
        if ipaddress.IPv4Address(name) not in naming.UNDERLAY_NET:
            raise ValueError(f"{name} is no pod's address; trace from hN/POD, hN or a pod's IP")
        return Endpointish(f"VXLAN from {name}", None, None, name, None, None)
    return Endpointish(name, None, None, name, None, None)


def _run(lab: str, host: str, state: str, argv: list[str]) -> str:
    env = lab_host.host_paths(lab, host, state).env()
    done = netns.run_in_namespace(naming.host_namespace(lab, host), argv, env=env, check=False)
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise LabError(f"{argv[0]} failed on {lab}'s {host} ({why}); is its OVS running?")
    return done.stdout


def roles(d: Directory, host: str, ports: dict[int, str]) -> tuple[dict[str, str], str]:
    out: dict[str, str] = {}
    tunnel = "vxlan"
    for ep in d.endpoints:
        if ep.host == host:
            out[host_port_name(ep.container_id, ep.ifname)] = f"pod {d.pod_name(ep)}"
    for name in ports.values():
        if name == GATEWAY_PORT:
            out[name] = f"{host}'s gateway port"
        elif name.startswith("tun-"):
            out[name] = "the tunnel port"
            tunnel = name.removeprefix("tun-")
    return out, tunnel


def trace(args: argparse.Namespace, d: Directory, state: str) -> TraceReport:
    lab = args.lab
    src = resolve(d, lab, args.source, as_source=True)
    dst = resolve(d, lab, args.destination, as_source=False)
    notes: list[str] = []
    ip_src = args.src_ip or src.ip
    if src.port is None:  # VXLAN from an underlay address into the destination's host
        if dst.host is None:
            raise ValueError("a VXLAN source needs a pod as destination (--to hN/POD)")
        net = next(n for n in d.networks if n.name == dst.network)
        host = dst.host
        peer = d.host_by_ip(src.ip)
        inner_src_mac = args.src_mac or "0a:58:00:00:00:01"
        pkt = PacketFacts(
            "tun-vxlan",
            inner_src_mac,
            dst.mac or "",
            args.src_ip or "100.64.255.254",
            dst.ip,
            dst.network,
            src.ip,
            net.vni,
        )
        ip_src = pkt.ip_src
        notes.append(
            f"VXLAN from {src.ip}{' (' + peer.name + ')' if peer else ''} to {host}, VNI {net.vni}"
        )
    else:
        host = src.host
        dmac = dest_mac(d, src, dst, notes)
        pkt = PacketFacts(src.port, args.src_mac or src.mac, dmac, ip_src, dst.ip, src.network)
    steps: list[Step] = []
    first_flow = ""

    def report(verdict: str, delivered_to: str | None, drop: Drop | None = None) -> TraceReport:
        return TraceReport(
            args.source, args.destination, first_flow, tuple(notes), tuple(steps),
            verdict, delivered_to, drop,
        )  # fmt: skip

    for _ in range(MAX_HOPS):
        ports = _ports(lab, host, state)
        role, tunnel = roles(d, host, ports)
        view = HostView(host, ports, role, tunnel)
        if pkt.tun_src is not None:
            tun_port = next((n for n in ports.values() if n.startswith("tun-")), "tun-vxlan")
            pkt = dataclasses.replace(pkt, in_port=tun_port)
        flow = flow_text(pkt, args, d)
        first_flow = first_flow or flow
        out = _run(
            lab, host, state, ["ovs-appctl", "ofproto/trace", naming.INTEGRATION_BRIDGE, flow]
        )
        passes = trace_parse.parse(out)
        steps += [trace_explain.explain(s, view, d, pkt.network) for p in passes for s in p.steps]
        kind, last, outs = trace_explain.final(passes)
        if kind == trace_explain.DROPPED:
            table = trace_explain.table_name(last.table_id) if last else "classifier"
            reason = trace_explain.drop_reason(last.table_id if last else 0, pkt, view, d)
            return report(trace_explain.DROPPED, None, Drop(host, table, reason))
        name = ports.get(outs[-1], str(outs[-1]))
        if name == GATEWAY_PORT:
            notes.append(f"into {host}'s stack: its routing and nftables take it from there")
            return report(trace_explain.DELIVERED_TO_HOST, f"{host} (node)")
        if name.startswith("tun-"):
            tun_dst = _tunnel_set(passes)
            nxt = d.host_by_ip(tun_dst[0]) if tun_dst else None
            if nxt is None:
                raise LabError(
                    f"the packet left {host} for {tun_dst}, which is no host of lab {lab}"
                )
            me = next(h for h in d.hosts if h.name == host)
            pkt = dataclasses.replace(pkt, tun_src=me.tunnel_ip, tun_id=tun_dst[1])
            host = nxt.name
            continue
        return report(trace_explain.DELIVERED, role.get(name, name))
    raise LabError(f"the trace crossed more than {MAX_HOPS} hosts; the pipeline loops")


def _ports(lab: str, host: str, state: str) -> dict[int, str]:
    out = _run(
        lab, host, state, ["ovs-ofctl", "-O", "OpenFlow13", "show", naming.INTEGRATION_BRIDGE]
    )
    return {
        int(m.group(1)): m.group(2) for line in out.splitlines() if (m := _PORT_LINE.match(line))
    }


def _tunnel_set(passes) -> tuple[str, int] | None:
    dst, vni = None, 0
    for p in passes:
        for s in p.steps:
            for a in s.actions:
                if a.endswith("->tun_dst"):
                    dst = a.removeprefix("set_field:").split("->")[0]
                elif a.endswith("->tun_id"):
                    vni = int(a.removeprefix("set_field:").split("->")[0], 0)
    return (dst, vni) if dst else None


def dest_mac(d: Directory, src: Endpointish, dst: Endpointish, notes: list[str]) -> str:
    """The destination MAC the source would use: the owner of the address in its own
    network (pods ARP through the switch), else its host's gateway's."""
    net = next(n for n in d.networks if n.name == src.network)
    for ep in d.endpoints:
        if ep.network == net.name and ep.ip == dst.ip:
            return ep.mac
    for h in d.hosts:
        for g in h.gateways:
            if g.network == net.name and g.ip == dst.ip:
                return g.mac
    if ipaddress.IPv4Address(dst.ip) in ipaddress.IPv4Network(net.cidr):
        if dst.mac is None:
            raise ValueError(f"no address {dst.ip} in network {net.name}; its ARP goes unanswered")
        notes.append(
            f"no {dst.ip} in network {net.name}: the ARP goes unanswered; "
            f"traced with {dst.label}'s MAC {dst.mac} as if it were known"
        )
        return dst.mac
    gw = next(
        (g for h in d.hosts if h.name == src.host for g in h.gateways if g.network == net.name),
        None,
    )
    if gw is None:
        raise ValueError(
            f"network {net.name} has no gateway on {src.host}; {dst.ip} is unreachable"
        )
    notes.append(f"{dst.ip} is outside network {net.name}: sent to {src.host}'s gateway {gw.mac}")
    return gw.mac


def flow_text(p: PacketFacts, args: argparse.Namespace, d: Directory) -> str:
    parts = [f"in_port={p.in_port}"]
    if p.tun_src is not None:
        parts += [f"tun_id={p.tun_id:#x}", f"tun_src={p.tun_src}"]
    parts += [
        f"dl_src={p.eth_src}",
        f"dl_dst={p.eth_dst}",
        args.proto,
        f"nw_src={p.ip_src}",
        f"nw_dst={p.ip_dst}",
        "nw_ttl=64",
    ]
    if args.proto == "icmp":
        parts.append("icmp_type=8")
    elif args.dport is not None:
        # ofproto/trace's exact-flow parser (OVS 3.1) refuses the legacy tp_dst
        # ("prerequisites not met for setting tp_dst") even after "udp"; udp_dst works.
        parts.append(f"{args.proto}_dst={args.dport}")
    return ",".join(parts)


def render(r: TraceReport) -> list[str]:
    lines = [f"trace {r.source} -> {r.destination}: {r.packet}"]
    lines += [f"  note: {n}" for n in r.notes]
    for s in r.steps:
        lines.append(f"  {s.host} {s.table} (priority {s.priority}, {s.feature}): {s.matched}")
        if s.explained:
            lines.append(f"      -> {s.explained}")
    if r.drop is not None:
        lines.append(f"verdict: dropped on {r.drop.host} in {r.drop.table}: {r.drop.reason}")
    else:
        lines.append(f"verdict: {r.verdict} to {r.delivered_to}")
    return lines
