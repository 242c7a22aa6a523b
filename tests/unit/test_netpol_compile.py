"""The policy compiler, run: its flows on each host through the switch simulator give the
evaluator's verdict (netpol/evaluate.py), on the upstream e2e cases and on random
clusters; replies pass; flows grow with the sum of a rule's peers and ports."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from os_ken.ofproto import ofproto_protocol, ofproto_v1_3

from netpol import model
from netpol.compile import HostView, LocalPod, compile_policy, port_masks, rule_ids
from netpol.evaluate import Endpoint, RuleRef, evaluate
from netpol.state import PodAddress, PolicyState
from openflow import encode, sender
from openflow.cookies import Feature, feature_of, object_of
from openflow.model import ETH_TYPE_IP, Conjunction, Flow, Output
from openflow.simulate import Conntrack, Switch
from openflow.tables import HOST_CONNTRACK, POLICY_CONNTRACK
from tests.unit.netpol_e2e import ALL, CASES, Case, deny_ingress_x, ip_of, pod_label, policy

NET = 3
TUNNEL, GATEWAY, DELIVERED = 1000, 1001, 4000
PROTO = {"TCP": (6, "tcp"), "UDP": (17, "udp"), "SCTP": (132, "sctp"), "ICMP": (1, None)}
# What follows policy in the pipeline, for these tests: deliver.
# What the pipeline has around the policy tables (openflow/pipeline.py defaults_flows):
# policy_conntrack's miss goes on to host_conntrack, here the end of the road.
_AFTER = (
    Flow(POLICY_CONNTRACK, 0, (), 0, goto=HOST_CONNTRACK),
    Flow(HOST_CONNTRACK, 0, (), 0, actions=(Output(DELIVERED),)),
)


class Cluster:
    """Pods placed on hosts (``placement``: pod key -> host), each host's compiled
    flows in its own simulated switch, conntrack and all."""

    def __init__(self, state: PolicyState, placement: dict[str, int]):
        self.state = state
        self.placement = placement
        self.ofport = {key: 10 + i for i, key in enumerate(sorted(placement))}
        self.switches = {h: self.switch(h) for h in set(placement.values())}

    def flows(self, host: int, state: PolicyState | None = None) -> tuple[Flow, ...]:
        local = tuple(LocalPod(k, self.ofport[k]) for k, h in self.placement.items() if h == host)
        return compile_policy(state or self.state, HostView(NET, local), generation=1)

    def switch(self, host: int) -> Switch:
        return Switch((*self.flows(host), *_AFTER), ())

    def send(self, src: Endpoint, dst: Endpoint, proto: str, port: int, sport=40000) -> bool:
        """A packet from ``src`` to ``dst``: through the source's host (if a pod), then
        the destination's (if a pod on another host); delivered or not."""
        number, l4 = PROTO[proto]
        pkt = {
            "eth_type": ETH_TYPE_IP,
            "ip_proto": number,
            "ipv4_src": src.ip if isinstance(src, PodAddress) else src,
            "ipv4_dst": dst.ip if isinstance(dst, PodAddress) else dst,
            "reg2": NET,
        }
        if l4 is not None:  # ICMP: no ports (a rule with ports never allows it)
            pkt.update({f"{l4}_src": sport, f"{l4}_dst": port})
        hops = []
        src_host = self.placement[src.key] if isinstance(src, PodAddress) else None
        dst_host = self.placement[dst.key] if isinstance(dst, PodAddress) else None
        if src_host is not None:
            out = self.ofport[dst.key] if dst_host == src_host else TUNNEL
            hops.append((src_host, self.ofport[src.key], GATEWAY if dst_host is None else out))
        if dst_host is not None and dst_host != src_host:
            hops.append((dst_host, GATEWAY if src_host is None else TUNNEL, self.ofport[dst.key]))
        for host, in_port, out in hops:
            trace = self.switches[host].process({**pkt, "in_port": in_port, "reg1": out}, 60)
            if DELIVERED not in trace.ports:
                return False
        return True


