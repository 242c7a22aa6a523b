"""What ``ovs-overlayctl status`` reports, as typed values: built from the agent's answer
and the store, printed as tables for people or as JSON for programs.

The JSON is these dataclasses' fields, nothing else; ``from_json`` reads it back and
refuses a missing or unknown key or a value of the wrong type, so a test (or a program)
can hold the shape fixed by a round trip.
"""

from __future__ import annotations

import dataclasses
import time
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone


@dataclass(frozen=True)
class StoreHealth:
    url: str  # without credentials (controller/status.py)
    reachable: bool
    since: float  # seconds since the epoch: when it last became reachable or not


@dataclass(frozen=True)
class AgentCounts:
    local_endpoints: int
    gateways: int
    networks: int
    peers: int
    remote_endpoints: int
    flows: int
    groups: int
    policies: int  # NetworkPolicies the agent holds and compiles


@dataclass(frozen=True)
class AgentStatus:
    socket: str
    host: str
    ready: bool
    version: str
    framework: str
    generation: int
    full_syncs: int
    last_full_sync: float | None
    bridge: str
    datapath_type: str | None
    tunnel_type: str
    tunnel_ip: str
    store: StoreHealth
    counts: AgentCounts


@dataclass(frozen=True)
class HostRow:
    name: str
    alive: bool
    tunnel_ip: str | None
    lease_left: int | None  # seconds
    endpoints: int
    blocks: int


@dataclass(frozen=True)
class NetworkRow:
    name: str
    vni: int
    index: int | None
    cidr: str
    mtu: int | None
    gateway: bool
    egress: str | None  # None also where networks have no egress field yet
    blocks: int  # claimed by hosts
    block_addresses: int  # addresses in those blocks
    addresses_used: int


@dataclass(frozen=True)
class ClusterStatus:
    hosts: tuple[HostRow, ...]
    networks: tuple[NetworkRow, ...]
    policies: int  # NetworkPolicies in the store


@dataclass(frozen=True)
class StatusReport:
    agent: AgentStatus | None
    agent_error: str | None  # one sentence: why there is no agent part
    cluster: ClusterStatus | None
    cluster_error: str | None  # one sentence: why there is no cluster part

    def to_json(self) -> dict:
        return dataclasses.asdict(self, dict_factory=lambda items: dict(items))


class ShapeError(ValueError):
    """JSON that is not the shape of the dataclass it is read as."""


def from_json(cls: type, value: object, strict: bool = True, where: str = "status"):
    """``value`` (parsed JSON) as ``cls``, checked all the way down; ``strict=False`` ignores
    keys ``cls`` does not have (an agent newer than this CLI may say more)."""
    if not isinstance(value, dict):
        raise ShapeError(f"{where} is not a JSON object")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    missing = [n for n in names if n not in value]
    extra = sorted(set(value) - set(names))
    if missing or (strict and extra):
        raise ShapeError(f"{where} lacks {missing} or has unknown {extra}")
    return cls(**{n: _typed(hints[n], value[n], strict, f"{where}.{n}") for n in names})


def _typed(hint, value, strict: bool, where: str):
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        [hint] = [o for o in options if o is not type(None)]
        return _typed(hint, value, strict, where)
    if origin is typing.Literal:
        if value not in typing.get_args(hint):
            raise ShapeError(f"{where} is {value!r}, not one of {list(typing.get_args(hint))}")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise ShapeError(f"{where} is not a list")
        item = typing.get_args(hint)[0]
        return tuple(_typed(item, v, strict, f"{where}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(hint):
        return from_json(hint, value, strict, where)
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, int | float) and not isinstance(value, bool),
        str: isinstance(value, str),
    }[hint]
    if not ok:
        raise ShapeError(f"{where} is {value!r}, not a {hint.__name__}")
    return float(value) if hint is float else value


# -- for people -------------------------------------------------------------------------


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """Left-aligned columns under upper-case headers; None shows as ``-``."""
    cells = [[h.upper().replace("_", " ") for h in headers]]
    cells += [[cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]


def cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def ago(when: float | None, now: float) -> str:
    """``12 s ago (2026-12-01 10:00:00 UTC)``, or ``never``."""
    if when is None:
        return "never"
    stamp = datetime.fromtimestamp(when, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{max(0.0, now - when):.0f} s ago ({stamp})"


def render(report: StatusReport, now: float | None = None) -> list[str]:
    """The report as lines for a terminal."""
    now = time.time() if now is None else now
    lines: list[str] = []
    a = report.agent
    if a is not None:
        c = a.counts
        store = "reachable" if a.store.reachable else "UNREACHABLE"
        lines += [
            f"agent {a.host}: {'ready' if a.ready else 'NOT READY'} "
            f"(ovs-overlay {a.version} under {a.framework}, socket {a.socket})",
            f"  generation {a.generation}, {a.full_syncs} full sync(s), "
            f"last {ago(a.last_full_sync, now)}",
            f"  bridge {a.bridge} ({a.datapath_type or 'unknown datapath'}), "
            f"tunnel {a.tunnel_type} from {a.tunnel_ip}",
            f"  store {a.store.url}: {store} since {ago(a.store.since, now)}",
            f"  local endpoints {c.local_endpoints}, gateways {c.gateways}, networks "
            f"{c.networks}, peers {c.peers}, remote endpoints {c.remote_endpoints}, flows "
            f"{c.flows}, groups {c.groups}, policies {c.policies}",
        ]
    if report.cluster is not None:
        hosts, nets = report.cluster.hosts, report.cluster.networks
        lines += ["", "hosts"]
        lines += format_table(
            ("name", "alive", "tunnel_ip", "lease_left", "endpoints", "blocks"),
            [
                (
                    h.name,
                    h.alive,
                    h.tunnel_ip,
                    None if h.lease_left is None else f"{h.lease_left}s",
                    h.endpoints,
                    h.blocks,
                )
                for h in hosts
            ],
        )
        lines += ["", "networks"]
        lines += format_table(
            (
                "name",
                "vni",
                "index",
                "cidr",
                "mtu",
                "gateway",
                "egress",
                "blocks",
                "addresses (used/in blocks)",
            ),
            [
                (
                    n.name,
                    n.vni,
                    n.index,
                    n.cidr,
                    n.mtu,
                    n.gateway,
                    n.egress,
                    n.blocks,
                    f"{n.addresses_used}/{n.block_addresses}",
                )
                for n in nets
            ],
        )
        lines += ["", f"networkpolicies {report.cluster.policies}"]
    return lines
