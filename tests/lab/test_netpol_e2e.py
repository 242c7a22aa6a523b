"""NetworkPolicy on the upstream e2e model (tests/lab/reachability.py): namespaces x, y, z;
pods a, b, c in each, spread over three hosts, every pod serving TCP and UDP on ports 80
and 81; each case compares the full 9x9 matrix on every probed port and protocol with
upstream's expectation.  The cases are upstream's, as data (tests/unit/netpol_e2e.py: the
same the compiler's simulator tests run), applied here with ``ovs-overlayctl apply``; the
pods have the addresses the cases' ipBlocks name.  SCTP is not probed: the userspace
datapath's conntrack does not track it (docs/pipeline.md)."""

from __future__ import annotations

import itertools
import json
import time

import pytest

from ctl import policy_commands
from lab import pods
from lab.lab import dump_flows, open_lab_cluster
from store.policy_records import read_policy_state
from tests.helpers import CTL, run, running_lab, scrape
from tests.lab import reachability as r
from tests.unit import netpol_e2e as e2e

pytestmark = pytest.mark.lab

HOSTS = ("h1", "h2", "h3")


@pytest.fixture(scope="module")
def model():
    """The lab and its nine pods (x/a on h1, x/b on h2, ... round-robin) as upstream makes
    them: namespaces labelled ns=NAME, pods labelled pod=NAME with named container ports
    serve-PORT-PROTO; servers running."""
    with running_lab(len(HOSTS)) as name:
        namespaces = "".join(
            f"---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n"
            f"  labels:\n    ns: {ns}\n"
            for ns in r.NAMESPACES
        )
        done = run([*CTL, "apply", "--lab", name, "-f", "-"], input=namespaces)
        assert done.returncode == 0, done.stderr
        ports = [
            f"serve-{port}-{proto.lower()}:{port}/{proto}"
            for port in r.PORTS
            for proto in r.PROTOCOLS
        ]
        made = []
        pairs = itertools.product(r.NAMESPACES, r.POD_NAMES)
        for i, (ns, pod) in enumerate(pairs):
            host = HOSTS[i % len(HOSTS)]
            att = pods.pod_add(
                name,
                host,
                f"{ns}{pod}",
                k8s=f"{ns}/{pod}",
                labels=[f"pod={pod}"],
                ports=ports,
                ip=e2e.ip_of(f"{ns}/{pod}"),  # the addresses the cases' ipBlocks name
            )
            made.append(
                r.ModelPod(ns, pod, pods.pod_namespace(name, host, f"{ns}{pod}"), att["ip"])
            )
        servers = r.start_servers(made)
        try:
            yield name, made
        finally:
            r.stop_servers(servers)


@pytest.mark.parametrize("port,protocol", list(itertools.product(r.PORTS, r.PROTOCOLS)))
def test_without_policies_every_pod_reaches_every_pod(model, port, protocol):
    _, made = model
    got = r.probe(made, port, protocol)
    assert not r.differences(got, r.expect_all(made)), r.differences(got, r.expect_all(made))


ENFORCED_WITHIN = 15.0  # waits for every host's agent; the time itself is bench/policy.py's


def apply(lab: str, objects: list[dict], verb: str = "apply") -> None:
    if not objects:
        return
    docs = "".join(f"---\n{json.dumps(o)}\n" for o in objects)
    done = run([*CTL, verb, "--lab", lab, "-f", "-"], input=docs)
    assert done.returncode == 0, done.stderr


def as_policy(p: dict) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", **p}


def namespace(name: str, labels: dict) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def pod(key: str, labels: dict | None) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", **e2e.pod_object(key, labels)}


def until(made, port: int, protocol: str, want: dict) -> list[str]:
    """Probe until the matrix is ``want`` or the wait is over; the last differences."""
    started = time.monotonic()
    deadline = started + ENFORCED_WITHIN
    rounds = 0
    while True:
        rounds += 1
        wrong = r.differences(r.probe(made, port, protocol), want)
        if not wrong or time.monotonic() > deadline:
            print(f"{port}/{protocol}: {rounds} rounds, {time.monotonic() - started:.1f} s")
            return wrong


# A broad spread of upstream's cases (every kind the issue names); the rest run through the
# compiled flows in the simulator (tests/unit/test_netpol_compile.py).
LAB_CASES = [
    "default-deny-ingress",
    "default-deny-all",
    "PodSelector or NamespaceSelector",
    "PodSelector and NamespaceSelector",
    "NamespaceSelector with MatchExpressions",
    "Ports, UDP",
    "multiple, stacked policies with overlapping podSelectors",
    "ingress access from namespace on one named port",
    "egress access on one named port",
    "ingress access from updated namespace (after the label)",
    "deny ingress access to updated pod (after the label)",
    "except clause while egress access to server in CIDR block",
    "an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed (after the update)",
    "denying of egress traffic on the client side (even if the server allows it)",
    "endPort range 80-81",
]
CASES = {c.name: c for c in e2e.CASES}


