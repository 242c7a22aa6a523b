"""The incremental engine against its oracle, the full build, after random change sequences."""

from __future__ import annotations

import gc
import ipaddress
from collections import defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from netpol import model
from netpol.compile import HostView, LocalPod, PolicyProgram
from netpol.incremental import (
    SetHost,
    SetLocalPod,
    SetNamespace,
    SetNetworkPolicy,
    SetPod,
    inputs_between,
)
from netpol.state import PolicyState
from openflow import pipeline
from openflow.cookies import Feature, feature_of
from openflow.diff import FlowAdd, FlowDelete, GroupAdd, GroupDelete, GroupModify, index_flows
from openflow.incremental import Engine, Peer, PolicyUpdate, Remove, SetTunnel, Upsert
from openflow.model import Flow
from openflow.state import Gateway, HostState, LocalPort, NetworkSpec, RemoteEndpoint
from tests.unit.netpol_e2e import Case, pod_label, policy
from tests.unit.test_diff import replay

NETS = ("a", "b", "c")
IPS = ("198.18.0.2", "198.18.0.3", "198.18.0.5")
MACS = tuple(f"0a:58:00:00:00:0{i}" for i in range(1, 5))
ADDRS = tuple(f"100.64.0.{i}" for i in range(2, 6))

networks = st.builds(
    lambda k, name, vni, index, r: Upsert(f"networks/{k}", NetworkSpec(name, vni, index), (r,)),
    st.sampled_from("xyz"),
    st.sampled_from(NETS),
    st.sampled_from((5001, 5002)),
    st.sampled_from((1, 2)),
    st.integers(0, 3),
)
peers = st.builds(
    lambda k, ip, r: Upsert(f"hosts/{k}", Peer(ip), (r,)),
    st.sampled_from(("h2", "h3", "h4")),
    st.sampled_from(IPS),
    st.integers(0, 3),
)
locals_ = st.builds(
    lambda k, net, port, mac, ip: Upsert(f"port/{k}", LocalPort(net, port, mac, ip), (0,)),
    st.integers(1, 4),
    st.sampled_from(NETS),
    st.integers(2, 5),
    st.sampled_from(MACS),
    st.sampled_from(ADDRS),
)
gateways = st.builds(
    lambda net, port, mac, ip, anycast: Upsert("gw", Gateway(net, port, mac, ip, anycast), (0,)),
    st.sampled_from(NETS),
    st.sampled_from((2, 9)),
    st.sampled_from(MACS),
    st.sampled_from(ADDRS),
    st.sampled_from((None, "100.64.0.1", ADDRS[0])),  # the anycast may collide too
)
remotes = st.builds(
    lambda k, net, host, mac, ip, r: Upsert(
        f"endpoints/{k}", RemoteEndpoint(net, host, mac, ip), (1, r)
    ),
    st.integers(1, 6),
    st.sampled_from(NETS),
    st.sampled_from(IPS),
    st.sampled_from(MACS),
    st.sampled_from(ADDRS),
    st.integers(0, 4),
)
removes = st.builds(
    Remove,
    st.sampled_from(
        [f"networks/{k}" for k in "xyz"]
        + [f"hosts/{k}" for k in ("h2", "h3", "h4")]
        + [f"port/{i}" for i in range(1, 5)]
        + ["gw"]
        + [f"endpoints/{i}" for i in range(1, 7)]
    ),
)


def _program(policies: list[dict], network: int) -> PolicyProgram:
    """A policy program over the upstream e2e model: x/a on this host at port 2."""
    case = Case("", policies, [])
    return PolicyProgram(case.state(), HostView(network, (LocalPod("x/a", 2),)))


PROGRAMS = (
    None,
    _program([policy("deny-all", "x", {}, ingress=[], egress=[])], 1),
    _program(
        [
            policy(
                "a-from-b",
                "x",
                pod_label("a"),
                ingress=[{"from": [{"podSelector": pod_label("b")}]}],
            )
        ],
        1,
    ),
    _program([], 2),
)
# The inputs between any two programs; drawn in any order they make other states too.
policies = st.sampled_from(
    [PolicyUpdate(tuple(inputs_between(a, b))) for a in PROGRAMS for b in PROGRAMS if a != b]
)


_FIELDS = {
    SetNamespace: lambda i: (i.name, i.namespace),
    SetPod: lambda i: (i.key, i.pod),
    SetNetworkPolicy: lambda i: (i.key, i.policy),
    SetLocalPod: lambda i: (i.key, i.ofport),
}