def spread(keys) -> dict[str, int]:
    """x/a, y/a, z/a on host 0, the b's on host 1, the c's on host 2 (as the lab spreads
    them: every namespace on every host)."""
    return {k: "abc".index(k[-1]) for k in keys}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_upstream_truth_tables_through_the_compiled_flows(case: Case):
    state = case.state()
    pods = {p.key: p for p in state.pods}
    for port, protocol, reachability in case.probes:
        cluster = Cluster(state, spread(ALL))
        got = {(f, t): cluster.send(pods[f], pods[t], protocol, port) for f in ALL for t in ALL}
        wrong = {k for k, v in got.items() if v != reachability.expected()[k]}
        assert not wrong, f"{port}/{protocol}: {len(wrong)} wrong, e.g. {sorted(wrong)[:5]}"


def test_replies_of_an_allowed_connection_pass_and_established_ones_outlive_a_new_policy():
    deny_x = policy("deny-all", "x", {}, ingress=[], egress=[])
    state = Case(
        "",
        [
            policy(
                "from-b", "x", pod_label("a"), ingress=[{"from": [{"podSelector": pod_label("b")}]}]
            )
        ],
        [],
    ).state()
    pods = {p.key: p for p in state.pods}
    cluster = Cluster(state, spread(ALL))
    xa, xb = pods["x/a"], pods["x/b"]
    assert cluster.send(xb, xa, "TCP", 80, sport=40000)
    # x/a -> x/b is no connection b opened, but the reply of one is (ports swapped).
    assert cluster.send(xa, xb, "TCP", 40000, sport=80)
    assert not cluster.send(pods["x/c"], xa, "TCP", 80)
    # A policy denying everything in x: new connections stop, the established one goes on.
    denied = Case("", [deny_x], []).state()
    for host, switch in cluster.switches.items():
        fresh = Switch((*cluster.flows(host, denied), *_AFTER), ())
        switch.tables = fresh.tables
    assert cluster.send(xb, xa, "TCP", 80, sport=40000)
    assert not cluster.send(xb, xa, "TCP", 80, sport=40001)


def test_flows_grow_with_the_sum_of_pods_peers_and_ports_not_their_product():
    peers = [{"ipBlock": {"cidr": f"198.18.{2 * i}.0/24"}} for i in range(40)]  # apart
    ports = [{"port": 1000 + 2 * i} for i in range(30)]  # 30 ports that do not merge
    state = Case(
        "", [policy("wide", "x", {}, ingress=[{"from": peers, "ports": ports}])], []
    ).state()
    local = tuple(LocalPod(k, 10 + i) for i, k in enumerate(ALL))
    flows = compile_policy(state, HostView(NET, local), generation=1)
    clause_flows = [f for f in flows if f.actions and isinstance(f.actions[0], Conjunction)]
    assert len(clause_flows) == 3 + 40 + 30  # x's 3 pods, 40 blocks, 30 ports
    rule = rule_ids(state)[RuleRef("x/wide", "Ingress", 0)]
    counted = [f for f in flows if feature_of(f.cookie) == Feature.POLICY_RULE]
    assert [object_of(f.cookie) for f in counted] == [rule]  # one conj_id flow, the rule's


def test_a_rule_keeps_its_id_when_other_policies_come_and_go():
    one = Case("", [policy("a", "x", {}, ingress=[{}])], []).state()
    many = Case(
        "",
        [policy(f"p{i}", "y", {}, ingress=[{}, {}]) for i in range(300)]
        + [policy("a", "x", {}, ingress=[{}])],
        [],
    ).state()
    ref = RuleRef("x/a", "Ingress", 0)
    assert rule_ids(one)[ref] == rule_ids(many)[ref]
    assert len(set(rule_ids(many).values())) == 601


