"""Flows, groups and actions as plain values.

The pipeline returns these with no switch attached, so "the desired flows" can
be diffed, printed and run through the simulator in tests.  Exactly one module
(the sender) turns them into OpenFlow messages on a datapath.

Field names are os-ken's OFPMatch / OFPActionSetField keyword names, so the
sender passes them through unchanged; ``tun_ipv4_src``/``tun_ipv4_dst`` are the
Nicira extension fields that OVS calls ``tun_src``/``tun_dst``, and ``reg0``..``reg15``,
``ct_state``, ``ct_zone``, ``ct_mark`` and ``conj_id`` are OVS's own (NXM_NX_*).

Actions beyond OpenFlow 1.3's own are the Nicira extensions OVS implements: a masked
register load, output to the port a register holds, resubmit, conntrack with NAT,
conjunction and learn; ``dec_ttl`` is OpenFlow's DEC_NW_TTL.
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
REGISTERS = tuple(f"reg{i}" for i in range(16))
L4_FIELDS = frozenset(
    {"tcp_src", "tcp_dst", "udp_src", "udp_dst", "sctp_src", "sctp_dst", "icmpv4_type"}
)
CT_FIELDS = frozenset({"ct_state", "ct_zone", "ct_mark"})
INT_FIELDS = (
    frozenset({"in_port", "eth_type", "arp_op", "tunnel_id", "metadata", "ip_proto", "conj_id"})
    | frozenset(REGISTERS)
    | L4_FIELDS
    | CT_FIELDS
)
ALL_FIELDS = MAC_FIELDS | IPV4_FIELDS | INT_FIELDS
LOADABLE = frozenset(REGISTERS) | {"ct_mark"}  # 32 bits each
# Bit widths of the fields a register load, a move or a bit range may name.
FIELD_BITS = {
    **{name: 48 for name in MAC_FIELDS},
    **{name: 32 for name in IPV4_FIELDS},
    **{name: 32 for name in REGISTERS},
    "ct_mark": 32,
    "ct_zone": 16,
    "metadata": 64,
    "tunnel_id": 64,
    # What a learn spec may read or write besides those; in_port as learn's NXM_OF_IN_PORT
    # (16 bits: OVS's own port numbers fit).
    "in_port": 16,
    "eth_type": 16,
    "ip_proto": 8,
    **{name: 16 for name in ("tcp_src", "tcp_dst", "udp_src", "udp_dst", "sctp_src", "sctp_dst")},
}

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
IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP = 1, 6, 17, 132

# ct_state bits (OVS's ovs-fields(7)): a packet that went through ct() is +trk and one of
# +new, +est (either direction; +rpl too for the reply direction) or +inv.
CT_NEW, CT_EST, CT_REL, CT_RPL, CT_INV, CT_TRK = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20

# A match on these needs ip_proto (OVS refuses the flow otherwise: OFPBMC_BAD_PREREQ).
_L4_PROTO = {
    "tcp_src": IPPROTO_TCP,
    "tcp_dst": IPPROTO_TCP,
    "udp_src": IPPROTO_UDP,
    "udp_dst": IPPROTO_UDP,
    "sctp_src": IPPROTO_SCTP,
    "sctp_dst": IPPROTO_SCTP,
    "icmpv4_type": IPPROTO_ICMP,
}


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
    for name in fields.keys() & L4_FIELDS:
        if fields.get("ip_proto") != _L4_PROTO[name]:
            raise ValueError(f"a match on {name} needs ip_proto={_L4_PROTO[name]}")
    if "ip_proto" in fields and fields.get("eth_type") != ETH_TYPE_IP:
        raise ValueError("a match on ip_proto needs eth_type=0x0800")
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


@dataclass(frozen=True, slots=True)
class Load:
    """Write ``value`` into the bits ``mask`` selects of ``name``, leaving the others
    (``set_field:value/mask->name``; Nicira's REG_LOAD2, since OpenFlow 1.3's set_field
    takes no mask).  How one stage writes its part of a register."""

    name: str
    value: int
    mask: int

    def __post_init__(self) -> None:
        if self.name not in LOADABLE:
            raise ValueError(f"load into {self.name!r}: only registers and ct_mark")
        if not 0 < self.mask < 1 << 32 or self.value & ~self.mask:
            raise ValueError(f"load {self.value:#x}/{self.mask:#x} does not fit {self.name}")


@dataclass(frozen=True, slots=True)
class Bits:
    """Bits ``start``..``end`` (inclusive) of a field, as OVS writes ``reg1[0..15]``."""

    name: str
    start: int = 0
    end: int = 31

    def __post_init__(self) -> None:
        if self.name not in FIELD_BITS or not 0 <= self.start <= self.end < FIELD_BITS[self.name]:
            raise ValueError(f"{self.name}[{self.start}..{self.end}] is not a field's bits")

    @property
    def ofs_nbits(self) -> int:
        """Nicira's encoding of a bit range: offset << 6 | (bits - 1)."""
        return self.start << 6 | (self.end - self.start)

    def read(self, value: int) -> int:
        return value >> self.start & ((1 << (self.end - self.start + 1)) - 1)


