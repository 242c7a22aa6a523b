"""Hits per NetworkPolicy rule: br-int's flow counters summed by the rule that owns them.

A rule's own flows (its conjunctions' actions, or its allow-all flows) carry the rule's
id as their cookie's object id (feature POLICY_RULE, netpol/compile.py), so a rule's
packets and bytes are the sum over the flows with its id, whatever generation they are
of (a rule keeps its id while other policies come and go).  What a rule id *means* comes
from the policy state the flows were compiled from (``rule_names``): the agent's
installed program, or the store's state for the CLI, never from parsing a flow.  The
drops of an isolated pod that no rule allowed (the isolation tables' POLICY_ISOLATION
flows) are summed per direction: they have no rule, and one series per pod would grow
with the pods.

Pure: the agent (controller/policy_metrics.py) feeds it OpenFlow flow stats, the CLI
(``ovs-overlayctl flows``) ``ovs-ofctl dump-flows`` lines.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from netpol.compile import rule_ids
from netpol.evaluate import EGRESS, INGRESS, RuleRef
from netpol.state import PolicyState
from openflow import cookies
from openflow.tables import EGRESS_ISOLATION, INGRESS_ISOLATION

_ISOLATION_TABLES = {EGRESS_ISOLATION.table_id: EGRESS, INGRESS_ISOLATION.table_id: INGRESS}


@dataclass(frozen=True)
class FlowCount:
    """One flow's counters as the switch reports them."""

    cookie: int
    table_id: int
    packets: int
    bytes: int


@dataclass(frozen=True)
class RuleHits:
    """One rule's flows on this switch and what they counted.  ``rule`` is None when the
    state has no rule with that id (the switch has flows the state no longer has: the
    agent has not caught up, or a stale generation is on its way out)."""

    rule_id: int
    rule: RuleRef | None
    flows: int
    packets: int
    bytes: int


@dataclass(frozen=True)
class DeniedHits:
    """What the isolation flows of one direction dropped: new connections of isolated
    pods that no rule allowed."""

    direction: str
    flows: int
    packets: int
    bytes: int


@dataclass(frozen=True)
class PolicyHits:
    rules: tuple[RuleHits, ...]  # by policy, direction, index; unknown ids last
    denied: tuple[DeniedHits, ...]  # Egress, then Ingress; both always present


def rule_names(state: PolicyState) -> dict[int, RuleRef]:
    """Rule id -> rule, for the state the flows were compiled from: the compiler's own
    ids (netpol.compile.rule_ids), inverted."""
    return {rid: ref for ref, rid in rule_ids(state).items()}


def sum_hits(counts: Iterable[FlowCount], names: Mapping[int, RuleRef]) -> PolicyHits:
    """The policy flows among ``counts`` summed per rule (by the cookie's object id) and
    per direction of the isolation drops; every other flow is ignored."""
    rules: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0])
    denied = {EGRESS: [0, 0, 0], INGRESS: [0, 0, 0]}
    for c in counts:
        try:
            feature = cookies.feature_of(c.cookie)
        except ValueError:  # no feature of ours
            continue
        if feature is cookies.Feature.POLICY_RULE:
            acc = rules[cookies.object_of(c.cookie)]
        elif feature is cookies.Feature.POLICY_ISOLATION and c.table_id in _ISOLATION_TABLES:
            acc = denied[_ISOLATION_TABLES[c.table_id]]
        else:  # the fixed flows, the shared clauses, an isolated pod's way to itself
            continue
        acc[0] += 1
        acc[1] += c.packets
        acc[2] += c.bytes
    per_rule = [RuleHits(rid, names.get(rid), *acc) for rid, acc in rules.items()]
    per_rule.sort(key=lambda h: (h.rule is None, h.rule or RuleRef("", "", 0), h.rule_id))
    return PolicyHits(
        tuple(per_rule),
        tuple(DeniedHits(d, *acc) for d, acc in denied.items()),
    )