def test_port_ranges_become_the_fewest_masked_matches():
    assert port_masks(80, 80) == [(80, 0xFFFF)]
    assert port_masks(80, 81) == [(80, 0xFFFE)]
    assert port_masks(79, 82) == [(79, 0xFFFF), (80, 0xFFFE), (82, 0xFFFF)]
    assert len(port_masks(1, 65535)) == 16
    for lo, hi in ((1, 1), (5, 1000), (32768, 65535), (1023, 1025)):
        covered = {p for v, m in port_masks(lo, hi) for p in range(lo - 5, hi + 6) if p & m == v}
        assert covered == set(range(lo, hi + 1))


def test_every_policy_flow_encodes_as_os_ken_does():
    dp = ofproto_protocol.ProtocolDesc(ofproto_v1_3.OFP_VERSION)
    unique = {
        (p["metadata"]["namespace"], p["metadata"]["name"]): p for c in CASES for p in c.policies
    }
    state = Case("", list(unique.values()), []).state()
    local = tuple(LocalPod(k, 10 + i) for i, k in enumerate(ALL))
    flows = compile_policy(state, HostView(NET, local), generation=7)
    assert any(f.match and any(m.name == "sctp_dst" for m in f.match) for f in flows)
    for i, flow in enumerate(flows):
        msg = sender._flow_mod(dp, flow, dp.ofproto.OFPFC_ADD)
        msg.set_xid(i + 1)
        msg.serialize()
        assert encode.flow_add(flow, i + 1) == bytes(msg.buf), flow


def test_other_networks_and_non_ip_pass_untouched():
    state = Case("", [policy("deny-all", "x", {}, ingress=[], egress=[])], []).state()
    local = (LocalPod("x/a", 10),)
    switch = Switch((*compile_policy(state, HostView(NET, local), 1), *_AFTER), ())
    other = {
        "in_port": 10,
        "reg1": 11,
        "reg2": NET + 1,
        "eth_type": ETH_TYPE_IP,
        "ip_proto": 6,
        "ipv4_src": ip_of("x/a"),
        "ipv4_dst": ip_of("x/b"),
        "tcp_src": 1,
        "tcp_dst": 80,
    }
    assert DELIVERED in switch.process(other, POLICY_CONNTRACK.table_id).ports
    arp = {"in_port": 10, "reg1": 11, "reg2": NET, "eth_type": 0x0806}
    assert DELIVERED in switch.process(arp, POLICY_CONNTRACK.table_id).ports


# -- random clusters against the evaluator ---------------------------------------------------

LABELS = st.dictionaries(
    st.sampled_from(["app", "tier", "pod"]), st.sampled_from(["a", "b"]), max_size=2
)


@st.composite
def selectors(draw):
    labels = draw(
        st.dictionaries(
            st.sampled_from(["app", "tier", "pod"]), st.sampled_from(["a", "b"]), max_size=1
        )
    )
    exprs = draw(
        st.lists(
            st.one_of(
                st.builds(
                    lambda k, v: {"key": k, "operator": "In", "values": [v]},
                    st.sampled_from(["app", "tier"]),
                    st.sampled_from(["a", "b"]),
                ),
                st.builds(
                    lambda k, v: {"key": k, "operator": "NotIn", "values": [v]},
                    st.sampled_from(["app", "tier"]),
                    st.sampled_from(["a", "b"]),
                ),
                st.builds(
                    lambda k: {"key": k, "operator": "Exists"}, st.sampled_from(["app", "tier"])
                ),
                st.builds(
                    lambda k: {"key": k, "operator": "DoesNotExist"},
                    st.sampled_from(["app", "tier"]),
                ),
            ),
            max_size=1,
        )
    )
    return {"matchLabels": labels, "matchExpressions": exprs}