@dataclass(frozen=True, slots=True)
class OutputReg:
    """Output to the port number held in ``src`` (the output stage acting on the
    decision an earlier stage wrote)."""

    src: Bits


@dataclass(frozen=True, slots=True)
class Resubmit:
    """Run ``table`` on the packet now and come back for the rest of the actions."""

    table: Table


@dataclass(frozen=True, slots=True)
class DecTtl:
    """Decrement the IPv4 TTL; a packet whose TTL runs out is dropped (routing)."""


@dataclass(frozen=True, slots=True)
class Nat:
    """The NAT part of ct(): ``kind`` "src" or "dst" with an address range (and an
    optional port range) for a new connection; kind None is plain ``nat``, which applies
    a committed connection's translation (and undoes it on replies)."""

    kind: str | None = None
    ip_min: str | None = None
    ip_max: str | None = None
    port_min: int | None = None
    port_max: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in (None, "src", "dst"):
            raise ValueError(f"nat kind {self.kind!r}: src, dst or none")
        if (self.kind is None) != (self.ip_min is None):
            raise ValueError("nat(src|dst) takes an address range; plain nat takes none")
        if self.ip_max is not None and self.ip_min is None:
            raise ValueError("nat: an address range needs its first address")
        if (self.port_min is None) != (self.port_max is None) or (
            self.port_min is not None and self.ip_min is None
        ):
            raise ValueError("nat: a port range needs both ends and an address range")


@dataclass(frozen=True, slots=True)
class Ct:
    """Send the packet through conntrack in ``zone`` (a number, or the bits of a register
    that hold it).  ``commit`` records the connection (with ``exec``'s ct_mark writes);
    ``table`` resumes the pipeline there with ct_state set (the packet recirculates;
    without it the pipeline goes on with the packet untracked); ``nat`` translates."""

    zone: int | Bits
    commit: bool = False
    table: Table | None = None
    nat: Nat | None = None
    exec: tuple[SetField | Load, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.zone, int) and not 0 <= self.zone < 1 << 16:
            raise ValueError(f"ct zone {self.zone} does not fit 16 bits")
        if isinstance(self.zone, Bits) and self.zone.end - self.zone.start != 15:
            raise ValueError("a ct zone from a register takes 16 bits of it")
        for action in self.exec:
            if action.name != "ct_mark":
                raise ValueError(f"ct exec may only set ct_mark, not {action.name}")
        if self.exec and not self.commit:
            raise ValueError("ct exec(set ct_mark) needs commit")


@dataclass(frozen=True, slots=True)
class Conjunction:
    """This flow is clause ``clause`` (1-based, as ovs-ofctl writes it) of ``n_clauses``
    of the conjunctive match ``conj_id``; a flow matching ``conj_id`` acts for it."""

    conj_id: int
    clause: int
    n_clauses: int

    def __post_init__(self) -> None:
        if not 1 <= self.clause <= self.n_clauses <= 64 or self.n_clauses < 2:
            raise ValueError(f"conjunction {self.clause}/{self.n_clauses}: need 1 <= k <= n, 2..64")
        if not 0 <= self.conj_id < 1 << 32:
            raise ValueError(f"conjunction id {self.conj_id} does not fit 32 bits")


def _same_width(a: Bits, b: Bits) -> None:
    if a.end - a.start != b.end - b.start:
        raise ValueError(f"learn: {a.name}[{a.start}..{a.end}] and {b.name} differ in width")


@dataclass(frozen=True, slots=True)
class LearnMatchValue:
    """The learned flow matches ``dst`` equal to ``value`` (``eth_type=0x800``)."""

    dst: Bits
    value: int

    def __post_init__(self) -> None:
        if not 0 <= self.value < 1 << (self.dst.end - self.dst.start + 1):
            raise ValueError(f"learn: {self.value:#x} does not fit {self.dst.name}")