def reference_program(inputs: list) -> PolicyProgram | None:
    """Reference: the program ``inputs`` make, folded into plain dicts."""
    host: tuple = (None, None)
    held: dict[type, dict] = defaultdict(dict)
    for i in inputs:
        if isinstance(i, SetHost):
            host = (i.network, i.host_ip)
            continue
        key, value = _FIELDS[type(i)](i)
        if value is None:
            held[type(i)].pop(key, None)
        else:
            held[type(i)][key] = value
    if host[0] is None:
        return None
    state = PolicyState(
        *(
            tuple(v for _, v in sorted(held[t].items()))
            for t in (SetNamespace, SetPod, SetNetworkPolicy)
        )
    )
    local = sorted(
        (LocalPod(k, port) for k, port in held[SetLocalPod].items() if k in held[SetPod]),
        key=lambda lp: lp.ofport,
    )
    return PolicyProgram(state, HostView(host[0], tuple(local), host[1]))


changes = st.one_of(
    networks, peers, locals_, gateways, remotes, remotes, removes, removes, policies, st.just(None)
)
batches = st.lists(st.lists(changes, min_size=1, max_size=4), min_size=1, max_size=25)


def _winners(entries: dict, claims) -> set:
    """Reference: the keys that are the best (rank, repr(key)) contender for every claim."""
    best: dict = {}
    for key, (obj, rank) in entries.items():
        for claim in claims(obj):
            if claim not in best or (rank, repr(key)) < best[claim][0]:
                best[claim] = ((rank, repr(key)), key)
    return {key for key, (obj, _) in entries.items() if all(best[c][1] == key for c in claims(obj))}


def reference_state(objects: dict, tunnel: int, program=None) -> HostState:
    """The state the engine must serve, computed from scratch from every object."""
    from openflow.incremental import _claims

    nets = {k: v for k, v in objects.items() if isinstance(v[0], NetworkSpec)}
    active_nets = {objects[k][0] for k in _winners(nets, _claims)}
    names = {n.name for n in active_nets}
    hosts = {k: v for k, v in objects.items() if isinstance(v[0], Peer)}
    active_peers = {objects[k][0].ip for k in _winners(hosts, _claims)}
    eps = {
        k: v
        for k, v in objects.items()
        if isinstance(v[0], LocalPort | Gateway | RemoteEndpoint)
        and v[0].network in names
        and (not isinstance(v[0], RemoteEndpoint) or v[0].host_ip in active_peers)
    }
    active = [objects[k][0] for k in _winners(eps, _claims)]
    return HostState(
        tunnel_ofport=tunnel,
        networks=tuple(sorted(active_nets, key=lambda n: n.vni)),
        peers=tuple(sorted(active_peers)),
        local=tuple(
            sorted((o for o in active if isinstance(o, LocalPort)), key=lambda p: p.ofport)
        ),
        remote=tuple(
            sorted(
                (o for o in active if isinstance(o, RemoteEndpoint)),
                key=lambda r: (r.network, r.mac),
            )
        ),
        gateways=tuple(o for o in active if isinstance(o, Gateway)),
        policy=program,
    )


@settings(max_examples=300, deadline=None)
@given(batches, st.integers(1, 9))
def test_incremental_messages_keep_the_switch_equal_to_the_full_build(batches, generation):
    engine = Engine(tunnel_ofport=1, generation=generation)
    tunnel = 1
    objects: dict = {}
    program = None
    inputs: list = []
    switch = (set(engine.flows()), set(engine.groups()))  # the defaults, as a full sync left them
    for batch in batches:
        batch = [SetTunnel(7 if tunnel == 1 else 1) if c is None else c for c in batch]
        for c in batch:
            if isinstance(c, Upsert):
                objects[c.key] = (c.obj, c.rank)
            elif isinstance(c, Remove):
                objects.pop(c.key, None)
            elif isinstance(c, PolicyUpdate):
                inputs += c.inputs
                program = reference_program(inputs)
            else:
                tunnel = c.ofport
        messages, _shadowed = engine.apply(batch)
        switch = replay(*switch, messages)
        state = engine.state()
        assert state == reference_state(objects, tunnel, program)
        want_flows, want_groups = pipeline.build(state, generation)
        index_flows(want_flows)  # no conflict reaches the switch
        assert switch == (set(want_flows), set(want_groups))
        assert (set(engine.flows()), set(engine.groups())) == switch
        _assert_counts(engine, state)
    # A full rebuild (a reconnect) for another generation is the full build too.
    engine.rebuild(generation + 1)
    rebuilt = engine.flows(), engine.groups()
    want = pipeline.build(engine.state(), generation + 1)
    assert (set(rebuilt[0]), set(rebuilt[1])) == (set(want[0]), set(want[1]))
    # A rebuild for the generation it has is the full build as well (kept, not rebuilt).
    engine.rebuild(generation + 1)
    again = engine.flows(), engine.groups()
    assert (set(again[0]), set(again[1])) == (set(want[0]), set(want[1]))
    # And every index recomputed from the objects alone (the fallback after a failure).
    state = engine.state()
    engine.recompute()
    assert engine.state() == state
    assert (set(engine.flows()), set(engine.groups())) == (set(want[0]), set(want[1]))
    _assert_counts(engine, state)