@st.composite
def peers(draw, pod_ips):
    kind = draw(st.sampled_from(["pod", "ns", "both", "block"]))
    if kind == "block":
        ip = draw(st.sampled_from(pod_ips + ["198.18.0.9"]))
        prefix = draw(st.sampled_from([32, 28, 16, 8]))
        net = ipaddress.ip_network(f"{ip}/{prefix}", strict=False)
        if draw(st.integers(0, 9)) == 0:  # IPv6: the IPv4 data path never matches it
            return {"ipBlock": {"cidr": "fd00::/8"}}
        block: dict = {"cidr": str(net)}
        excepts = {
            str(ipaddress.ip_network(f"{e}/{draw(st.sampled_from([32, 30]))}", strict=False))
            for e in draw(st.lists(st.sampled_from(pod_ips), max_size=2))
        }
        excepts = [e for e in excepts if ipaddress.ip_network(e).subnet_of(net)]
        if excepts and ipaddress.ip_network(excepts[0]) != net:
            block["except"] = sorted(e for e in excepts if ipaddress.ip_network(e) != net)
        return {"ipBlock": block}
    out = {}
    if kind in ("pod", "both"):
        out["podSelector"] = draw(selectors())
    if kind in ("ns", "both"):
        out["namespaceSelector"] = draw(selectors())
    return out


PORTS = st.one_of(
    st.builds(
        lambda p, proto: {"port": p, "protocol": proto},
        st.sampled_from([80, 81]),
        st.sampled_from(["TCP", "UDP", "SCTP"]),
    ),
    st.builds(lambda p: {"port": 79, "endPort": p}, st.sampled_from([80, 81])),
    st.builds(lambda proto: {"protocol": proto}, st.sampled_from(["TCP", "UDP"])),
    st.builds(
        lambda n, proto: {"port": n, "protocol": proto},
        st.sampled_from(["web", "alt", "none"]),
        st.sampled_from(["TCP", "UDP"]),
    ),
)


@st.composite
def clusters(draw):
    namespaces = ["x", "y", "z"]
    ns_objs = [
        model.parse_namespace({"metadata": {"name": n, "labels": draw(LABELS)}}) for n in namespaces
    ]
    n_pods = draw(st.integers(2, 7))
    pods = []
    for i in range(n_pods):
        ns = draw(st.sampled_from(namespaces))
        named = draw(
            st.lists(
                st.tuples(
                    st.sampled_from(["web", "alt"]),
                    st.sampled_from([80, 81]),
                    st.sampled_from(["TCP", "UDP"]),
                ),
                max_size=2,
                unique_by=lambda t: t[0],
            )
        )
        obj = {
            "metadata": {"name": f"p{i}", "namespace": ns, "labels": draw(LABELS)},
            "spec": {
                "containers": [
                    {
                        "name": "c",
                        "ports": [
                            {"name": n, "containerPort": p, "protocol": pr} for n, p, pr in named
                        ],
                    }
                ]
            },
        }
        pods.append(PodAddress(model.parse_pod(obj), f"100.64.{i // 4}.{10 + i}"))
    ips = [p.ip for p in pods]
    policies = []
    for j in range(draw(st.integers(0, 4))):
        rules = lambda: st.lists(  # noqa: E731
            st.fixed_dictionaries(
                {},
                optional={
                    "peers": st.lists(peers(ips), max_size=3),
                    "ports": st.lists(PORTS, max_size=3),
                },
            ),
            max_size=3,
        )
        ingress = draw(st.none() | rules())
        egress = draw(st.none() | rules())
        spec = {"podSelector": draw(selectors())}
        types = draw(st.sampled_from([None, ["Ingress"], ["Egress"], ["Ingress", "Egress"]]))
        if types is not None:
            spec["policyTypes"] = types
        for name, rs, key in (("ingress", ingress, "from"), ("egress", egress, "to")):
            if rs is not None:
                spec[name] = [{key: r.get("peers", []), "ports": r.get("ports", [])} for r in rs]
        obj = {
            "metadata": {"name": f"np{j}", "namespace": draw(st.sampled_from(namespaces))},
            "spec": spec,
        }
        policies.append(model.parse_network_policy(obj))
    placement = {p.key: draw(st.integers(0, 2)) for p in pods}
    return PolicyState(tuple(ns_objs), tuple(pods), tuple(policies)), placement


