"""The incremental policy compiler against its oracle, the full compile, after random
changes: every flow equal, and each update's answer exactly the flows that moved."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from netpol import model
from netpol.compile import HostView, LocalPod, PolicyProgram, compile_policy
from netpol.incremental import (
    PolicyCompiler,
    SetHost,
    SetLocalPod,
    SetNamespace,
    SetNetworkPolicy,
    SetPod,
    inputs_between,
)
from netpol.state import PodAddress, PolicyState
from tests.unit.test_netpol_compile import LABELS, clusters

GEN = 5


def _expected(compiler: PolicyCompiler, generation: int = GEN) -> dict:
    program = compiler.program()
    if program is None:
        return {}
    flows = compile_policy(*_parts(program), generation)
    return {(f.table, f.priority, f.match): f for f in flows}


def _parts(program: PolicyProgram) -> tuple[PolicyState, HostView]:
    return program.state, program.view


def _current(compiler: PolicyCompiler) -> dict:
    return {(f.table, f.priority, f.match): f for f in compiler.flows()}


@st.composite
def input_pools(draw):
    """A random cluster to start from (its pods on host 0 attached here), and its and a
    second cluster's objects, and each one's absence, as inputs to draw from."""
    (a, placement), (b, _) = draw(clusters()), draw(clusters())
    pods = {p.key for p in (*a.pods, *b.pods)}
    ports = {key: 2 + i for i, key in enumerate(sorted(pods))}  # one port per pod key
    start = [SetHost(3, "100.64.0.1"), *(SetNamespace(n.name, n) for n in a.namespaces)]
    start += [SetPod(p.key, p) for p in a.pods]
    start += [SetLocalPod(k, ports[k]) for k, host in placement.items() if host == 0]
    start += [SetNetworkPolicy(p.key, p) for p in a.policies]
    pool = [SetPod(p.key, p) for p in (*a.pods, *b.pods)]
    pool += [SetPod(key, None) for key in pods]
    pool += [SetLocalPod(key, port) for key, port in ports.items()]
    pool += [SetLocalPod(key, None) for key in pods]
    pool += [SetNetworkPolicy(p.key, p) for p in (*a.policies, *b.policies)]
    pool += [SetNetworkPolicy(p.key, None) for p in (*a.policies, *b.policies)]
    pool += [SetNamespace(n.name, n) for n in (*a.namespaces, *b.namespaces)]
    pool += [SetNamespace(n, None) for n in "xyz"]
    for n in "xyz":  # namespaces relabelled
        for labels in draw(st.lists(LABELS, min_size=1, max_size=3)):
            pool.append(
                SetNamespace(n, model.parse_namespace({"metadata": {"name": n, "labels": labels}}))
            )
    # Pods moving to another address, and their labels changing, under one key.
    for i, p in enumerate(a.pods):
        moved = PodAddress(p.pod, f"100.64.9.{i}")
        pool.append(SetPod(p.key, moved))
        for labels in draw(st.lists(LABELS, min_size=1, max_size=2)):
            relabelled = model.Pod(p.pod.namespace, p.pod.name, labels, p.pod.ports)
            pool.append(SetPod(p.key, PodAddress(relabelled, p.ip)))
    pool += [SetHost(3, "100.64.0.1"), SetHost(3, None), SetHost(4, "100.64.0.1")]
    pool += [SetHost(None, None)]
    return start, pool


@settings(max_examples=300, deadline=None)
@given(input_pools(), st.data())
def test_incremental_flows_equal_the_full_compile_after_every_batch(pools, data):
    start, pool = pools
    compiler = PolicyCompiler(GEN)
    compiler.update(start)
    switch = _current(compiler)
    assert switch == _expected(compiler)
    for _ in range(data.draw(st.integers(1, 12))):
        batch = data.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=4))
        before = dict(switch)
        moved = compiler.update(batch)
        switch = _current(compiler)
        assert switch == _expected(compiler)
        # The answer names exactly the flows that moved, with what they were.
        assert moved == {
            k: before.get(k)
            for k in before.keys() | switch.keys()
            if before.get(k) != switch.get(k)
        }
    # A full sync's new generation: the same flows with its cookies.
    state = compiler.program()
    compiler.regenerate(GEN + 1)
    assert compiler.program() == state
    assert _current(compiler) == _expected(compiler, GEN + 1)


@given(clusters())
@settings(max_examples=50, deadline=None)
def test_a_program_reached_through_inputs_between_is_the_program(cluster):
    state, placement = cluster
    local = {p.key: 2 + i for i, p in enumerate(state.pods) if placement[p.key] == 0}
    view = HostView(3, tuple(LocalPod(k, port) for k, port in local.items()), "100.64.0.1")
    program = PolicyProgram(state, view)
    compiler = PolicyCompiler(GEN)
    compiler.update(inputs_between(None, program))
    assert _current(compiler) == {
        (f.table, f.priority, f.match): f for f in compile_policy(state, view, GEN)
    }
    compiler.update(inputs_between(program, None))
    assert list(compiler.flows()) == []


def test_a_rule_that_does_not_compile_allows_nothing_and_the_rest_is_served(caplog):
    compiler = PolicyCompiler(GEN)
    ns = model.parse_namespace({"metadata": {"name": "x"}})
    pod = PodAddress(model.parse_pod({"metadata": {"name": "a", "namespace": "x"}}), "100.64.0.2")
    compiler.update([SetHost(3), SetNamespace("x", ns), SetPod("x/a", pod)])
    # A policy the parser would refuse (a protocol the data path has no match for) stands
    # for a compiler bug: compiling its rule raises.
    bad = model.NetworkPolicy(
        "x",
        "bad",
        model.LabelSelector(),
        frozenset({"Ingress"}),
        ingress=(model.Rule(ports=(model.PolicyPort("XTP", 80),)),),
    )
    compiler.update([SetNetworkPolicy(bad.key, bad), SetLocalPod("x/a", 2)])
    assert "x/bad ingress[0] cannot be compiled" in caplog.text
    # It isolates x/a like a policy with no rules at all: fail closed.
    program = compiler.program()
    rules_out = model.NetworkPolicy("x", "bad", bad.pod_selector, bad.policy_types)
    state = PolicyState(program.state.namespaces, program.state.pods, (rules_out,))
    assert _current(compiler) == {
        (f.table, f.priority, f.match): f for f in compile_policy(state, program.view, GEN)
    }


def test_a_policy_replaced_by_one_that_does_not_compile_fails_closed(monkeypatch, caplog):
    """The replacement's indexing raises (a bug): the old version must not stay in force;
    the new one stands without its rules, isolating its pods and allowing nothing."""
    compiler = PolicyCompiler(GEN)
    ns = model.parse_namespace({"metadata": {"name": "x"}})
    pod = PodAddress(model.parse_pod({"metadata": {"name": "a", "namespace": "x"}}), "100.64.0.2")
    allow_all = model.parse_network_policy(
        {"metadata": {"name": "p", "namespace": "x"}, "spec": {"podSelector": {}, "ingress": [{}]}}
    )
    narrow = model.parse_network_policy(
        {
            "metadata": {"name": "p", "namespace": "x"},
            "spec": {"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]},
        }
    )
    compiler.update([SetHost(3), SetNamespace("x", ns), SetPod("x/a", pod), SetLocalPod("x/a", 2)])
    compiler.update([SetNetworkPolicy(allow_all.key, allow_all)])

    def broken(*args):
        raise RuntimeError("selector bug")

    monkeypatch.setattr(PolicyCompiler, "_selection", broken)
    compiler.update([SetNetworkPolicy(narrow.key, narrow)])
    assert "selector bug" in caplog.text
    [held] = compiler.program().state.policies
    assert (held.ingress, held.egress) == ((), ()) and held.pod_selector == narrow.pod_selector
    monkeypatch.undo()
    assert _current(compiler) == _expected(compiler)