@dataclass(frozen=True, slots=True)
class LearnMatchField:
    """The learned flow matches ``dst`` equal to this packet's ``src``
    (``nw_dst=NXM_OF_IP_SRC[]``: the reply's destination is this packet's source)."""

    dst: Bits
    src: Bits

    def __post_init__(self) -> None:
        _same_width(self.dst, self.src)


@dataclass(frozen=True, slots=True)
class LearnLoadField:
    """The learned flow loads this packet's ``src`` into ``dst``."""

    dst: Bits
    src: Bits

    def __post_init__(self) -> None:
        _same_width(self.dst, self.src)


@dataclass(frozen=True, slots=True)
class LearnLoadValue:
    """The learned flow loads ``value`` into ``dst``."""

    dst: Bits
    value: int

    def __post_init__(self) -> None:
        if not 0 <= self.value < 1 << (self.dst.end - self.dst.start + 1):
            raise ValueError(f"learn: {self.value:#x} does not fit {self.dst.name}")


@dataclass(frozen=True, slots=True)
class LearnOutput:
    """The learned flow outputs to the port this packet's ``src`` holds
    (``output:NXM_OF_IN_PORT[]``: back where this packet came from)."""

    src: Bits


LearnSpec = LearnMatchValue | LearnMatchField | LearnLoadField | LearnLoadValue | LearnOutput
_L4_BY_PROTO = {
    IPPROTO_TCP: frozenset({"tcp_src", "tcp_dst"}),
    IPPROTO_UDP: frozenset({"udp_src", "udp_dst"}),
}


@dataclass(frozen=True, slots=True)
class Learn:
    """OVS's ``learn``: add (or refresh) a flow in ``table`` built from this packet's
    fields by ``specs``: matches first, then loads and outputs, in order.  The learned
    flow's prerequisites are checked here, as OVS checks them when it adds the flow
    (an L4 port match needs ``ip_proto``, which needs ``eth_type``)."""

    table: Table
    priority: int
    cookie: int
    specs: tuple[LearnSpec, ...]
    idle_timeout: int = 0
    hard_timeout: int = 0
    fin_idle_timeout: int = 0
    fin_hard_timeout: int = 0

    def __post_init__(self) -> None:
        for name in ("idle_timeout", "hard_timeout", "fin_idle_timeout", "fin_hard_timeout"):
            if not 0 <= getattr(self, name) < 1 << 16:
                raise ValueError(f"learn {name} {getattr(self, name)} does not fit 16 bits")
        if not 0 <= self.priority < 1 << 16:
            raise ValueError(f"learn priority {self.priority} does not fit 16 bits")
        matches = [s for s in self.specs if isinstance(s, LearnMatchValue | LearnMatchField)]
        if not matches or self.specs[: len(matches)] != tuple(matches):
            raise ValueError("learn: one match spec at least, and every match before the actions")
        if not any(isinstance(s, LearnOutput) for s in self.specs):
            raise ValueError("learn: the learned flow needs an output (it ends the pipeline)")
        fixed = {s.dst.name: s.value for s in matches if isinstance(s, LearnMatchValue)}
        names = {s.dst.name for s in matches}
        for field_name in names - {"eth_type"}:
            if field_name in ("ip_proto", "ipv4_src", "ipv4_dst") and (
                fixed.get("eth_type") != ETH_TYPE_IP
            ):
                raise ValueError(f"learn: a match on {field_name} needs eth_type=0x0800 first")
            if field_name in L4_FIELDS and field_name not in _L4_BY_PROTO.get(
                fixed.get("ip_proto"), ()
            ):
                raise ValueError(f"learn: a match on {field_name} needs its ip_proto first")
        for spec in matches:
            if spec.dst.name not in self.table.matches:
                raise ValueError(f"learn: table {self.table.name} does not match {spec.dst.name}")


Action = (
    Output
    | SetField
    | Move
    | GroupAction
    | Load
    | OutputReg
    | Resubmit
    | DecTtl
    | Ct
    | Conjunction
    | Learn
)


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
        kinds = {type(a) is Conjunction for a in self.actions}
        if len(kinds) > 1 or (True in kinds and self.goto is not None):
            raise ValueError("a conjunction flow has conjunction actions only (OVS's rule)")
        if any(isinstance(a, Ct) for a in self.actions) and not any(
            f.name == "eth_type" and f.value == ETH_TYPE_IP for f in self.match
        ):
            # OVS refuses any ct() in a flow not matching IP: OFPBAC_MATCH_INCONSISTENT
            # (ofp-actions.c, check_CT; the policy_commit flow met it on a real switch)
            raise ValueError("a flow with ct() must match eth_type=0x0800")

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