@settings(max_examples=300, deadline=None)
@given(clusters(), st.data())
def test_compiled_flows_agree_with_the_evaluator_on_random_clusters(cluster_and_placement, data):
    state, placement = cluster_and_placement
    cluster = Cluster(state, placement)
    endpoints: list[Endpoint] = [*state.pods, "198.18.0.9", "100.64.9.9"]
    for _ in range(12):
        src = data.draw(st.sampled_from(endpoints))
        dst = data.draw(st.sampled_from(endpoints))
        if not isinstance(src, PodAddress) and not isinstance(dst, PodAddress):
            continue
        proto = data.draw(st.sampled_from(["TCP", "UDP", "SCTP", "ICMP"]))
        port = data.draw(st.sampled_from([79, 80, 81]))
        want = evaluate(state, src, dst, proto, port)
        # A new connection each time: the simulator tracks SCTP by addresses only (no
        # ports), so a probe could otherwise pass as an earlier one's reply.
        for switch in cluster.switches.values():
            switch.conntrack = Conntrack()
        got = cluster.send(src, dst, proto, port)
        assert got == want.allowed, want.reason


def test_a_named_port_needs_its_container_port_of_the_same_protocol():
    """serve-80-udp is UDP: a TCP rule naming it allows nothing, a UDP one allows UDP 80."""
    for protocol, allowed in (("TCP", set()), ("UDP", {("UDP", 80)})):
        rule = {"ports": [{"port": "serve-80-udp", "protocol": protocol}]}
        state = Case("", [policy("named", "x", pod_label("a"), ingress=[rule])], []).state()
        pods = {p.key: p for p in state.pods}
        cluster = Cluster(state, spread(ALL))
        for proto in ("TCP", "UDP"):
            want = (proto, 80) in allowed
            assert evaluate(state, pods["y/b"], pods["x/a"], proto, 80).allowed == want
            assert cluster.send(pods["y/b"], pods["x/a"], proto, 80) == want, (protocol, proto)


def test_the_flows_do_not_depend_on_the_order_things_arrive_in():
    """The agent diffs what it installed against a new compile: the same cluster listed
    in another order must give the same flows."""
    unique = {
        (p["metadata"]["namespace"], p["metadata"]["name"]): p for c in CASES for p in c.policies
    }
    state = Case("", list(unique.values()), []).state()
    shuffled = PolicyState(
        tuple(reversed(state.namespaces)),
        tuple(reversed(state.pods)),
        tuple(reversed(state.policies)),
    )
    local = tuple(LocalPod(k, 10 + i) for i, k in enumerate(ALL))
    flows = compile_policy(state, HostView(NET, local), 1)
    assert compile_policy(shuffled, HostView(NET, tuple(reversed(local))), 1) == flows


def test_the_node_reaches_its_own_pods_whatever_the_policies_say():
    """kubelet's probes come from the host's own address: a default deny of ingress does not
    cut them; another host's address is judged like any other."""
    state = Case("", [deny_ingress_x], []).state()
    view = HostView(NET, (LocalPod("x/a", 10),), host_ip="100.64.0.129")
    switch = Switch((*compile_policy(state, view, 1), *_AFTER), ())

    def from_(src: str) -> set[int]:
        packet = {
            "in_port": 2,
            "reg1": 10,
            "reg2": NET,
            "eth_type": ETH_TYPE_IP,
            "ip_proto": 6,
            "ipv4_src": src,
            "ipv4_dst": ip_of("x/a"),
            "tcp_src": 40000,
            "tcp_dst": 80,
        }
        return switch.process(packet, POLICY_CONNTRACK.table_id).ports

    assert DELIVERED in from_("100.64.0.129")
    assert DELIVERED not in from_("100.64.0.65")
