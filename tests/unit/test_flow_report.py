"""``ovs-overlayctl flows``' reading of ovs-ofctl's dump: cookies decoded into feature and
generation, grouped by table and feature with totals, stale and unknown flows flagged."""

from __future__ import annotations

import pytest

from ctl import flow_report as fr
from netpol.evaluate import RuleRef
from netpol.hits import rule_names
from openflow import cookies
from openflow.cookies import Feature
from tests.unit.test_policy_hits import STATE as POLICY_STATE

# As ovs-ofctl -O OpenFlow13 --names dump-flows br-int prints them (from a lab host), plus a
# flow of generation 3 and one with no feature of ours.
# ruff: noqa: E501 (the lines are as ovs-ofctl prints them)
DUMP = f"""\
 cookie=0x200000000000001, duration=10.643s, table=classifier, n_packets=5, n_bytes=406, priority=100,in_port=ovo20ab97c0ed95 actions=set_field:0x1/0xf->reg0,goto_table:"port_security"
 cookie=0x100000000000001, duration=13.461s, table=classifier, n_packets=1, n_bytes=90, priority=0 actions=drop
 cookie=0x100000000000001, duration=13.461s, table="port_security", n_packets=5, n_bytes=406, priority=0 actions=drop
 cookie=0x700000000000001, duration=8.937s, table="l2_forward", n_packets=2, n_bytes=196, priority=100,reg2=0x1/0xffff,dl_dst=0a:58:64:40:00:40 actions=set_field:198.18.0.2->tun_dst,goto_table:output
 cookie={hex(cookies.cookie(Feature.L2_REMOTE, 3))}, duration=99.1s, table="l2_forward", n_packets=7, n_bytes=700, priority=100,reg2=0x1/0xffff,dl_dst=0a:58:64:40:00:41 actions=drop
 cookie=0x0, duration=1.0s, table="l2_forward", n_packets=1, n_bytes=60, priority=10,ip actions=drop
 cookie=0xf00000000000001, duration=13.461s, table=canary, n_packets=0, n_bytes=0, priority=0 actions=drop
"""


def test_each_flow_gets_its_table_feature_generation_and_counters():
    flows = fr.parse_dump(DUMP, generation=1)
    first = flows[0]
    assert (first.table, first.table_id, first.feature, first.generation) == (
        "classifier",
        0,
        "classify_local",
        1,
    )
    assert (first.priority, first.match, first.packets, first.bytes) == (
        100,
        "in_port=ovo20ab97c0ed95",
        5,
        406,
    )
    assert first.actions.startswith("set_field:0x1/0xf->reg0")
    assert flows[1].match == "" and flows[2].table == "port_security"
    stale = [f for f in flows if f.stale]
    unknown = [f for f in flows if f.unknown]
    assert [(f.feature, f.generation) for f in stale] == [("l2_remote", 3), ("unknown", 0)]
    assert [f.cookie for f in unknown] == ["0x0"]


def test_flows_are_grouped_by_table_then_feature_with_totals():
    rep = fr.report("br-int", 1, fr.parse_dump(DUMP, 1))
    assert [t.table for t in rep.tables] == ["classifier", "port_security", "l2_forward", "canary"]
    l2 = rep.tables[2]
    assert [g.feature for g in l2.features] == ["l2_remote", "unknown"]
    assert l2.totals == fr.Totals(flows=3, packets=10, bytes=956, stale=2, unknown=1)
    assert rep.totals == fr.Totals(flows=7, packets=21, bytes=1858, stale=2, unknown=1)
    per = {f.feature: f.totals for f in rep.by_feature}
    assert per["defaults"] == fr.Totals(2, 6, 496, 0, 0)
    assert per["l2_remote"] == fr.Totals(2, 9, 896, 1, 0)


def test_filters_keep_one_table_or_one_feature():
    flows = fr.parse_dump(DUMP, 1)
    rep = fr.report("br-int", 1, flows, table=fr.table_filter("l2_forward"))
    assert [t.table for t in rep.tables] == ["l2_forward"] and rep.totals.flows == 3
    rep = fr.report("br-int", 1, flows, feature=fr.feature_filter("L2-Remote"))
    assert rep.totals.flows == 2 and rep.feature == "l2_remote"
    assert fr.feature_filter("7") == "l2_remote" and fr.table_filter("50") == "l2_forward"
    assert fr.report("br-int", 1, flows, feature="unknown").totals.flows == 1


def test_the_terminal_view_marks_stale_and_unknown_flows():
    text = "\n".join(fr.render(fr.report("br-int", 1, fr.parse_dump(DUMP, 1))))
    assert text.splitlines()[0] == (
        "br-int (generation 1): 7 flows, 21 packets, 1858 bytes; 2 stale, 1 unknown"
    )
    assert "table l2_forward (50): 3 flows, 10 packets, 956 bytes, 2 stale, 1 unknown" in text
    assert "dl_dst=0a:58:64:40:00:41 actions=drop [STALE generation 3]" in text
    assert "priority=10,ip actions=drop [UNKNOWN cookie 0x0]" in text


def test_a_bridge_no_agent_ever_ran_on_has_no_stale_flows():
    assert not any(f.stale for f in fr.parse_dump(DUMP, generation=None))


