"""NetworkPolicy in a trace, on real ofproto/trace outputs saved from a 2-host lab
(tests/unit/data/trace/policy_*.txt: h1 with x/a 100.64.0.3 on port 3 and x/c
100.64.0.4 on port 4, h2 with x/b 100.64.0.65; policies x/deny (every pod of x isolated
for ingress), x/allow-b (x/a from x/b on port 80), x/no-out (x/c isolated for egress)).
The rule a flow's cookie names is mapped back with rule_ids over the same state."""

from __future__ import annotations

import dataclasses
import json
import pathlib

from ctl import trace_explain, trace_policy
from ctl.policy_commands import RuleName
from ctl.status_report import from_json
from ctl.trace_commands import Drop, TraceReport, render
from ctl.trace_explain import Directory, HostView
from ctl.trace_parse import parse
from ctl.trace_policy import PolicyNames
from netpol import model
from netpol.state import from_records
from store.cluster import Endpoint, Host, HostGateway, Network
from tests.unit.netpol_e2e import pod_label, pod_object, policy

DATA = pathlib.Path(__file__).parent / "data" / "trace"
IPS = {"x/a": "100.64.0.3", "x/b": "100.64.0.65", "x/c": "100.64.0.4"}
POLICIES = (
    policy("deny", "x", {}, ingress=[]),
    policy(
        "allow-b",
        "x",
        pod_label("a"),
        ingress=[{"from": [{"podSelector": pod_label("b")}], "ports": [{"port": 80}]}],
    ),
    policy("no-out", "x", pod_label("c"), egress=[]),
)
STATE = from_records(  # as the store is read: sorted by key
    [
        model.parse_namespace({"metadata": {"name": "x"}}),
        *(model.parse_pod(pod_object(k)) for k in IPS),
        *(model.parse_network_policy(p) for p in POLICIES),
    ],
    [(k, ip, 1) for k, ip in IPS.items()],
)
NAMES = PolicyNames.of(STATE)
D = Directory(
    hosts=(
        Host("h1", "198.18.0.1", 1, (HostGateway("default", "100.64.0.2", "0a:58:64:40:00:02"),)),
        Host("h2", "198.18.0.2", 2, (HostGateway("default", "100.64.0.64", "0a:58:64:40:00:40"),)),
    ),
    networks=(Network("default", 5001, "100.64.0.0/16", index=1),),
    endpoints=tuple(
        Endpoint("default", h, f"L-{k}/eth0", mac, IPS[k], f"L-{k}", "eth0", k)
        for k, h, mac in (
            ("x/a", "h1", "0a:58:64:40:00:03"),
            ("x/c", "h1", "0a:58:64:40:00:04"),
            ("x/b", "h2", "0a:58:64:40:00:41"),
        )
    ),
)
H1 = HostView(
    "h1",
    {1: "tun-vxlan", 2: "overlay-gw0", 3: "aport", 4: "cport"},
    {"tun-vxlan": "the tunnel port", "aport": "pod x/a", "cport": "pod x/c"},
    "vxlan",
)


def steps(name: str, names: PolicyNames | None = NAMES):
    return [trace_explain.explain(s, H1, D, "default", names) for p in passes(name) for s in p]


def passes(name: str):
    return [p.steps for p in parse((DATA / f"{name}.txt").read_text())]


def test_the_rule_that_allowed_is_named_from_its_flows_cookie():
    got = steps("policy_ingress_allowed")
    [allowed] = [s for s in got if s.rule is not None]
    assert (allowed.host, allowed.table) == ("h1", "ingress_rules")
    assert allowed.rule == RuleName("x/allow-b", "Ingress", 0)
    assert allowed.explained.startswith("allowed by rule ingress[0] of policy x/allow-b")
    [state] = [s for s in got if s.table == "policy_state"]
    assert state.explained.startswith("a new connection: judged by the rules")


def test_a_rule_the_store_no_longer_has_is_said_so():
    without = STATE.policies[1:]  # x/allow-b is gone
    other = PolicyNames.of(dataclasses.replace(STATE, policies=without))
    [step] = [s for s in steps("policy_ingress_allowed", other) if s.table == "ingress_rules"]
    assert step.rule is None and "no rule of the policies in the store now" in step.explained


def test_an_ingress_isolation_drop_names_the_policies_that_isolate():
    *_, last = passes("policy_ingress_isolated")[-1]
    assert trace_explain.table_name(last.table_id) == "ingress_isolation"
    reason, isolated = trace_policy.isolation_drop(
        last.table_id, NAMES, IPS["x/b"], IPS["x/a"], "TCP", 81
    )
    assert isolated == ("x/allow-b", "x/deny")
    assert reason == (
        "x/allow-b, x/deny isolate(s) x/a for ingress and no rule of theirs allows TCP 81 from x/b"
    )


def test_an_egress_isolation_drop_names_the_policy_of_the_source():
    *_, last = passes("policy_egress_isolated")[-1]
    assert trace_explain.table_name(last.table_id) == "egress_isolation"
    reason, isolated = trace_policy.isolation_drop(
        last.table_id, NAMES, IPS["x/c"], IPS["x/a"], "UDP", 80
    )
    assert isolated == ("x/no-out",)
    assert reason.endswith("isolate(s) x/c for egress and no rule of theirs allows UDP 80 to x/a")


def test_a_drop_elsewhere_is_not_policys():
    assert trace_policy.isolation_drop(10, NAMES, IPS["x/b"], IPS["x/a"], "TCP", 80) is None


def test_the_json_report_with_policy_fields_round_trips_and_reads_for_people():
    got = tuple(steps("policy_ingress_allowed"))
    report = TraceReport("x/b", "x/a", "in_port=...", (), got, "delivered", "pod x/a", None)
    value = json.loads(json.dumps(dataclasses.asdict(report)))
    assert from_json(TraceReport, value, where="trace") == report
    assert "  policy: h1 ingress_rules: allowed by rule ingress[0] of policy x/allow-b" in render(
        report
    )
    drop = Drop("h1", "ingress_isolation", "why", ("x/allow-b", "x/deny"))
    report = dataclasses.replace(report, verdict="dropped", delivered_to=None, drop=drop)
    value = json.loads(json.dumps(dataclasses.asdict(report)))
    assert from_json(TraceReport, value, where="trace").drop.isolated_by == drop.isolated_by
