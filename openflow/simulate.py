"""A small OpenFlow table simulator: what would br-int do with this packet?

Tests assert behaviour with it ("a packet from p1 to p2's MAC leaves on the
tunnel with VNI 5001 to 198.18.0.2") rather than comparing flow fields, so a
test fails when forwarding breaks, not when a flow is merely written
differently.  It implements the OpenFlow semantics the pipeline uses: highest
priority wins (an ambiguous tie is an error), apply-actions in order,
write-metadata with mask, goto, ALL groups, and no output back to the in_port
except through IN_PORT.  Integration tests check it against ofproto/trace.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from openflow.model import (
    IPV4_FIELDS,
    MAC_FIELDS,
    OFPP_IN_PORT,
    Flow,
    Group,
    GroupAction,
    MatchField,
    Move,
    Output,
    SetField,
)
from openflow.tables import PIPELINE

MAX_TABLE_HOPS = 32


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

    @property
    def ports(self) -> set[int]:
        return {e.port for e in self.emitted}


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


class Switch:
    """Flows and groups as installed, ready to process packets."""

    def __init__(self, flows: Iterable[Flow], groups: Iterable[Group]):
        self.tables: dict[int, list[Flow]] = {}
        for flow in flows:
            self.tables.setdefault(flow.table.table_id, []).append(flow)
        self.groups = {g.group_id: g for g in groups}

    def _lookup(self, table_id: int, packet: dict) -> Flow | None:
        hits = [
            f for f in self.tables.get(table_id, []) if all(_matches(m, packet) for m in f.match)
        ]
        if not hits:
            return None
        best = max(f.priority for f in hits)
        top = [f for f in hits if f.priority == best]
        if len(top) > 1:
            raise AssertionError(f"ambiguous flows in table {table_id} at priority {best}: {top}")
        return top[0]

    def process(self, packet: dict) -> Trace:
        """Run ``packet`` (header fields, including in_port) through the pipeline."""
        pkt = {"metadata": 0, **packet}
        path: list[str] = []
        emitted: list[Emitted] = []
        table_id: int | None = PIPELINE[0].table_id
        for _ in range(MAX_TABLE_HOPS):
            if table_id is None:
                break
            flow = self._lookup(table_id, pkt)
            if flow is None:  # table miss: OpenFlow 1.3 drops
                path.append(f"{table_id}:miss")
                break
            path.append(f"{flow.table.name}:{flow.priority}")
            self._apply(flow.actions, pkt, emitted)
            if flow.write_metadata is not None:
                value, mask = flow.write_metadata
                pkt["metadata"] = (pkt["metadata"] & ~mask) | (value & mask)
            table_id = flow.goto.table_id if flow.goto is not None else None
        else:
            raise AssertionError(f"pipeline loop: {path}")
        return Trace(tuple(path), tuple(emitted))

    def _apply(self, actions, pkt: dict, emitted: list[Emitted]) -> None:
        for action in actions:
            if isinstance(action, SetField):
                pkt[action.name] = action.value
            elif isinstance(action, Move):
                pkt[action.dst] = pkt[action.src]
            elif isinstance(action, Output):
                self._output(action.port, pkt, emitted)
            elif isinstance(action, GroupAction):
                for bucket in self.groups[action.group_id].buckets:
                    self._apply(bucket.actions, dict(pkt), emitted)
            else:
                raise TypeError(f"unknown action {action!r}")

    @staticmethod
    def _output(port: int, pkt: dict, emitted: list[Emitted]) -> None:
        if port == OFPP_IN_PORT:
            port = pkt["in_port"]
        elif port == pkt["in_port"]:
            return  # OpenFlow never sends a packet back where it came from implicitly
        fields = tuple(sorted((k, v) for k, v in pkt.items() if k not in ("in_port", "metadata")))
        emitted.append(Emitted(port, fields))
