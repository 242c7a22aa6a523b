"""Parsing Kubernetes objects for policy: what the API server would refuse is refused
with the object, the field path and the value; defaults are the API server's."""

from __future__ import annotations

import pytest

from netpol import model


def policy(spec: dict, name: str = "p", namespace: str = "x") -> dict:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def test_policy_types_default_as_the_api_server_sets_them():
    only_ingress = model.parse_network_policy(policy({"podSelector": {}}))
    assert only_ingress.policy_types == {"Ingress"}
    with_egress = model.parse_network_policy(policy({"podSelector": {}, "egress": [{}]}))
    assert with_egress.policy_types == {"Ingress", "Egress"}
    explicit = model.parse_network_policy(policy({"podSelector": {}, "policyTypes": ["Egress"]}))
    assert explicit.policy_types == {"Egress"} and explicit.egress == ()


def test_a_namespace_carries_its_name_label():
    ns = model.parse_namespace({"metadata": {"name": "x", "labels": {"team": "a"}}})
    assert ns.labels == {"team": "a", model.NAME_LABEL: "x"}


def test_peers_ports_and_named_container_ports_parse():
    p = model.parse_network_policy(
        policy(
            {
                "podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [
                    {
                        "from": [
                            {"podSelector": {}, "namespaceSelector": {"matchLabels": {"ns": "y"}}},
                            {"ipBlock": {"cidr": "100.64.0.0/16", "except": ["100.64.1.0/24"]}},
                        ],
                        "ports": [
                            {"port": "serve-80"},
                            {"port": 81, "endPort": 90, "protocol": "UDP"},
                        ],
                    }
                ],
            }
        )
    )
    (rule,) = p.ingress
    assert rule.peers[0].pod_selector == model.LabelSelector()
    assert rule.peers[1].ip_block == model.IPBlock("100.64.0.0/16", ("100.64.1.0/24",))
    assert rule.ports == (model.PolicyPort("TCP", "serve-80"), model.PolicyPort("UDP", 81, 90))
    pod = model.parse_pod(
        {
            "metadata": {"name": "a", "namespace": "x", "labels": {"pod": "a"}},
            "spec": {"containers": [{"ports": [{"name": "serve-80", "containerPort": 80}]}]},
        }
    )
    assert pod.ports == (model.ContainerPort("serve-80", 80, "TCP"),)


@pytest.mark.parametrize(
    "spec,words",
    [
        ({}, "spec.podSelector is required"),
        ({"podSelector": {}, "ingress": [{"from": [{}]}]}, "spec.ingress[0].from[0]: give"),
        (
            {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]},
            "spec.ingress[0].from[0].ipBlock.cidr: '10.0.0.0/33' is not a CIDR",
        ),
        (
            {
                "podSelector": {},
                "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/8"]}}]}],
            },
            "spec.egress[0].to[0].ipBlock.except[0]: 11.0.0.0/8 is not strictly within",
        ),
        (
            {"podSelector": {}, "ingress": [{"ports": [{"port": 0}]}]},
            "spec.ingress[0].ports[0].port: 0",
        ),
        (
            {"podSelector": {}, "ingress": [{"ports": [{"port": "http", "endPort": 90}]}]},
            "endPort: needs a numeric port",
        ),
        (
            {"podSelector": {}, "ingress": [{"ports": [{"port": 90, "endPort": 80}]}]},
            "endPort: 80 is below port 90",
        ),
        (
            {"podSelector": {}, "ingress": [{"ports": [{"protocol": "ICMP"}]}]},
            "'ICMP' is not one of TCP, UDP, SCTP",
        ),
        (
            {"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}},
            "In needs at least one value",
        ),
        (
            {"podSelector": {"matchExpressions": [{"key": "a", "operator": "Has"}]}},
            "'Has' is not one of",
        ),
        ({"podSelector": {"matchLabels": {"a b": "c"}}}, "'a b' is not a valid label key"),
        ({"podSelector": {}, "policyTypes": ["Both"]}, "spec.policyTypes[0]: 'Both'"),
    ],
)
def test_what_the_api_server_refuses_is_refused_naming_field_and_value(spec, words):
    with pytest.raises(model.PolicyError, match="^networkpolicy x/p: ") as err:
        model.parse_network_policy(policy(spec))
    assert words in str(err.value)


def test_selectors_match_as_kubernetes_does():
    sel = model.LabelSelector(
        (("app", "web"),),
        (
            model.Requirement("tier", "In", ("a", "b")),
            model.Requirement("old", "DoesNotExist"),
            model.Requirement("env", "NotIn", ("prod",)),
        ),
    )
    assert sel.matches({"app": "web", "tier": "a"})
    assert not sel.matches({"app": "web", "tier": "c"})
    assert not sel.matches({"app": "web", "tier": "a", "old": ""})
    assert not sel.matches({"app": "web", "tier": "a", "env": "prod"})
    assert model.LabelSelector().matches({})
