"""Flows, groups and actions as plain values.

The pipeline returns these with no switch attached, so "the desired flows" can
be diffed, printed and run through the simulator in tests.  Exactly one module
(the sender) turns them into OpenFlow messages on a datapath.

Field names are os-ken's OFPMatch / OFPActionSetField keyword names, so the
sender passes them through unchanged; ``tun_ipv4_src``/``tun_ipv4_dst`` are the
Nicira extension fields that OVS calls ``tun_src``/``tun_dst``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from openflow.tables import Table

OFPP_IN_PORT = 0xFFFFFFF8
METADATA_MASK = 0xFFFFFFFFFFFFFFFF

# Match fields each value kind takes; masks are allowed on these.
MAC_FIELDS = frozenset({"eth_src", "eth_dst", "arp_sha", "arp_tha"})
IPV4_FIELDS = frozenset(
    {"ipv4_src", "ipv4_dst", "arp_spa", "arp_tpa", "tun_ipv4_src", "tun_ipv4_dst"}
)
INT_FIELDS = frozenset({"in_port", "eth_type", "arp_op", "tunnel_id", "metadata", "ip_proto"})
ALL_FIELDS = MAC_FIELDS | IPV4_FIELDS | INT_FIELDS

# Match fields many flows share (a network's metadata, eth_type=arp) are interned: when
# the engine held every flow, 123,000 match fields at 10,000 remote endpoints, most of
# them equal.  It now holds only networks' and tunnels' flows and builds an endpoint's
# when needed, so the LRU is small: the values every flow uses stay at its front, and
# one endpoint's values (its MAC, its IP) are not kept for flows long gone (4,096 entries
# held ~0.3 MB of them after a full sync).  pipeline.py interns shared actions the same way.
INTERN_SIZE = 256

ETH_TYPE_IP = 0x0800
ETH_TYPE_ARP = 0x0806
ARP_REQUEST = 1
ARP_REPLY = 2


@dataclass(frozen=True, order=True, slots=True)
class MatchField:
    """One match field: ``name=value`` or ``name=value/mask``."""

    name: str
    value: int | str
    mask: int | str | None = None

    def __post_init__(self) -> None:
        if self.name not in ALL_FIELDS:
            raise ValueError(f"match field {self.name!r} is not one the pipeline knows")


def _by_name(field: MatchField) -> str:
    return field.name


_field = functools.lru_cache(maxsize=INTERN_SIZE)(MatchField)


def match(**fields: int | str | tuple) -> tuple[MatchField, ...]:
    """A match from keywords; a ``(value, mask)`` tuple gives a masked field.  Equal
    fields are one object (interned, bounded: INTERN_SIZE)."""
    out = []
    for name, value in fields.items():
        if isinstance(value, tuple):
            out.append(_field(name, value[0], value[1]))
        else:
            out.append(_field(name, value))
    return tuple(sorted(out, key=_by_name))  # names are unique in a match


# -- actions -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Output:
    port: int


@dataclass(frozen=True, slots=True)
class SetField:
    name: str
    value: int | str

    def __post_init__(self) -> None:
        if self.name not in ALL_FIELDS:
            raise ValueError(f"set_field {self.name!r} is not a field the pipeline knows")


@dataclass(frozen=True, slots=True)
class Move:
    """Copy ``src`` to ``dst`` (OVS's ``move``, the Nicira reg_move action)."""

    src: str
    dst: str


@dataclass(frozen=True, slots=True)
class GroupAction:
    group_id: int


Action = Output | SetField | Move | GroupAction


# -- flows and groups ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Flow:
    """One flow entry.  Its identity on the switch is (table, priority, match)."""

    table: Table
    priority: int
    match: tuple[MatchField, ...]
    cookie: int
    actions: tuple[Action, ...] = ()
    write_metadata: tuple[int, int] | None = None  # (value, mask)
    goto: Table | None = None

    def __post_init__(self) -> None:
        self.table.check(self)

    @property
    def key(self) -> tuple:
        return (self.table.table_id, self.priority, self.match)


@dataclass(frozen=True, slots=True)
class Bucket:
    actions: tuple[Action, ...]


@dataclass(frozen=True, slots=True)
class Group:
    """An ALL group: every bucket gets a copy of the packet (flooding)."""

    group_id: int
    buckets: tuple[Bucket, ...] = field(default_factory=tuple)