def _assert_counts(engine: Engine, state: HostState) -> None:
    """The status's counts (not built flow by flow) equal what the full build has."""
    counts = engine.counts()
    flows, groups = pipeline.build(state, engine.generation)
    assert (counts.flows, counts.groups) == (len(flows), len(groups))
    assert (counts.networks, counts.peers) == (len(state.networks), len(state.peers))
    assert (counts.local_ports, counts.gateways, counts.remote_endpoints) == (
        len(state.local),
        len(state.gateways),
        len(state.remote),
    )


NET = NetworkSpec("default", 5001, 1)
H2 = "198.18.0.2"


def _base() -> Engine:
    engine = Engine(tunnel_ofport=1, generation=1)
    engine.apply([Upsert("networks/default", NET, (1,)), Upsert("hosts/h2", Peer(H2), (2,))])
    return engine


def test_one_more_remote_endpoint_sends_its_two_flows_and_the_new_peer_bucket():
    engine = _base()
    msgs, _ = engine.apply(
        [Upsert("endpoints/e1", RemoteEndpoint("default", H2, MACS[0], ADDRS[0]), (1, 5))]
    )
    assert [type(m).__name__ for m in msgs] == [
        "GroupModify",
        "Barrier",
        "FlowAdd",
        "FlowAdd",
        "Barrier",
    ]
    msgs, _ = engine.apply(
        [Upsert("endpoints/e2", RemoteEndpoint("default", H2, MACS[1], ADDRS[1]), (1, 6))]
    )
    assert {type(m) for m in msgs} == {FlowAdd, type(msgs[-1])}  # no group change


def test_a_second_endpoint_with_one_mac_is_shadowed_until_the_first_goes():
    engine = _base()
    first = RemoteEndpoint("default", H2, MACS[0], ADDRS[0])
    second = RemoteEndpoint("default", H2, MACS[0], ADDRS[1])
    engine.apply([Upsert("endpoints/old", first, (1, 5))])
    msgs, shadowed = engine.apply([Upsert("endpoints/new", second, (1, 9))])
    assert msgs == []
    assert [(s.key, s.claim, s.winner) for s in shadowed] == [
        ("endpoints/new", ("mac", "default", MACS[0]), "endpoints/old")
    ]
    msgs, _ = engine.apply([Remove("endpoints/old")])
    assert engine.state().remote == (second,)
    assert any(isinstance(m, FlowDelete) for m in msgs)  # first's ARP flow


def test_a_local_port_wins_over_a_remote_endpoint_with_its_mac():
    engine = _base()
    remote = RemoteEndpoint("default", H2, MACS[0], ADDRS[0])
    local = LocalPort("default", 3, MACS[0], ADDRS[1])
    engine.apply([Upsert("endpoints/e", remote, (1, 1))])
    _, shadowed = engine.apply([Upsert("port/p", local, (0,))])
    assert engine.state().local == (local,) and engine.state().remote == ()
    assert [(s.key, s.winner) for s in shadowed] == [("endpoints/e", "port/p")]


def test_a_network_with_a_taken_vni_has_no_flows_and_its_endpoints_wait():
    engine = _base()
    msgs, shadowed = engine.apply(
        [
            Upsert("networks/blue", NetworkSpec("blue", 5001, 1), (7,)),
            Upsert("port/b", LocalPort("blue", 4, MACS[2], ADDRS[2]), (0,)),
        ]
    )
    assert msgs == [] and shadowed[0].claim == ("vni", 5001)
    msgs, _ = engine.apply([Remove("networks/default")])
    assert engine.state().networks == (NetworkSpec("blue", 5001, 1),)
    assert engine.state().local == (LocalPort("blue", 4, MACS[2], ADDRS[2]),)
    assert any(isinstance(m, GroupModify) for m in msgs)
    assert not any(isinstance(m, GroupAdd | GroupDelete) for m in msgs)