@pytest.mark.parametrize("name", LAB_CASES)
def test_upstream_case_by_real_connections(model, name):
    lab, made = model
    case = CASES[name]
    relabelled = [namespace(ns, labels) for ns, labels in case.namespace_labels.items()]
    relabelled += [pod(key, labels) for key, labels in case.pod_labels.items()]
    policies = [as_policy(p) for p in case.policies]
    apply(lab, relabelled + policies)
    try:
        for port, protocol, reach in case.probes:
            if protocol == "SCTP":
                continue
            wrong = until(made, port, protocol, reach.expected())
            assert not wrong, f"{name}, {port}/{protocol}:\n" + "\n".join(wrong) + _egress(lab)
    finally:  # back to the model: no policy, upstream's labels, every pod reaching every pod
        if policies:
            apply(lab, policies, "delete")
        apply(
            lab,
            [namespace(ns, {"ns": ns}) for ns in case.namespace_labels]
            + [pod(key, None) for key in case.pod_labels],
        )
        assert not until(made, 80, "TCP", r.expect_all(made)), "the model did not come back"


def _egress(lab_name: str) -> str:
    """Each host's egress policy flows, for a failure's message: what the switches held
    when a connection went where the model says it must not."""
    out = []
    for host in HOSTS:
        flows = [f for f in dump_flows(lab_name, host) if "table=egress_" in f]
        out += [f"\n{host}:"] + flows
    return "\n".join(out)


# -- the tools: policy check and trace on the same model ---------------------------------

DENY_X = as_policy(e2e.policy("deny", "x", {}, ingress=[]))
ALLOW_B_80 = as_policy(
    e2e.policy(
        "allow-b",
        "x",
        e2e.pod_label("a"),
        ingress=[{"from": [{"podSelector": e2e.pod_label("b")}], "ports": [{"port": 80}]}],
    )
)


def delete(lab: str, objects: list[dict]) -> None:
    docs = "".join(f"---\n{json.dumps(o)}\n" for o in objects)
    done = run([*CTL, "delete", "--ignore-not-found", "--lab", lab, "-f", "-"], input=docs)
    assert done.returncode == 0, done.stderr


def ctl_json(*argv: str) -> tuple[int, dict]:
    done = run([*CTL, *argv, "-o", "json"])
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)


def test_policy_check_agrees_with_real_connections(model):
    """Every pair of the 9x9 matrix: the model's answer (the store read as the agents read
    it) is what a real connection does; the command answers by its exit status."""
    lab, made = model
    apply(lab, [DENY_X, ALLOW_B_80])
    try:
        for port in r.PORTS:
            want = {
                (f, t): check(lab, f, t, port).allowed
                for f, t in itertools.product(e2e.ALL, e2e.ALL)
            }
            assert not until(made, port, "TCP", want), f"{port}/TCP: the matrix is not the model's"
            assert want[("x/b", "x/a")] == (port == 80) and not want[("x/c", "x/a")]
        for host in HOSTS:  # enforced everywhere: every agent holds both policies
            _, status = ctl_json("status", "--lab", lab, "--host", host)
            assert status["agent"]["counts"]["policies"] == 2, status["agent"]
            assert status["cluster"]["policies"] == 2
        code, allowed = ctl_json(
            "policy", "check", "--lab", lab, "--from", "x/b", "--to", "x/a", "--port", "80/TCP"
        )
        assert code == 0 and allowed["ingress"]["allowed_by"] == [
            {"policy": "x/allow-b", "direction": "Ingress", "index": 0}
        ]
        code, denied = ctl_json(
            "policy", "check", "--lab", lab, "--from", "x/b", "--to", "x/a", "--port", "81/TCP"
        )
        assert code == 1 and denied["ingress"]["isolated_by"] == ["x/allow-b", "x/deny"]
    finally:
        delete(lab, [DENY_X, ALLOW_B_80])
        assert not until(made, 80, "TCP", r.expect_all(made)), "the model did not come back"


def check(lab: str, src: str, dst: str, port: int):
    with open_lab_cluster(lab) as cluster:
        state, _ = read_policy_state(cluster.kv, "default")
    return policy_commands.check(state, src, dst, "TCP", port)


