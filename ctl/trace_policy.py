"""NetworkPolicy in a trace: which rule let the packet through, or which policies isolate
the pod that dropped it.

A rule's flows carry its id as their cookie's object id (and load it into reg3 for
egress, reg4 for ingress); :func:`netpol.compile.rule_ids` over the same PolicyState
the agents compile (store/policy_records.py) maps the id back to the rule.  A drop in
egress_isolation or ingress_isolation is explained by the model (netpol/evaluate.py):
the policies selecting the pod, none of whose rules allow the packet.

ofproto/trace shows a ``ct()`` as a second pass ("resume conntrack with default
ct_state=trk|new"): the traced packet is always a new connection, judged by the rules.
A real connection's later packets and replies are established and pass policy_state
straight to host_conntrack, whatever the rules say now (docs/pipeline.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ctl.policy_commands import RuleName, rule_name, rule_words
from ctl.trace_parse import RawStep, fields
from netpol.compile import rule_ids
from netpol.evaluate import EGRESS, INGRESS, RuleRef, evaluate
from netpol.state import PolicyState
from openflow import cookies
from openflow.tables import EGRESS_ISOLATION, INGRESS_ISOLATION, POLICY_STATE

NEW_NOTE = (
    "policy judged the packet as a new connection (ofproto/trace's conntrack says "
    "ct_state=new); an established connection's packets pass policy_state unjudged"
)


@dataclass(frozen=True)
class PolicyNames:
    """The PolicyState the agents compile, and its rules by id."""

    state: PolicyState
    rules: dict[int, RuleRef] = field(default_factory=dict)

    @classmethod
    def of(cls, state: PolicyState) -> PolicyNames:
        return cls(state, {rid: ref for ref, rid in rule_ids(state).items()})


def rule_of(raw: RawStep, names: PolicyNames | None) -> RuleName | None:
    """The rule whose flow this step matched (a POLICY_RULE cookie), if the store has it."""
    if names is None or raw.cookie is None:
        return None
    try:
        if cookies.feature_of(raw.cookie) is not cookies.Feature.POLICY_RULE:
            return None
    except ValueError:
        return None
    ref = names.rules.get(cookies.object_of(raw.cookie))
    return None if ref is None else rule_name(ref)


def explain_step(raw: RawStep, names: PolicyNames | None) -> str | None:
    """Policy's words for a step, or None when it is not policy's to explain."""
    if raw.table_id == POLICY_STATE.table_id:
        state = fields(raw.match).get("ct_state", "")
        if "+new" in state:
            return "a new connection: judged by the rules"
        if "+est" in state or "+rel" in state:
            return "part of an established connection: passes, unjudged"
        if "+inv" in state:
            return "conntrack says invalid: dropped"
        return None
    if raw.cookie is None:
        return None
    try:
        feature = cookies.feature_of(raw.cookie)
    except ValueError:
        return None
    if feature is not cookies.Feature.POLICY_RULE:
        return None
    rule = rule_of(raw, names)
    if rule is None:
        rid = cookies.object_of(raw.cookie)
        return (
            f"allowed by rule id {rid}, no rule of the policies in the store now "
            "(the agent has not caught up, or the store changed since)"
        )
    return f"allowed by {rule_words(rule)}"


def isolation_drop(
    table_id: int,
    names: PolicyNames | None,
    ip_src: str,
    ip_dst: str,
    protocol: str,
    port: int,
) -> tuple[str, tuple[str, ...]] | None:
    """Why an isolation table dropped the packet, and the isolating policies; None when
    the table is not an isolation table."""
    if table_id == EGRESS_ISOLATION.table_id:
        direction = EGRESS
    elif table_id == INGRESS_ISOLATION.table_id:
        direction = INGRESS
    else:
        return None
    what = f"{protocol} {port}" if port else protocol
    if names is None:
        return f"no rule allows {what} and the pod is isolated for {direction.lower()}", ()
    state = names.state
    src = state.by_ip.get(ip_src, ip_src)
    dst = state.by_ip.get(ip_dst, ip_dst)
    verdict = evaluate(state, src, dst, protocol, port)
    v = verdict.egress if direction == EGRESS else verdict.ingress
    pod = src if direction == EGRESS else dst
    who = pod if isinstance(pod, str) else pod.key
    peer = dst if direction == EGRESS else src
    peer_name = peer if isinstance(peer, str) else peer.key
    way = "to" if direction == EGRESS else "from"
    if not v.isolated_by:
        return (
            f"{who} is isolated for {direction.lower()} on the switch, but no policy in the "
            "store selects it now (the agent has not caught up, or the store changed since)",
            (),
        )
    policies = ", ".join(v.isolated_by)
    if v.allowed_by:
        return (
            f"{policies} isolate(s) {who} for {direction.lower()}; the store's "
            f"{rule_words(rule_name(v.allowed_by[0]))} allows it, but the switch has not "
            "got that rule yet (the agent has not caught up)",
            v.isolated_by,
        )
    return (
        f"{policies} isolate(s) {who} for {direction.lower()} and no rule of theirs "
        f"allows {what} {way} {peer_name}",
        v.isolated_by,
    )
