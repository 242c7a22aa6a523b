"""The messages that move a switch from installed to desired, checked by replaying them."""

from __future__ import annotations

import pytest

from openflow import pipeline
from openflow.diff import (
    Barrier,
    FlowAdd,
    FlowDelete,
    GenerationDelete,
    GroupAdd,
    GroupDelete,
    GroupModify,
    diff,
    index_flows,
    replace_generation,
)
from openflow.state import HostState, LocalPort, NetworkSpec, RemoteEndpoint

NET = NetworkSpec("default", 5001, 1)
P1 = LocalPort("default", 2, "0a:58:64:40:00:02", "100.64.0.2")
P2 = LocalPort("default", 3, "0a:58:64:40:00:03", "100.64.0.3")
R1 = RemoteEndpoint("default", "198.18.0.2", "0a:58:64:40:00:42", "100.64.0.66")


def state(*local, remote=()):
    return HostState(
        tunnel_ofport=1, networks=(NET,), peers=("198.18.0.2",), local=local, remote=remote
    )


def replay(flows, groups, messages):
    """Apply messages to a model of the switch's tables (what OVS does with them)."""
    table = {f.key: f for f in flows}
    grp = {g.group_id: g for g in groups}
    for m in messages:
        if isinstance(m, FlowAdd):
            table[m.flow.key] = m.flow
        elif isinstance(m, FlowDelete):
            table.pop(m.flow.key, None)
        elif isinstance(m, GenerationDelete):
            table = {k: f for k, f in table.items() if f.cookie & 0xFFFFFFFF != m.generation}
        elif isinstance(m, GroupAdd):
            assert m.group.group_id not in grp, "OFPGC_ADD of an existing group fails"
            grp[m.group.group_id] = m.group
        elif isinstance(m, GroupModify):
            assert m.group.group_id in grp, "OFPGC_MODIFY of a missing group fails"
            grp[m.group.group_id] = m.group
        elif isinstance(m, GroupDelete):
            grp.pop(m.group_id)
    return set(table.values()), set(grp.values())


def test_adding_a_pod_sends_only_its_flows_and_the_changed_group():
    before = pipeline.build(state(P1), 1)
    after = pipeline.build(state(P1, P2), 1)
    msgs = diff(*before, *after)
    adds = [m for m in msgs if isinstance(m, FlowAdd)]
    assert {m.flow.key for m in adds} == {f.key for f in after[0]} - {f.key for f in before[0]}
    assert [type(m) for m in msgs if not isinstance(m, FlowAdd)] == [GroupModify, Barrier, Barrier]
    assert replay(*before, msgs) == (set(after[0]), set(after[1]))


def test_groups_change_before_flows_and_deletes_come_after_adds():
    before = pipeline.build(state(P1, P2), 1)
    after = pipeline.build(state(P1, remote=(R1,)), 1)
    msgs = diff(*before, *after)
    kinds = [type(m).__name__ for m in msgs]
    assert kinds.index("GroupModify") < kinds.index("FlowAdd") < kinds.index("FlowDelete")
    assert replay(*before, msgs) == (set(after[0]), set(after[1]))


def test_no_change_no_messages():
    flows, groups = pipeline.build(state(P1, P2), 3)
    assert diff(flows, groups, flows, groups) == []


def test_replacing_a_generation_never_removes_a_flow_that_stays():
    old = pipeline.build(state(P1, P2), 1)
    new = pipeline.build(state(P1), 2)
    msgs = list(replace_generation([g.group_id for g in old[1]], *new, old_generation=1))
    # Every desired flow is added before the old generation is deleted ...
    first_delete = next(i for i, m in enumerate(msgs) if isinstance(m, GenerationDelete))
    assert all(
        isinstance(m, FlowAdd | GroupAdd | GroupModify | Barrier) for m in msgs[:first_delete]
    )
    # ... and the result is exactly the new pipeline, P2's leftovers gone.
    assert replay(*old, msgs) == (set(new[0]), set(new[1]))


def test_two_flows_with_one_identity_are_refused():
    flows, _ = pipeline.build(state(P1), 1)
    with pytest.raises(ValueError, match="share table, priority and match"):
        index_flows([*flows, flows[0]])