def test_trace_names_the_isolating_policy_and_then_the_allowing_rule(model):
    lab, made = model
    argv = ("trace", "--lab", lab, "--from", "x/b", "--to", "x/a", "--proto", "tcp")
    apply(lab, [DENY_X])
    try:
        pairs = itertools.product(e2e.ALL, e2e.ALL)
        want = {(f, t): not t.startswith("x/") or f == t for f, t in pairs}  # x isolated
        assert not until(made, 80, "TCP", want), "default deny ingress is not enforced"
        _, dropped = ctl_json(*argv, "--dport", "80")
        assert dropped["verdict"] == "dropped", dropped
        assert dropped["drop"]["table"] == "ingress_isolation"
        assert dropped["drop"]["isolated_by"] == ["x/deny"]
        assert "x/deny isolate(s) x/a for ingress" in dropped["drop"]["reason"]
        apply(lab, [ALLOW_B_80])
        want[("x/b", "x/a")] = True
        assert not until(made, 80, "TCP", want), "the allow rule is not enforced"
        _, delivered = ctl_json(*argv, "--dport", "80")
        assert delivered["verdict"] == "delivered", delivered
        rules = [(s["host"], s["table"], s["rule"]) for s in delivered["steps"] if s["rule"]]
        x_a_host = HOSTS[e2e.ALL.index("x/a") % len(HOSTS)]
        assert rules == [
            (x_a_host, "ingress_rules", {"policy": "x/allow-b", "direction": "Ingress", "index": 0})
        ]
        text = run([*CTL, *argv, "--dport", "80"]).stdout
        assert "allowed by rule ingress[0] of policy x/allow-b" in text
    finally:
        delete(lab, [DENY_X, ALLOW_B_80])
        assert not until(made, 80, "TCP", r.expect_all(made)), "the model did not come back"


# -- hits per rule: ovs-overlayctl flows and the agents' metrics ---------------------------

ROUNDS = 3


def rule_hits(lab: str, host: str) -> tuple[dict, dict[tuple, float]]:
    """x/allow-b's rules as ``flows --policy`` sums them on ``host``, and its metrics."""
    _, rep = ctl_json("flows", "--lab", lab, "--host", host, "--policy", "x/allow-b")
    rules = {(r["direction"], r["index"]): r for r in rep["rules"]}
    return rules, scrape(lab, host)


RULE = "ovs_overlay_policy_rule_packets_total"
DENIED = "ovs_overlay_policy_denied_packets_total"
ALLOW_B_INGRESS_0 = (("direction", "ingress"), ("namespace", "x"), ("policy", "allow-b"))


def test_a_rules_hits_rise_with_the_connections_it_allows(model):
    """x/b -> x/a on 80 passes x/allow-b's ingress[0] on x/a's host, one new connection a
    round; x/a -> x/b is dropped on x/b's host by x/deny's isolation (no rule).  Both
    `flows` and the agents' metrics count them."""
    lab, made = model
    by_key = {p.key: p for p in made}
    a_host = HOSTS[e2e.ALL.index("x/a") % len(HOSTS)]
    b_host = HOSTS[e2e.ALL.index("x/b") % len(HOSTS)]
    apply(lab, [DENY_X, ALLOW_B_80])
    try:
        pairs = itertools.product(e2e.ALL, e2e.ALL)
        want = {
            (f, t): not t.startswith("x/") or f == t or (f, t) == ("x/b", "x/a") for f, t in pairs
        }
        assert not until(made, 80, "TCP", want), "x/allow-b is not enforced"
        rules, metrics_a = rule_hits(lab, a_host)
        assert set(rules) == {("Ingress", 0)}, rules
        before = rules[("Ingress", 0)]["packets"]
        assert metrics_a[(RULE, (*ALLOW_B_INGRESS_0, ("rule", "0")))] == before
        denied_before = scrape(lab, b_host)[(DENIED, (("direction", "ingress"),))]
        for _ in range(ROUNDS):
            got = r.probe([by_key["x/b"], by_key["x/a"]], 80, "TCP")
            assert got[("x/b", "x/a")] and not got[("x/a", "x/b")], got
        rules, metrics_a = rule_hits(lab, a_host)
        after = rules[("Ingress", 0)]["packets"]
        assert after >= before + ROUNDS, (before, after)
        assert metrics_a[(RULE, (*ALLOW_B_INGRESS_0, ("rule", "0")))] >= before + ROUNDS
        denied_after = scrape(lab, b_host)[(DENIED, (("direction", "ingress"),))]
        assert denied_after >= denied_before + ROUNDS, (denied_before, denied_after)
        text = run([*CTL, "flows", "--lab", lab, "--host", a_host, "--policy", "x/allow-b"]).stdout
        assert "rule ingress[0] of policy x/allow-b" in text
    finally:
        delete(lab, [DENY_X, ALLOW_B_80])
        assert not until(made, 80, "TCP", r.expect_all(made)), "the model did not come back"