def test_a_host_that_goes_takes_its_endpoints_and_tunnel_flows_with_it():
    engine = _base()
    engine.apply([Upsert("endpoints/e", RemoteEndpoint("default", H2, MACS[0], ADDRS[0]), (1,))])
    engine.apply([Remove("hosts/h2")])
    assert engine.state().remote == () and engine.state().peers == ()
    assert not any(H2 in repr(f) for f in engine.flows())
    engine.apply([Upsert("hosts/h2", Peer(H2), (3,))])
    assert len(engine.state().remote) == 1


def test_a_rebuild_for_the_generation_the_engine_has_builds_its_units_not_again():
    """The first full sync of an agent installs the network and tunnel flows the engine
    built as it loaded the store (the reconciler starts it at that sync's generation)."""
    engine = Engine(tunnel_ofport=2, generation=8)
    engine.apply(
        [
            Upsert("networks/n", NetworkSpec("n", 5, 1), (1,)),
            Upsert("hosts/b", Peer("198.18.0.2"), (2,)),
            Upsert("e", RemoteEndpoint("n", "198.18.0.2", "0a:58:00:00:00:01", "100.64.0.1"), (3,)),
        ]
    )
    before = engine.flows()
    engine.rebuild(8)
    flows = engine.flows()
    assert set(flows) == set(before)
    held = (Feature.DEFAULTS, Feature.CANARY, Feature.FLOOD, Feature.CLASSIFY_TUNNEL)
    kept = {id(f) for f in flows}
    assert all(id(f) in kept for f in before if feature_of(f.cookie) in held)


def _live_flows() -> int:
    gc.collect()
    return sum(isinstance(o, Flow) for o in gc.get_objects())


def test_the_engine_holds_no_flows_per_endpoint():
    """An endpoint's flows are built from it when they are sent or diffed, not held:
    holding them cost ~9 MB of the agent at 10,000 remote endpoints."""
    engine = _base()
    engine.apply([Upsert("port/p", LocalPort("default", 3, MACS[3], ADDRS[3]), (0,))])
    held = _live_flows()
    addrs = ipaddress.ip_network("100.64.1.0/24")
    msgs, _ = engine.apply(
        [
            Upsert(
                f"endpoints/e{i}",
                RemoteEndpoint("default", H2, f"0a:58:00:00:01:{i:02x}", str(ip)),
                (1, i),
            )
            for i, ip in enumerate(list(addrs)[:100])
        ]
    )
    assert sum(isinstance(m, FlowAdd) for m in msgs) == 200
    del msgs
    assert _live_flows() == held
    assert len(engine.flows()) == len(engine.local_flows()) + 200 + 1  # + the tunnel flow


def test_a_rule_that_does_not_compile_allows_nothing_and_the_rest_is_served():
    engine = _base()
    good = PROGRAMS[1]
    engine.apply([PolicyUpdate(tuple(inputs_between(None, good)))])
    before = set(engine.flows())
    # A policy the parser would refuse (a protocol with no match) stands for a compiler
    # bug: its rule raises half-way through the compile.
    broken = model.NetworkPolicy(
        "x",
        "broken",
        model.LabelSelector(),
        frozenset({"Ingress"}),
        ingress=(model.Rule(ports=(model.PolicyPort("XTP", 80),)),),
    )
    messages, _ = engine.apply(
        [
            Upsert("hosts/h3", Peer("198.18.0.3"), (3,)),
            PolicyUpdate((SetNetworkPolicy(broken.key, broken),)),
        ]
    )
    assert broken in engine.state().policy.state.policies and engine.is_active("hosts/h3")
    assert {f for f in engine.flows() if feature_of(f.cookie) is Feature.POLICY_RULE} == {
        f for f in before if feature_of(f.cookie) is Feature.POLICY_RULE
    }
    assert messages  # the peer's flows went out
    names = engine.policy_rules
    engine.recompute()  # the reconciler's fallback keeps the compiler and its names
    assert engine.policy_rules is names
    before = set(engine.flows())
    engine.recompute()  # the reconciler's fallback after a failure: still whole
    assert set(engine.flows()) == before
