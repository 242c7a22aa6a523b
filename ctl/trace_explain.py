"""A parsed ofproto/trace in the pipeline's own words: each step's table name and
feature (from openflow/tables.py and the flow's cookie), what matched said with the
cluster's objects ("100.64.0.5 is h1/p1's own address"), the decision, and the verdict.

Tables are explained from their names, purposes and match fields, not one by one, so a
table added later (policy, services) reads sensibly before anyone teaches this module
about it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ctl import trace_policy
from ctl.policy_commands import RuleName
from ctl.trace_parse import RawStep, TracePass, fields
from ctl.trace_policy import PolicyNames
from openflow import cookies
from openflow.tables import PIPELINE
from store.cluster import Endpoint, Host, Network

TABLES = {t.table_id: t for t in PIPELINE}
DELIVERED, DELIVERED_TO_HOST, DROPPED, FORWARDED = (
    "delivered",
    "delivered-to-host",
    "dropped",
    "forwarded",  # left this host through the tunnel, for a host the trace cannot reach
)


@dataclass(frozen=True)
class Directory:
    """The cluster's objects a trace names: hosts, networks, endpoints (by lab pod name
    where the lab knows one)."""

    hosts: tuple[Host, ...]
    networks: tuple[Network, ...]
    endpoints: tuple[Endpoint, ...]

    def pod_name(self, ep: Endpoint) -> str:
        return ep.pod or f"{ep.host}/{ep.container_id.rsplit('-', 1)[-1]}"

    def owner_of_ip(self, ip: str, network: str | None) -> str | None:
        for ep in self.endpoints:
            if ep.ip == ip and network in (None, ep.network):
                return f"{self.pod_name(ep)}'s"
        for h in self.hosts:
            for g in h.gateways:
                if g.ip == ip and network in (None, g.network):
                    return f"{h.name}'s gateway"
        return None

    def owner_of_mac(self, mac: str, network: str | None) -> str | None:
        for ep in self.endpoints:
            if ep.mac == mac and network in (None, ep.network):
                return f"{self.pod_name(ep)}'s"
        for h in self.hosts:
            for g in h.gateways:
                if g.mac == mac and network in (None, g.network):
                    return f"{h.name}'s gateway"
        return None

    def host_by_ip(self, ip: str) -> Host | None:
        return next((h for h in self.hosts if h.tunnel_ip == ip), None)

    def network_by_index(self, index: int) -> Network | None:
        return next((n for n in self.networks if n.index == index), None)

    def network_by_vni(self, vni: int) -> Network | None:
        return next((n for n in self.networks if n.vni == vni), None)


@dataclass(frozen=True)
class HostView:
    """What one host's br-int trace is read against: its name, its ports by number and
    what each port is (a pod's, the gateway, the tunnel)."""

    host: str
    ports: dict[int, str]  # ofport -> port name
    port_roles: dict[str, str]  # port name -> "pod h1/p1", "the gateway port", ...
    tunnel_type: str


@dataclass(frozen=True)
class Step:
    host: str
    table: str
    table_id: int
    priority: int
    feature: str
    matched: str
    explained: str
    actions: tuple[str, ...]
    rule: RuleName | None = None  # the NetworkPolicy rule whose flow this is


def table_name(table_id: int) -> str:
    t = TABLES.get(table_id)
    return t.name if t else f"table {table_id}"


def feature_name(cookie: int | None) -> str:
    if cookie is None:
        return "unknown"
    try:
        return cookies.feature_of(cookie).name.lower()
    except ValueError:
        return "unknown"


def _int(value: str) -> int:
    return int(value.split("/")[0], 0)


def _network(d: Directory, f: dict[str, str]) -> Network | None:
    if "reg2" in f:
        return d.network_by_index(_int(f["reg2"]) & 0xFFFF)
    return None


def describe_match(raw: RawStep, view: HostView, d: Directory, net: Network | None) -> str:
    """What matched, in words."""
    f = fields(raw.match)
    if not f:
        return "nothing more specific matched (the table's default)"
    netname = net.name if net else None
    words: list[str] = []
    for key, value in f.items():
        if key == "in_port":
            name = view.ports.get(int(value), value) if value.isdigit() else value
            words.append(f"came in on {view.port_roles.get(name, name)}")
        elif key == "tun_src":
            h = d.host_by_ip(value)
            words.append(f"VXLAN from {h.name + ' ' if h else ''}{value}, a peer")
        elif key == "tun_id":
            n = d.network_by_vni(_int(value))
            words.append(f"VNI {_int(value)}{' (network ' + n.name + ')' if n else ''}")
        elif key == "reg2":
            n = d.network_by_index(_int(value) & 0xFFFF)
            words.append(f"network {n.name if n else _int(value)}")
        elif key in ("dl_src", "dl_dst"):
            side = "source" if key == "dl_src" else "destination"
            if "/" in value:
                words.append(f"{side} MAC is broadcast or multicast")
                continue
            owner = d.owner_of_mac(value, netname)
            words.append(f"{side} MAC {value}" + (f" is {owner}" if owner else ""))
        elif key in ("nw_src", "nw_dst", "arp_spa", "arp_tpa"):
            side = "source" if key in ("nw_src", "arp_spa") else "destination"
            owner = d.owner_of_ip(value, netname) if "/" not in value else None
            if owner and raw.table_id == 10:
                words.append(f"{value} is {owner.removesuffix(chr(39) + 's')}'s own address")
            else:
                words.append(f"{side} IP {value}" + (f" is {owner}" if owner else ""))
        elif key == "reg0":
            words.append(_reg0(value))
        elif key == "reg1":
            name = view.ports.get(_int(value), value)
            words.append(f"decided: out of {view.port_roles.get(name, name)}")
        elif key == "conj_id":
            words.append(f"every clause of conjunction {value} held")
        elif key == "ct_state":
            words.append(f"conntrack state {value}")
        elif key in ("ip", "arp", "tcp", "udp", "icmp"):
            words.append(f"{key.upper()} packet")
        else:
            words.append(f"{key}={value}")
    return "; ".join(words)


def _reg0(value: str) -> str:
    v, _, m = value.partition("/")
    mask = int(m, 0) if m else 0xFFFFFFFF
    v = int(v, 0)
    out = []
    if mask & 0xF:
        out.append(
            {1: "from a pod", 2: "from the host's gateway", 3: "from the tunnel"}.get(
                v & 0xF, f"source kind {v & 0xF}"
            )
        )
    if mask & 0xF0:
        out.append(
            {1: "decided: a port", 2: "decided: flood", 3: "decided: a local pod"}.get(
                (v >> 4) & 0xF, f"destination kind {(v >> 4) & 0xF}"
            )
        )
    return ", ".join(out)


def describe_actions(raw: RawStep, view: HostView, d: Directory) -> str:
    """The decision the step took, in words."""
    acts = {
        a.split("->")[-1]: a.split("->")[0].removeprefix("set_field:")
        for a in raw.actions
        if a.startswith("set_field:")
    }
    words: list[str] = []
    if "tun_dst" in acts:
        h = d.host_by_ip(acts["tun_dst"])
        vni = _int(acts.get("tun_id", "0"))
        words.append(
            f"to {h.name + ' ' if h else ''}{acts['tun_dst']} over {view.tunnel_type}, VNI {vni}"
        )
    elif "reg1" in acts:
        name = view.ports.get(_int(acts["reg1"]), acts["reg1"])
        words.append(f"to {view.port_roles.get(name, name)}")
    if "eth_dst" in acts:
        words.append(f"destination MAC rewritten to {acts['eth_dst']}")
    for a in raw.actions:
        if a.startswith("goto_table:"):
            words.append(f"next: {table_name(int(a.split(':')[1]))}")
        elif a.startswith("ct("):
            words.append("conntrack " + ("commit" if "commit" in a else "lookup"))
            if "table=" in a:
                words.append(
                    f"then {table_name(int(a.split('table=')[1].split(',')[0].rstrip(')')))}"
                )
        elif a.startswith("group:"):
            words.append(f"flood to group {a.split(':')[1]}")
        elif a == "drop" and not any(x.startswith("ct(") for x in raw.actions):
            words.append("drop")
    for port in raw.output_ports:
        name = view.ports.get(port, str(port))
        words.append(f"out of {view.port_roles.get(name, name)}")
    return "; ".join(words)


def explain(
    raw: RawStep,
    view: HostView,
    d: Directory,
    network: str | None = None,
    policy: PolicyNames | None = None,
) -> Step:
    """One step in words; ``network`` is the traced packet's, for the tables whose flows
    do not match it (port_security): two networks may hold the same address and MAC;
    ``policy`` names the NetworkPolicy rules (ctl/trace_policy.py)."""
    f = fields(raw.match)
    net = _network(d, f) or next((n for n in d.networks if n.name == network), None)
    explained = describe_actions(raw, view, d)
    words = trace_policy.explain_step(raw, policy)
    if words:
        explained = f"{words}; {explained}" if explained else words
    return Step(
        host=view.host,
        table=table_name(raw.table_id),
        table_id=raw.table_id,
        priority=raw.priority,
        feature=feature_name(raw.cookie),
        matched=describe_match(raw, view, d, net),
        explained=explained,
        actions=raw.actions,
        rule=trace_policy.rule_of(raw, policy),
    )


@dataclass(frozen=True)
class PacketFacts:
    """What the traced packet carried, for naming why it was dropped."""

    in_port: str
    eth_src: str
    eth_dst: str
    ip_src: str
    ip_dst: str
    network: str | None
    tun_src: str | None = None
    tun_id: int | None = None


def drop_reason(table_id: int, packet: PacketFacts, view: HostView, d: Directory) -> str:
    """Why the last table dropped the packet: by what its flows match, said with the
    packet's own values."""
    t = TABLES.get(table_id)
    name = table_name(table_id)
    role = view.port_roles.get(packet.in_port, packet.in_port)
    if t is not None and "tun_ipv4_src" in t.matches and packet.tun_src is not None:
        if d.host_by_ip(packet.tun_src) is None:
            return f"VXLAN from {packet.tun_src}, not a peer"
        if packet.tun_id is not None and d.network_by_vni(packet.tun_id) is None:
            return f"VNI {packet.tun_id} is no network's"
    if t is not None and "ipv4_src" in t.matches and "in_port" in t.matches:
        who = role.removeprefix("pod ")
        if d.owner_of_ip(packet.ip_src, packet.network) != f"{who}'s":
            return f"{packet.ip_src} is not {who}'s address"
        if d.owner_of_mac(packet.eth_src, packet.network) != f"{who}'s":
            return f"{packet.eth_src} is not {who}'s MAC"
    if t is not None and "eth_dst" in t.matches:
        return f"{packet.eth_dst} is not known in network {packet.network}"
    if t is not None and "in_port" in t.matches:
        return f"{role} is not a port the pipeline knows"
    purpose = f" ({t.purpose})" if t else ""
    return f"no flow in {name} let it through{purpose}"


def network_of_ip(d: Directory, ip: str) -> list[Network]:
    addr = ipaddress.IPv4Address(ip)
    return [n for n in d.networks if addr in ipaddress.IPv4Network(n.cidr)]


def final(passes: tuple[TracePass, ...]) -> tuple[str, RawStep | None, tuple[int, ...]]:
    """(dropped|output, the last step, the ports the last pass output to)."""
    last = passes[-1]
    step = last.steps[-1] if last.steps else None
    ports = tuple(p for s in last.steps for p in s.output_ports)
    if last.datapath_actions == "drop" or not ports:
        return DROPPED, step, ()
    return "output", step, ports
