"""Hits per NetworkPolicy rule: a host's compiled policy flows, with counters as the switch
would report them, summed per rule (named from the state the flows were compiled from)
and per direction of the isolation drops; every other flow's counters left out."""

from __future__ import annotations

from netpol import model
from netpol.compile import HostView, LocalPod, compile_policy
from netpol.evaluate import EGRESS, INGRESS, RuleRef
from netpol.hits import DeniedHits, FlowCount, RuleHits, rule_names, sum_hits
from netpol.state import from_records
from openflow import cookies
from openflow.cookies import Feature
from openflow.tables import EGRESS_ISOLATION, EGRESS_RULES, INGRESS_ISOLATION, INGRESS_RULES
from tests.unit.netpol_e2e import pod_label, pod_object, policy

IPS = {"x/a": "100.64.0.3", "x/b": "100.64.0.65", "x/c": "100.64.0.4"}
POLICIES = (
    policy("deny", "x", {}, ingress=[]),
    policy(
        "allow-b",
        "x",
        pod_label("a"),
        ingress=[
            {"from": [{"podSelector": pod_label("b")}], "ports": [{"port": 80}]},
            {"from": [{"podSelector": pod_label("c")}]},  # pods only: allow-all flows
        ],
    ),
    policy("no-out", "x", pod_label("c"), egress=[]),
)
STATE = from_records(
    [
        model.parse_namespace({"metadata": {"name": "x"}}),
        *(model.parse_pod(pod_object(k)) for k in IPS),
        *(model.parse_network_policy(p) for p in POLICIES),
    ],
    [(k, ip, 1) for k, ip in IPS.items()],
)
# h1: x/a on port 3, x/c on port 4 (x/b is on another host).
FLOWS = compile_policy(STATE, HostView(1, (LocalPod("x/a", 3), LocalPod("x/c", 4))), 7)
NOISE = 1000  # what every flow that is no rule's and no isolation drop counted


def counts(hit: dict[int, int]) -> list[FlowCount]:
    """The compiled flows as the switch reports them: the flows at the positions in
    ``hit`` counted that many packets (100 bytes each), every other flow NOISE."""
    return [
        FlowCount(f.cookie, f.table.table_id, hit.get(i, NOISE), 100 * hit.get(i, NOISE))
        for i, f in enumerate(FLOWS)
    ]


def where(table, feature: Feature, **fields) -> list[int]:
    return [
        i
        for i, f in enumerate(FLOWS)
        if f.table is table
        and cookies.feature_of(f.cookie) is feature
        and all(any(m.name == k and m.value == v for m in f.match) for k, v in fields.items())
    ]


def test_only_rule_flows_and_isolation_drops_are_counted():
    hits = sum_hits(counts({}), rule_names(STATE))
    assert [h.rule for h in hits.rules] == [
        RuleRef("x/allow-b", INGRESS, 0),
        RuleRef("x/allow-b", INGRESS, 1),
    ]
    rule_flows = len(where(INGRESS_RULES, Feature.POLICY_RULE))
    assert sum(h.flows for h in hits.rules) == rule_flows == 2
    assert sum(h.packets for h in hits.rules) == NOISE * rule_flows
    # The fixed flows, the shared clauses and the pods' ways to themselves counted too,
    # but are no rule's hits and no drop.
    assert len(FLOWS) > rule_flows + 3
    assert hits.denied == (
        DeniedHits(EGRESS, 1, NOISE, 100 * NOISE),
        DeniedHits(INGRESS, 2, 2 * NOISE, 200 * NOISE),
    )


def test_hits_follow_the_flows_that_counted_them():
    names = rule_names(STATE)
    ids = {ref: rid for rid, ref in names.items()}
    rule_flows = {
        ref: [
            i
            for i, f in enumerate(FLOWS)
            if cookies.feature_of(f.cookie) is Feature.POLICY_RULE
            and cookies.object_of(f.cookie) == ids[ref]
        ]
        for ref in names.values()
    }
    allow_c = rule_flows[RuleRef("x/allow-b", INGRESS, 1)]
    assert len(allow_c) == 1  # x/a from x/c's address: one allow-all flow on h1
    hit = {i: 0 for i in range(len(FLOWS))}  # nothing counted, then:
    hit[rule_flows[RuleRef("x/allow-b", INGRESS, 0)][0]] = 5
    hit[allow_c[0]] = 2
    drops_in = where(INGRESS_ISOLATION, Feature.POLICY_ISOLATION)
    drops_out = where(EGRESS_ISOLATION, Feature.POLICY_ISOLATION)
    assert len(drops_in) == 2 and len(drops_out) == 1  # x/a and x/c; x/c
    for i in drops_in:
        hit[i] = 3
    # An isolated pod reaching itself (POLICY_ISOLATION in the rules tables) is no drop.
    for i in where(INGRESS_RULES, Feature.POLICY_ISOLATION) + where(
        EGRESS_RULES, Feature.POLICY_ISOLATION
    ):
        hit[i] = NOISE
    hits = sum_hits(counts(hit), names)
    assert hits.rules == (
        RuleHits(
            ids[RuleRef("x/allow-b", INGRESS, 0)], RuleRef("x/allow-b", INGRESS, 0), 1, 5, 500
        ),
        RuleHits(
            ids[RuleRef("x/allow-b", INGRESS, 1)], RuleRef("x/allow-b", INGRESS, 1), 1, 2, 200
        ),
    )
    assert hits.denied == (DeniedHits(EGRESS, 1, 0, 0), DeniedHits(INGRESS, 2, 6, 600))


def test_a_stale_generation_adds_to_its_rule_and_an_unknown_id_stays_unnamed():
    names = rule_names(STATE)
    rid = next(r for r, ref in names.items() if ref == RuleRef("x/allow-b", INGRESS, 0))
    stale = FlowCount(cookies.cookie(Feature.POLICY_RULE, 6, rid), INGRESS_RULES.table_id, 4, 40)
    gone = FlowCount(cookies.cookie(Feature.POLICY_RULE, 7, 99), INGRESS_RULES.table_id, 9, 90)
    foreign = FlowCount(0x1234, INGRESS_RULES.table_id, 1, 1)  # no feature of ours
    fresh = FlowCount(cookies.cookie(Feature.POLICY_RULE, 7, rid), INGRESS_RULES.table_id, 1, 10)
    hits = sum_hits([gone, stale, foreign, fresh], names)
    assert hits.rules == (
        RuleHits(rid, RuleRef("x/allow-b", INGRESS, 0), 2, 5, 50),
        RuleHits(99, None, 1, 9, 90),
    )
    assert hits.denied == (DeniedHits(EGRESS, 0, 0, 0), DeniedHits(INGRESS, 0, 0, 0))


def test_no_policy_state_leaves_every_rule_unnamed():
    hits = sum_hits(counts({}), {})
    assert hits.rules and all(h.rule is None for h in hits.rules)