@pytest.mark.parametrize(
    ("call", "value", "message"),
    [
        (fr.feature_filter, "bogus", "feature 'bogus' is not one of defaults,"),
        (fr.table_filter, "nosuch", "table 'nosuch' is not one of classifier,"),
        (fr.table_filter, "300", "table '300' is not one of"),
    ],
)
def test_a_bad_filter_is_one_sentence_naming_the_choices(call, value, message):
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(")):
        call(value)


def test_a_line_it_cannot_read_is_an_error_not_a_guess():
    with pytest.raises(ValueError, match="cannot read"):
        fr.parse_dump(" cookie=0xzz, table=0, n_packets=1, n_bytes=1 actions=drop", 1)


def test_flows_ovs_learned_are_named_and_neither_stale_nor_unknown():
    """host_conntrack's learn adds flows with generation 0 (Feature.HOST_RETURN_LEARNED):
    the agent's, though of no generation."""
    learned = hex(cookies.cookie(Feature.HOST_RETURN_LEARNED, 0))
    line = (
        f" cookie={learned}, duration=2.1s, table=host_return, n_packets=3, n_bytes=230,"
        " idle_timeout=3600, fin_idle_timeout=10, priority=100,tcp,reg2=0x1/0xffff,"
        "nw_src=100.64.0.3,nw_dst=100.64.0.2,tp_src=80,tp_dst=40000"
        " actions=load:0xa5864400040->NXM_OF_ETH_DST[],output:2\n"
    )
    [flow] = fr.parse_dump(line, generation=7)
    assert (flow.feature, flow.stale, flow.unknown) == ("host_return_learned", False, False)


def _policy_dump() -> tuple[str, dict[int, RuleRef]]:
    """Policy flows of h1 as ovs-ofctl prints them: allow-b's two ingress rules (one a
    conjunction's action, the other pods-only), the isolation drops, a shared clause."""
    names = rule_names(POLICY_STATE)
    ids = {ref: rid for rid, ref in names.items()}
    first = hex(cookies.cookie(Feature.POLICY_RULE, 7, ids[RuleRef("x/allow-b", "Ingress", 0)]))
    second = hex(cookies.cookie(Feature.POLICY_RULE, 7, ids[RuleRef("x/allow-b", "Ingress", 1)]))
    isolation = hex(cookies.cookie(Feature.POLICY_ISOLATION, 7))
    clause = hex(cookies.cookie(Feature.POLICY_CLAUSE, 7))
    dump = f"""\
 cookie={clause}, duration=5s, table="ingress_rules", n_packets=9, n_bytes=900, priority=200,reg1=3 actions=conjunction(1,1/3)
 cookie={first}, duration=5s, table="ingress_rules", n_packets=4, n_bytes=296, priority=200,conj_id=1 actions=set_field:0x1->reg4,goto_table:"policy_commit"
 cookie={second}, duration=5s, table="ingress_rules", n_packets=2, n_bytes=148, priority=300,ip,reg1=3,nw_src=100.64.0.4 actions=set_field:0x2->reg4,goto_table:"policy_commit"
 cookie={isolation}, duration=5s, table="ingress_rules", n_packets=8, n_bytes=800, priority=400,ip,reg1=3,nw_src=100.64.0.3 actions=goto_table:"policy_commit"
 cookie={isolation}, duration=5s, table="ingress_isolation", n_packets=3, n_bytes=222, priority=100,reg1=3 actions=drop
 cookie={isolation}, duration=5s, table="ingress_isolation", n_packets=1, n_bytes=74, priority=100,reg1=4 actions=drop
"""
    return dump, names


def test_policy_rules_hits_are_summed_per_rule_as_trace_names_them():
    dump, names = _policy_dump()
    rep = fr.report("br-int", 7, fr.parse_dump(dump, 7), names=names)
    assert [(r.policy, r.direction, r.index, r.flows, r.packets) for r in rep.rules] == [
        ("x/allow-b", "Ingress", 0, 1, 4),
        ("x/allow-b", "Ingress", 1, 1, 2),
    ]
    assert [(d.direction, d.flows, d.packets, d.bytes) for d in rep.denied] == [
        ("Egress", 0, 0, 0),
        ("Ingress", 2, 4, 296),
    ]
    text = "\n".join(fr.render(rep))
    assert "rule ingress[0] of policy x/allow-b  1 flow, 4 packets, 296 bytes" in text
    assert "ingress  2 flows, 4 packets, 296 bytes" in text
    unnamed = fr.report("br-int", 7, fr.parse_dump(dump, 7))  # no policy state at hand
    assert all(r.policy is None for r in unnamed.rules)
    assert "(no rule of the store's policies now)" in "\n".join(fr.render(unnamed))


def test_the_policy_filter_keeps_that_policys_rule_flows():
    dump, names = _policy_dump()
    flows = fr.parse_dump(dump, 7)
    rep = fr.report("br-int", 7, flows, names=names, policy=fr.policy_filter("x/allow-b"))
    assert rep.totals.flows == 2 and {r.index for r in rep.rules} == {0, 1}
    assert rep.denied == ()
    none = fr.report("br-int", 7, flows, names=names, policy="x/deny")
    assert none.totals.flows == 0 and none.rules == ()
    assert "none: the policy has no rule with flows on this bridge" in "\n".join(fr.render(none))
    with pytest.raises(ValueError, match="is not NAMESPACE/NAME"):
        fr.policy_filter("allow-b")
