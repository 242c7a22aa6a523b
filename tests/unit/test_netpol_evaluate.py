"""The evaluator against the upstream e2e truth tables (tests/unit/netpol_e2e.py), and
what it says about why."""

from __future__ import annotations

import pytest

from netpol import model
from netpol.evaluate import RuleRef, evaluate
from netpol.state import PodAddress, PolicyState
from tests.unit.netpol_e2e import ALL, CASES, Case, ip_of, pod_label, policy


def matrix(case: Case, port: int, protocol: str) -> dict[tuple[str, str], bool]:
    state = case.state()
    pods = {p.key: p for p in state.pods}
    return {
        (f, t): evaluate(state, pods[f], pods[t], protocol, port).allowed for f in ALL for t in ALL
    }


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_upstream_truth_tables(case: Case):
    for port, protocol, reachability in case.probes:
        got = matrix(case, port, protocol)
        wrong = {k: v for k, v in got.items() if v != reachability.expected()[k]}
        assert not wrong, f"{port}/{protocol}: {len(wrong)} wrong, e.g. {sorted(wrong)[:5]}"


def _state(*policies: dict) -> PolicyState:
    return Case("", list(policies), []).state()


def _pod(state: PolicyState, key: str) -> PodAddress:
    return next(p for p in state.pods if p.key == key)


def test_the_verdict_names_the_allowing_rule_and_the_isolating_policies():
    state = _state(
        policy("deny", "x", {}, ingress=[]),
        policy(
            "from-b", "x", pod_label("a"), ingress=[{"from": [{"podSelector": pod_label("b")}]}]
        ),
    )
    xa, xb, xc = (_pod(state, k) for k in ("x/a", "x/b", "x/c"))
    allowed = evaluate(state, xb, xa, "TCP", 80)
    assert allowed.allowed and allowed.ingress.allowed_by == (RuleRef("x/from-b", "Ingress", 0),)
    assert allowed.ingress.isolated_by == ("x/deny", "x/from-b")
    denied = evaluate(state, xc, xa, "TCP", 80)
    assert not denied.allowed
    assert "isolated by x/deny, x/from-b, no rule allows" in denied.reason
    assert "no policy selects x/c" in denied.reason  # its egress


def test_an_ip_block_judges_addresses_that_are_no_pods_and_selectors_never_match_them():
    state = _state(
        policy(
            "out",
            "x",
            pod_label("a"),
            egress=[
                {"to": [{"ipBlock": {"cidr": "198.18.0.0/15", "except": ["198.18.1.0/24"]}}]},
                {"to": [{"namespaceSelector": {}}]},
            ],
        )
    )
    xa = _pod(state, "x/a")
    assert evaluate(state, xa, "198.18.0.7", "UDP", 53).allowed
    assert not evaluate(state, xa, "198.18.1.7", "UDP", 53).allowed
    assert not evaluate(state, xa, "100.127.0.1", "UDP", 53).allowed  # no pod's address
    assert evaluate(state, xa, _pod(state, "z/c"), "UDP", 53).allowed
    # An address has no policy of its own: only the pod's side is judged.
    assert evaluate(state, "198.18.1.7", xa, "TCP", 80).allowed


def test_a_named_port_resolves_on_the_destination_pod_only():
    state = _state(
        policy("named", "x", pod_label("a"), egress=[{"ports": [{"port": "serve-80-tcp"}]}])
    )
    xa = _pod(state, "x/a")
    assert evaluate(state, xa, _pod(state, "y/b"), "TCP", 80).allowed
    # serve-80-tcp is TCP: UDP to 80 is another port; an address has no named ports
    assert not evaluate(state, xa, _pod(state, "y/b"), "UDP", 80).allowed
    assert not evaluate(state, xa, "198.18.0.1", "TCP", 80).allowed


def test_a_pod_reaches_itself_whatever_isolates_it():
    state = _state(policy("deny-all", "x", {}, ingress=[], egress=[]))
    xa = _pod(state, "x/a")
    assert evaluate(state, xa, xa, "TCP", 80).allowed
    assert not evaluate(state, xa, _pod(state, "x/b"), "TCP", 80).allowed


def test_a_pod_whose_namespace_is_unknown_keeps_its_name_label():
    pod = model.parse_pod({"metadata": {"name": "a", "namespace": "w", "labels": {}}})
    target = _state().pods[0]
    state = PolicyState(
        (),
        (PodAddress(pod, "100.64.9.9"), target),
        (
            model.parse_network_policy(
                policy(
                    "from-w",
                    "x",
                    {},
                    ingress=[
                        {"from": [{"namespaceSelector": {"matchLabels": {model.NAME_LABEL: "w"}}}]}
                    ],
                )
            ),
        ),
    )
    assert evaluate(state, state.pods[0], target, "TCP", 80).allowed
    assert ip_of("x/a") == target.ip
