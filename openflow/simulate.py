"""A small OpenFlow table simulator: what would br-int do with this packet?

Tests assert behaviour with it ("a packet from p1 to p2's MAC leaves on the
tunnel with VNI 5001 to 198.18.0.2") rather than comparing flow fields, so a
test fails when forwarding breaks, not when a flow is merely written
differently.  It implements the OpenFlow semantics the pipeline uses: highest
priority wins (an ambiguous tie is an error), apply-actions in order,
write-metadata with mask, goto, ALL groups, and no output back to the in_port
except through IN_PORT; and OVS's extensions: registers (zero when a packet
enters), masked loads, output to a register's port, resubmit (the target's
flow runs, then the rest of the actions), dec_ttl (an expired packet is dropped),
conjunctive matches, conntrack (``Conntrack``), and learn (the learned flow is added to
its table, replacing one with the same table, priority and match; no timeouts).
Integration tests check it against ofproto/trace.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from openflow.model import (
    CT_EST,
    CT_INV,
    CT_NEW,
    CT_RPL,
    CT_TRK,
    ETH_TYPE_IP,
    FIELD_BITS,
    IPPROTO_TCP,
    IPPROTO_UDP,
    IPV4_FIELDS,
    MAC_FIELDS,
    OFPP_IN_PORT,
    REGISTERS,
    Bits,
    Conjunction,
    Ct,
    DecTtl,
    Flow,
    Group,
    GroupAction,
    Learn,
    LearnLoadField,
    LearnLoadValue,
    LearnMatchField,
    LearnMatchValue,
    LearnOutput,
    Load,
    MatchField,
    Move,
    Nat,
    Output,
    OutputReg,
    Resubmit,
    SetField,
    match,
)
from openflow.tables import PIPELINE

MAX_TABLE_HOPS = 64
MAX_RECIRCULATIONS = 8
DEFAULT_TTL = 64

# Pipeline state that is not packet header: zero when a packet enters, never emitted.
_PIPELINE_STATE = {"metadata": 0, "ct_state": 0, "ct_zone": 0, "ct_mark": 0}
_PIPELINE_STATE.update({reg: 0 for reg in REGISTERS})
_NOT_EMITTED = frozenset(_PIPELINE_STATE) | {"in_port", "conj_id"}

_CT_FLAGS = ((CT_TRK, "trk"), (CT_NEW, "new"), (CT_EST, "est"), (CT_RPL, "rpl"), (CT_INV, "inv"))


def ct_state_text(state: int) -> str:
    """ct_state as ovs-appctl ofproto/trace --ct-next takes it: ``trk,new``."""
    return ",".join(name for bit, name in _CT_FLAGS if state & bit)


@dataclass(frozen=True)
class Emitted:
    """A packet leaving the switch on ``port`` with these header fields."""

    port: int
    fields: tuple[tuple[str, int | str], ...]

    def get(self, name: str):
        return dict(self.fields).get(name)


@dataclass(frozen=True)
class Trace:
    path: tuple[str, ...]  # "table:priority" of each flow hit, for failure messages
    emitted: tuple[Emitted, ...]
    ct_states: tuple[int, ...] = ()  # ct_state after each ct(table=) recirculation, in order

    @property
    def ports(self) -> set[int]:
        return {e.port for e in self.emitted}


# -- conntrack --------------------------------------------------------------------------

Tuple5 = tuple[str, str, int, int | None, int | None]  # src, dst, proto, sport, dport


@dataclass
class Connection:
    """One committed connection: its original-direction tuple, the tuple its replies
    carry (the reverse of the original after NAT), and its ct_mark."""

    orig: Tuple5
    reply: Tuple5
    mark: int = 0


def _reverse(t: Tuple5) -> Tuple5:
    return (t[1], t[0], t[2], t[4], t[3])


_PORTS = {IPPROTO_TCP: ("tcp_src", "tcp_dst"), IPPROTO_UDP: ("udp_src", "udp_dst")}


def _tuple_of(pkt: dict) -> Tuple5 | None:
    if int(pkt.get("eth_type", 0)) != ETH_TYPE_IP:
        return None
    # A field the packet does not set is 0, as in OVS's flow key (and tracked as such).
    src, dst = pkt.get("ipv4_src", "0.0.0.0"), pkt.get("ipv4_dst", "0.0.0.0")
    proto = int(pkt.get("ip_proto", 0))
    names = _PORTS.get(proto)
    if names is None:  # ICMP and others: by addresses (no echo id in the model)
        return (str(src), str(dst), proto, None, None)
    if names[0] not in pkt or names[1] not in pkt:
        return None
    return (str(src), str(dst), proto, pkt[names[0]], pkt[names[1]])


def _set_tuple(pkt: dict, t: Tuple5) -> None:
    pkt["ipv4_src"], pkt["ipv4_dst"] = t[0], t[1]
    names = _PORTS.get(t[2])
    if names is not None:
        pkt[names[0]], pkt[names[1]] = t[3], t[4]


class Conntrack:
    """Connections per zone, as OVS's connection tracker keeps them, reduced to what the
    pipeline needs: a packet is new (no committed connection), established (it matches
    a connection's original direction) or established reply (its reply direction), or
    invalid when the model cannot tell (not IPv4, no ports for TCP/UDP; a TCP packet
    that says it is not a SYN but has no connection).  No related, no timeouts, no TCP
    window tracking.  Commit records a connection and its ct_mark; NAT translates a new
    connection (src or dst, the range's first address and port) and, on its later
    packets, applies the translation or undoes it on replies."""

    def __init__(self) -> None:
        self.zones: dict[int, dict[Tuple5, tuple[Connection, bool]]] = {}

    def connections(self, zone: int) -> list[Connection]:
        seen = {id(c): c for c, _ in self.zones.get(zone, {}).values()}
        return list(seen.values())

    def execute(self, ct: Ct, zone: int, pkt: dict) -> int:
        """Run ``pkt`` (changed in place by NAT) through ``ct``; returns its ct_state."""
        t = _tuple_of(pkt)
        if t is None:
            return CT_TRK | CT_INV
        table = self.zones.setdefault(zone, {})
        conn, is_reply = table.get(t, (None, False))
        if conn is None and _not_syn(pkt):
            return CT_TRK | CT_INV
        state = CT_TRK | (CT_NEW if conn is None else CT_EST) | (CT_RPL if is_reply else 0)
        if conn is not None and ct.nat is not None:
            _set_tuple(pkt, _reverse(conn.orig if is_reply else conn.reply))
        elif conn is None:
            translated = _translate(t, ct.nat) if ct.nat is not None else t
            _set_tuple(pkt, translated)
            if ct.commit:
                conn = Connection(t, _reverse(translated))
                table[conn.orig] = (conn, False)
                table[conn.reply] = (conn, True)
        if ct.commit and conn is not None:
            for action in ct.exec:
                if isinstance(action, Load):
                    conn.mark = (conn.mark & ~action.mask) | action.value
                else:
                    conn.mark = int(action.value)
        pkt["ct_mark"] = conn.mark if conn is not None else 0
        pkt["ct_zone"] = zone
        return state


def _not_syn(pkt: dict) -> bool:
    return int(pkt.get("ip_proto", 0)) == IPPROTO_TCP and not int(pkt.get("tcp_flags", 2)) & 2


def _translate(t: Tuple5, nat: Nat) -> Tuple5:
    if nat.kind is None:
        return t
    src, dst, proto, sport, dport = t
    if nat.kind == "src":
        return (nat.ip_min, dst, proto, nat.port_min if nat.port_min else sport, dport)
    return (src, nat.ip_min, proto, sport, nat.port_min if nat.port_min else dport)


# -- the switch -------------------------------------------------------------------------


def _as_int(name: str, value: int | str) -> int:
    if name in MAC_FIELDS:
        return int(str(value).replace(":", ""), 16)
    if name in IPV4_FIELDS:
        return int(ipaddress.IPv4Address(value))
    return int(value)


def _matches(field: MatchField, packet: dict) -> bool:
    if field.name not in packet:
        return False
    have = _as_int(field.name, packet[field.name])
    want = _as_int(field.name, field.value)
    if field.mask is None:
        return have == want
    mask = _as_int(field.name, field.mask)
    return have & mask == want & mask


def _is_conjunctive(flow: Flow) -> bool:
    return bool(flow.actions) and isinstance(flow.actions[0], Conjunction)


class _Dropped(Exception):
    """The packet is gone (dec_ttl ran out): this pass of the pipeline ends."""


@dataclass
class _Pass:
    path: list[str]
    emitted: list[Emitted]
    recirculate: list[tuple[int, dict]] = field(default_factory=list)
    hops: int = 0


class Switch:
    """Flows and groups as installed, ready to process packets.  Its conntrack keeps
    connections between ``process`` calls, as a switch does."""

    def __init__(self, flows: Iterable[Flow], groups: Iterable[Group]):
        self.tables: dict[int, list[Flow]] = {}
        for flow in flows:
            self.tables.setdefault(flow.table.table_id, []).append(flow)
        self.groups = {g.group_id: g for g in groups}
        self.conntrack = Conntrack()

    def _lookup(self, table_id: int, packet: dict) -> Flow | None:
        """The flow a packet hits, conjunctive matches included: at the highest priority
        with hits, an ordinary flow wins; conjunction flows there that complete every
        clause of an id make the packet look the table up again with conj_id set (the
        flow matching it acts); an incomplete conjunction falls to lower priorities."""
        hits = [
            f for f in self.tables.get(table_id, []) if all(_matches(m, packet) for m in f.match)
        ]
        for priority in sorted({f.priority for f in hits}, reverse=True):
            top = [f for f in hits if f.priority == priority]
            ordinary = [f for f in top if not _is_conjunctive(f)]
            if ordinary:
                if len(top) > 1:
                    raise AssertionError(
                        f"ambiguous flows in table {table_id} at priority {priority}: {top}"
                    )
                return ordinary[0]
            complete = _complete_conjunctions(top)
            if complete:
                # Several complete: OVS takes the first to complete as it walks the
                # matching flows (lib/classifier.c, find_conjunctive_match), an order of
                # its own; here the lowest id, so a run is repeatable.  Flows must not
                # depend on which (policy's all allow alike; only the rule id they record differs).
                return self._lookup_conjunction(table_id, packet, min(complete))
        return None

    def _lookup_conjunction(self, table_id: int, packet: dict, conj_id: int) -> Flow | None:
        pkt = {**packet, "conj_id": conj_id}
        hits = [
            f
            for f in self.tables.get(table_id, [])
            if not _is_conjunctive(f) and all(_matches(m, pkt) for m in f.match)
        ]
        if not hits:
            return None
        best = max(f.priority for f in hits)
        top = [f for f in hits if f.priority == best]
        if len(top) > 1:
            raise AssertionError(f"ambiguous flows for conj_id={conj_id} in table {table_id}")
        return top[0]

    def process(self, packet: dict, table_id: int | None = None) -> Trace:
        """Run ``packet`` (header fields, including in_port) through the pipeline from
        ``table_id`` (the first table by default), then each ct(table=) recirculation."""
        run = _Pass([], [])
        ct_states: list[int] = []
        pending = [(PIPELINE[0].table_id if table_id is None else table_id, packet)]
        passes = 0
        while pending:
            passes += 1
            if passes > MAX_RECIRCULATIONS:
                raise AssertionError(f"recirculation loop: {run.path}")
            start, pkt = pending.pop(0)
            with contextlib.suppress(_Dropped):
                self._run(start, {**_PIPELINE_STATE, **pkt}, run)
            ct_states += [fork["ct_state"] for _, fork in run.recirculate]
            pending += run.recirculate
            run.recirculate = []
        return Trace(tuple(run.path), tuple(run.emitted), tuple(ct_states))

    def _run(self, table_id: int, pkt: dict, run: _Pass) -> None:
        """From ``table_id`` through its gotos (a resubmit runs this for its target)."""
        next_table: int | None = table_id
        while next_table is not None:
            run.hops += 1
            if run.hops > MAX_TABLE_HOPS:
                raise AssertionError(f"pipeline loop: {run.path}")
            flow = self._lookup(next_table, pkt)
            if flow is None:  # table miss: OpenFlow 1.3 drops
                run.path.append(f"{next_table}:miss")
                return
            run.path.append(f"{flow.table.name}:{flow.priority}")
            self._apply(flow.actions, pkt, run)
            if flow.write_metadata is not None:
                value, mask = flow.write_metadata
                pkt["metadata"] = (pkt["metadata"] & ~mask) | (value & mask)
            next_table = flow.goto.table_id if flow.goto is not None else None

    def _apply(self, actions, pkt: dict, run: _Pass) -> None:
        for action in actions:
            if isinstance(action, SetField):
                pkt[action.name] = action.value
            elif isinstance(action, Load):
                pkt[action.name] = (int(pkt.get(action.name, 0)) & ~action.mask) | action.value
            elif isinstance(action, Move):
                pkt[action.dst] = pkt[action.src]
            elif isinstance(action, Output):
                self._output(action.port, pkt, run.emitted)
            elif isinstance(action, OutputReg):
                self._output(action.src.read(int(pkt[action.src.name])), pkt, run.emitted)
            elif isinstance(action, GroupAction):
                for bucket in self.groups[action.group_id].buckets:
                    self._apply(bucket.actions, dict(pkt), run)
            elif isinstance(action, Resubmit):
                self._run(action.table.table_id, pkt, run)
            elif isinstance(action, DecTtl):
                ttl = int(pkt.get("nw_ttl", DEFAULT_TTL))
                if ttl <= 1:
                    run.path.append("dec_ttl:expired")
                    raise _Dropped
                pkt["nw_ttl"] = ttl - 1
            elif isinstance(action, Ct):
                self._ct(action, pkt, run)
            elif isinstance(action, Learn):
                self._learn(action, pkt)
            elif isinstance(action, Conjunction):
                raise AssertionError("a conjunction flow was applied as an ordinary flow")
            else:
                raise TypeError(f"unknown action {action!r}")

    def _ct(self, ct: Ct, pkt: dict, run: _Pass) -> None:
        """With a table, a copy of the packet goes through conntrack and resumes there
        after this pass (OVS recirculates).  Without one, the packet goes through
        conntrack in place (NAT applies to what is output next).  Either way the packet
        that goes on is untracked, its conntrack fields cleared (ofproto/trace says so)."""
        zone = ct.zone if isinstance(ct.zone, int) else ct.zone.read(int(pkt[ct.zone.name]))
        if ct.table is None:
            self.conntrack.execute(ct, zone, pkt)
        else:
            fork = dict(pkt)
            fork["ct_state"] = self.conntrack.execute(ct, zone, fork)
            run.recirculate.append((ct.table.table_id, fork))
        pkt.update(ct_state=0, ct_zone=0, ct_mark=0)

    def _learn(self, learn: Learn, pkt: dict) -> None:
        """Build the learned flow from ``pkt``'s fields and install it (OVS refreshes a
        flow already there with the same table, priority and match)."""
        fields: dict[str, int | str | tuple[int, int]] = {}
        actions = []
        for spec in learn.specs:
            if isinstance(spec, LearnMatchValue | LearnMatchField):
                value = spec.value if isinstance(spec, LearnMatchValue) else _read(spec.src, pkt)
                fields[spec.dst.name] = _match_value(spec.dst, value)
            elif isinstance(spec, LearnLoadValue | LearnLoadField):
                value = spec.value if isinstance(spec, LearnLoadValue) else _read(spec.src, pkt)
                actions.append(_load_action(spec.dst, value))
            elif isinstance(spec, LearnOutput):
                actions.append(Output(_read(spec.src, pkt)))
        flow = Flow(learn.table, learn.priority, match(**fields), learn.cookie, tuple(actions))
        table = self.tables.setdefault(flow.table.table_id, [])
        table[:] = [f for f in table if f.key != flow.key] + [flow]

    @staticmethod
    def _output(port: int, pkt: dict, emitted: list[Emitted]) -> None:
        if port == OFPP_IN_PORT:
            port = pkt["in_port"]
        elif port == pkt["in_port"]:
            return  # OpenFlow never sends a packet back where it came from implicitly
        fields = tuple(sorted((k, v) for k, v in pkt.items() if k not in _NOT_EMITTED))
        emitted.append(Emitted(port, fields))


def _read(bits: Bits, pkt: dict) -> int:
    return bits.read(_as_int(bits.name, pkt[bits.name]))


def _width(bits: Bits) -> int:
    return FIELD_BITS[bits.name]


def _render(name: str, value: int) -> int | str:
    """A whole field's value as the model writes it (a MAC or an address as text)."""
    if name in MAC_FIELDS:
        return ":".join(f"{b:02x}" for b in value.to_bytes(6, "big"))
    if name in IPV4_FIELDS:
        return str(ipaddress.IPv4Address(value))
    return value


def _match_value(bits: Bits, value: int) -> int | str | tuple[int, int]:
    n = bits.end - bits.start + 1
    if n == _width(bits):
        return _render(bits.name, value)
    return (value << bits.start, ((1 << n) - 1) << bits.start)


def _load_action(bits: Bits, value: int) -> SetField | Load:
    n = bits.end - bits.start + 1
    if n == _width(bits):
        return SetField(bits.name, _render(bits.name, value))
    return Load(bits.name, value << bits.start, ((1 << n) - 1) << bits.start)


def _complete_conjunctions(flows: list[Flow]) -> set[int]:
    """The conjunction ids whose every clause has a matching flow among ``flows``."""
    clauses: dict[int, set[int]] = {}
    needed: dict[int, int] = {}
    for flow in flows:
        for conj in flow.actions:
            clauses.setdefault(conj.conj_id, set()).add(conj.clause)
            needed[conj.conj_id] = conj.n_clauses
    return {cid for cid, got in clauses.items() if len(got) == needed[cid]}
