"""``ovs-overlayctl trace``: a packet built as its source would send it, run through the
host's real ``ofproto/trace`` and, when it leaves through the tunnel, through the receiving
host's, explained step by step in the pipeline's words (ctl/trace_explain.py).

In a lab (``--lab L``) the trace follows the packet across hosts.  On a real host it runs
on this host's ovs-vswitchd only (ctl/trace_hosts.py): a packet that leaves through the
tunnel is ``forwarded``, with the command that continues the trace on the receiving host
(``--arriving-from TUNNEL_IP --vni N``: the same packet entering there from the tunnel).

Observes only: ofproto/trace changes no flow and sends no packet.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import re
import shlex
from contextlib import closing
from dataclasses import dataclass
from typing import Literal

from controller.endpoints import host_port_name
from controller.hoststate import GATEWAY_PORT
from ctl import lab_host, trace_explain, trace_parse, trace_policy
from ctl.policy_commands import DEFAULT_NETWORK, rule_words
from ctl.trace_explain import Directory, HostView, PacketFacts, Step
from ctl.trace_hosts import DEFAULT_AGENT_CONFIG, HostSwitch, LabSwitches, local_agent
from ctl.trace_policy import PolicyNames
from ctl.trace_resolve import Endpointish, dest_mac, resolve
from lab import naming
from lab.lab import LabError, open_lab_cluster
from openflow.tables import POLICY_STATE
from store import open_cluster
from store.policy_records import read_policy_state

_PORT_LINE = re.compile(r"^\s*(\d+)\(([^)]+)\):")
MAX_HOPS = 4  # pod -> tunnel -> pod is 2; more means a loop
PROGRAM = "ovs-overlayctl"
Verdict = Literal["delivered", "delivered-to-host", "dropped", "forwarded"]


@dataclass(frozen=True)
class Drop:
    host: str
    table: str
    reason: str
    isolated_by: tuple[str, ...] = ()  # a policy drop: the policies isolating the pod


@dataclass(frozen=True)
class Forward:
    """The packet left through the tunnel for a host this trace cannot reach."""

    host: str
    tunnel_ip: str
    vni: int
    command: str  # run on ``host`` to continue the trace there


@dataclass(frozen=True)
class TraceReport:
    source: str
    destination: str
    packet: str  # the first host's ofproto/trace flow
    notes: tuple[str, ...]
    steps: tuple[Step, ...]
    verdict: Verdict
    delivered_to: str | None
    drop: Drop | None
    forwarded: Forward | None = None


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "trace", help="trace a packet through br-int (and the receiving host) in plain words"
    )
    p.add_argument("--lab", help="trace in this lab, across its hosts (else: on this host)")
    p.add_argument("--state-dir", help=f"where labs live (default {naming.DEFAULT_STATE_ROOT})")
    p.add_argument(
        "--config",
        help=f"without --lab: this host's agent config file (default {DEFAULT_AGENT_CONFIG})",
    )
    p.add_argument(
        "--from",
        dest="source",
        required=True,
        help="NAMESPACE/NAME, hN/POD (lab), a node (hN or the host's name) or an IP",
    )
    p.add_argument("--to", dest="destination", required=True, help="as --from, or any IP")
    p.add_argument("--proto", choices=("icmp", "tcp", "udp"), default="icmp")
    p.add_argument("--dport", type=int, help="destination port (tcp, udp)")
    p.add_argument("--src-ip", help="forge the source IP")
    p.add_argument("--src-mac", help="forge the source MAC")
    p.add_argument(
        "--arriving-from",
        metavar="TUNNEL_IP",
        help="continue a trace here: the packet enters from the tunnel, sent by this peer",
    )
    p.add_argument("--vni", type=int, help="with --arriving-from: the VNI it came with")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")
    p.set_defaults(func=cmd_trace)


def cmd_trace(args: argparse.Namespace) -> int:
    check_options(args)
    if args.lab:
        state = args.state_dir or naming.DEFAULT_STATE_ROOT
        lab_host.host_paths(args.lab, "h1", state)  # the lab exists
        where: LabSwitches | HostSwitch = LabSwitches(args.lab, state)
        opened = open_lab_cluster(args.lab, state)
        kubernetes_network = DEFAULT_NETWORK  # the lab's agents keep the default
    else:
        agent = local_agent(args.config or DEFAULT_AGENT_CONFIG)
        where = agent.switch
        opened = closing(open_cluster(agent.store))
        kubernetes_network = agent.kubernetes_network
    with opened as cluster:
        d = Directory(
            tuple(cluster.list_hosts()),
            tuple(cluster.list_networks()),
            tuple(cluster.list_endpoints()),
        )
        policy_state, _ = read_policy_state(cluster.kv, kubernetes_network)
    report = trace(args, d, where, PolicyNames.of(policy_state))
    if args.output == "json":
        print(json.dumps(dataclasses.asdict(report), indent=2))
    else:
        print("\n".join(render(report)))
    return 0


def check_options(args: argparse.Namespace) -> None:
    if args.dport is not None and args.proto == "icmp":
        raise ValueError("--dport needs --proto tcp or udp")
    if (args.arriving_from is None) != (args.vni is None):
        raise ValueError("--arriving-from TUNNEL_IP and --vni N go together; give both")
    if args.arriving_from is not None:
        try:
            ipaddress.IPv4Address(args.arriving_from)
        except ValueError:
            raise ValueError(
                f"--arriving-from {args.arriving_from!r} is not an IPv4 address; give the "
                "sending host's tunnel IP"
            ) from None
    if args.lab and args.config:
        raise ValueError("--config names this host's agent and --lab a lab; give one of them")
    if args.lab and args.arriving_from:
        raise ValueError(
            "--arriving-from continues a trace on a real host; in a lab the trace follows "
            "the packet across hosts by itself, so drop it"
        )
    if args.state_dir and not args.lab:
        raise ValueError("--state-dir names where labs live; give --lab too")


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


def first_packet(
    args: argparse.Namespace, d: Directory, src: Endpointish, dst: Endpointish, notes: list[str]
) -> PacketFacts:
    """The packet as it enters the first host's br-int: from the source's port, or from the
    tunnel (a VXLAN source; ``--arriving-from``)."""
    if src.port is None:  # VXLAN from an underlay address into the destination's host
        if dst.host is None:
            raise ValueError("a VXLAN source needs a pod as destination (--to a pod)")
        net = next(n for n in d.networks if n.name == dst.network)
        peer = d.host_by_ip(src.ip)
        notes.append(
            f"VXLAN from {src.ip}{' (' + peer.name + ')' if peer else ''} to {dst.host}, "
            f"VNI {net.vni}"
        )
        return PacketFacts(
            "tun-vxlan",
            args.src_mac or "0a:58:00:00:00:01",
            dst.mac or "",
            args.src_ip or "100.64.255.254",
            dst.ip,
            dst.network,
            src.ip,
            net.vni,
        )
    dmac = dest_mac(d, src, dst, notes)
    ip_src = args.src_ip or src.ip
    pkt = PacketFacts(src.port, args.src_mac or src.mac, dmac, ip_src, dst.ip, src.network)
    if args.arriving_from is None:
        return pkt
    peer = d.host_by_ip(args.arriving_from)
    notes.append(
        f"arrived over the tunnel from {peer.name + ' ' if peer else ''}{args.arriving_from}, "
        f"VNI {args.vni}"
    )
    return dataclasses.replace(pkt, tun_src=args.arriving_from, tun_id=args.vni)


def start_host(
    args: argparse.Namespace,
    d: Directory,
    src: Endpointish,
    dst: Endpointish,
    where: LabSwitches | HostSwitch,
) -> str:
    """The host whose br-int the packet enters first; ValueError when it is a host this
    trace cannot reach (a real host's trace starts there)."""
    if args.arriving_from is not None:
        if src.port is None:
            raise ValueError(
                "--arriving-from continues a pod's or a node's packet; --from is neither"
            )
        return where.host
    host = src.host if src.port is not None else dst.host
    if not where.reaches(host):
        what = src if src.port is not None else dst
        h = next((h for h in d.hosts if h.name == host), None)
        at = f"host {host} ({h.tunnel_ip})" if h else f"host {host}"
        raise ValueError(f"{what.label} is on {at}, not on {where.host}; run the trace there")
    return host


def trace(
    args: argparse.Namespace,
    d: Directory,
    where: LabSwitches | HostSwitch,
    policy: PolicyNames | None = None,
) -> TraceReport:
    """Follow the packet across the hosts ``where`` reaches; ``policy`` (the state the
    agents compile) names the NetworkPolicy rules and policies it meets."""
    lab = where.lab if isinstance(where, LabSwitches) else None
    src = resolve(d, lab, args.source, as_source=True)
    dst = resolve(d, lab, args.destination, as_source=False)
    notes: list[str] = []
    pkt = first_packet(args, d, src, dst, notes)
    host = start_host(args, d, src, dst, where)
    steps: list[Step] = []
    first_flow = ""

    def report(
        verdict: Verdict,
        delivered_to: str | None,
        drop: Drop | None = None,
        forwarded: Forward | None = None,
    ) -> TraceReport:
        return TraceReport(
            args.source, args.destination, first_flow, tuple(notes), tuple(steps),
            verdict, delivered_to, drop, forwarded,
        )  # fmt: skip

    for _ in range(MAX_HOPS):
        ports = _ports(where, host)
        role, tunnel = roles(d, host, ports)
        view = HostView(host, ports, role, tunnel)
        if pkt.tun_src is not None:
            tun_port = next((n for n in ports.values() if n.startswith("tun-")), "tun-vxlan")
            pkt = dataclasses.replace(pkt, in_port=tun_port)
        flow = flow_text(pkt, args, d)
        first_flow = first_flow or flow
        out = where.run(host, ["ovs-appctl", "ofproto/trace", where.bridge, flow])
        passes = trace_parse.parse(out, where.bridge)
        steps += [
            trace_explain.explain(s, view, d, pkt.network, policy) for p in passes for s in p.steps
        ]
        if trace_policy.NEW_NOTE not in notes and any(
            s.table_id == POLICY_STATE.table_id for p in passes for s in p.steps
        ):
            notes.append(trace_policy.NEW_NOTE)
        kind, last, outs = trace_explain.final(passes)
        if kind == trace_explain.DROPPED:
            table_id = last.table_id if last else 0
            table = trace_explain.table_name(table_id) if last else "classifier"
            proto = args.proto.upper()
            judged = trace_policy.isolation_drop(
                table_id, policy, pkt.ip_src, pkt.ip_dst, proto, args.dport or 0
            )
            if judged is not None:
                return report(trace_explain.DROPPED, None, Drop(host, table, *judged))
            reason = trace_explain.drop_reason(table_id, pkt, view, d)
            return report(trace_explain.DROPPED, None, Drop(host, table, reason))
        name = ports.get(outs[-1], str(outs[-1]))
        if name == GATEWAY_PORT:
            notes.append(f"into {host}'s stack: its routing and nftables take it from there")
            return report(trace_explain.DELIVERED_TO_HOST, f"{host} (node)")
        if name.startswith("tun-"):
            tun_dst = _tunnel_set(passes)
            nxt = d.host_by_ip(tun_dst[0]) if tun_dst else None
            if nxt is None:
                place = f"lab {lab}" if lab else "the cluster"
                raise LabError(f"the packet left {host} for {tun_dst}, which is no host of {place}")
            me = next(h for h in d.hosts if h.name == host)
            pkt = dataclasses.replace(pkt, tun_src=me.tunnel_ip, tun_id=tun_dst[1])
            if not where.reaches(nxt.name):
                command = continue_command(args, me.tunnel_ip, tun_dst[1])
                forward = Forward(nxt.name, nxt.tunnel_ip, tun_dst[1], command)
                return report(trace_explain.FORWARDED, None, forwarded=forward)
            host = nxt.name
            continue
        return report(trace_explain.DELIVERED, role.get(name, name))
    raise LabError(f"the trace crossed more than {MAX_HOPS} hosts; the pipeline loops")


def continue_command(args: argparse.Namespace, tun_src: str, vni: int) -> str:
    """The command that continues this trace on the receiving host."""
    argv = [PROGRAM, "trace", "--arriving-from", tun_src, "--vni", str(vni)]
    argv += ["--from", args.source, "--to", args.destination]
    if args.proto != "icmp":
        argv += ["--proto", args.proto]
    for option, value in (
        ("--dport", args.dport),
        ("--src-ip", args.src_ip),
        ("--src-mac", args.src_mac),
    ):
        if value is not None:
            argv += [option, str(value)]
    return shlex.join(argv)


def _ports(where: LabSwitches | HostSwitch, host: str) -> dict[int, str]:
    out = where.run(host, ["ovs-ofctl", "-O", "OpenFlow13", "show", where.bridge])
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
    elif r.forwarded is not None:
        f = r.forwarded
        lines.append(f"verdict: forwarded to {f.host} {f.tunnel_ip} over the tunnel, VNI {f.vni}")
        lines.append(f"  continue on {f.host}: {f.command}")
    else:
        lines.append(f"verdict: {r.verdict} to {r.delivered_to}")
    for s in r.steps:
        if s.rule is not None:
            lines.append(f"  policy: {s.host} {s.table}: allowed by {rule_words(s.rule)}")
    return lines
