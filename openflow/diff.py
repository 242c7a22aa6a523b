"""From (installed, desired) to the ordered messages that get the switch there.

Order matters so that traffic never meets a hole: groups first (a flow may
point at them), then flow adds (an add over an existing match replaces it in
place, atomically), then deletes of what is no longer wanted, then the groups
nobody points at any more.  Barriers separate the phases because a switch may
reorder messages between barriers.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from openflow.model import Flow, Group


@dataclass(frozen=True)
class FlowAdd:
    """Add ``flow``; ``replaces``: a flow with its table, priority and match is there
    already and this one takes its place (so the table's flow count stays)."""

    flow: Flow
    replaces: bool = False


@dataclass(frozen=True)
class FlowDelete:
    """Delete exactly this flow (table, priority, match)."""

    flow: Flow


@dataclass(frozen=True)
class GenerationDelete:
    """Delete every flow whose cookie carries ``generation``."""

    generation: int


@dataclass(frozen=True)
class GroupAdd:
    group: Group


@dataclass(frozen=True)
class GroupModify:
    group: Group


@dataclass(frozen=True)
class GroupDelete:
    group_id: int


@dataclass(frozen=True)
class Barrier:
    pass


Message = FlowAdd | FlowDelete | GenerationDelete | GroupAdd | GroupModify | GroupDelete | Barrier


def diff(
    installed_flows: Iterable[Flow],
    installed_groups: Iterable[Group],
    desired_flows: Iterable[Flow],
    desired_groups: Iterable[Group],
) -> list[Message]:
    """The minimal ordered messages from what is installed to what is desired."""
    have = {f.key: f for f in installed_flows}
    want = index_flows(desired_flows)
    have_groups = {g.group_id: g for g in installed_groups}
    want_groups = {g.group_id: g for g in desired_groups}

    group_msgs: list[Message] = []
    for gid, group in sorted(want_groups.items()):
        if gid not in have_groups:
            group_msgs.append(GroupAdd(group))
        elif have_groups[gid] != group:
            group_msgs.append(GroupModify(group))
    adds = [
        FlowAdd(f, replaces=k in have)
        for k, f in sorted(want.items(), key=_order)
        if have.get(k) != f
    ]
    deletes = [FlowDelete(f) for k, f in sorted(have.items(), key=_order) if k not in want]
    group_deletes = [GroupDelete(gid) for gid in sorted(have_groups) if gid not in want_groups]
    return _phased(group_msgs, adds + deletes, group_deletes)


def replace_generation(
    existing_group_ids: Iterable[int],
    desired_flows: Iterable[Flow],
    desired_groups: Iterable[Group],
    old_generation: int | None,
) -> Iterator[Message]:
    """Install everything anew over whatever the switch has, then drop the old generation.

    Used when the agent does not know what is installed (its own restart, a
    switch reconnect, a lost canary).  Every desired flow is added with the new
    generation's cookie, replacing a same-match flow in place; only then are the
    old generation's leftovers deleted by cookie, so no packet meets an empty table.

    The messages come one at a time, the flow adds in ``desired_flows``' order as it
    yields them: a full sync of 20,000 flows then never holds them all (their peak
    stayed in the agent's heap, ~10 MB).  Their order does not matter: until the
    barrier after them, each match has its old flow or its new one, both right, and the
    switch may reorder messages between barriers anyway.
    """
    existing = set(existing_group_ids)
    desired_groups = sorted(desired_groups, key=lambda g: g.group_id)
    groups: list[Message] = [
        GroupModify(g) if g.group_id in existing else GroupAdd(g) for g in desired_groups
    ]
    yield from _phased(groups)
    added = False
    for flow in desired_flows:
        added = True
        yield FlowAdd(flow)
    if old_generation is not None:
        added = True
        yield GenerationDelete(old_generation)
    if added:
        yield Barrier()
    wanted = {g.group_id for g in desired_groups}
    yield from _phased([GroupDelete(gid) for gid in sorted(existing - wanted)])


def index_flows(flows: Iterable[Flow]) -> dict[tuple, Flow]:
    """Flows by their identity on the switch; two flows with one identity are a pipeline bug
    (the second would silently replace the first)."""
    out: dict[tuple, Flow] = {}
    for flow in flows:
        if flow.key in out:
            raise ValueError(f"two flows share table, priority and match: {flow.key}")
        out[flow.key] = flow
    return out


def _phased(*phases: list[Message]) -> list[Message]:
    out: list[Message] = []
    for phase in phases:
        if phase:
            out.extend(phase)
            out.append(Barrier())
    return out


def _order(item: tuple) -> tuple:
    key, _flow = item
    table_id, priority, match = key
    return (table_id, -priority, repr(match))
