"""Kubernetes objects in the cluster state (store/k8s_objects.py) on both store backends
(SQLite and a real etcd): apply semantics, the Namespace name label, invalid objects never
written, a Namespace's delete taking its Pods and NetworkPolicies, and the list-watch an
agent follows."""

from __future__ import annotations

import json
import threading

import pytest

from netpol import model
from store.cluster import RecordError
from store.k8s_objects import (
    NAMESPACES,
    NETWORK_POLICIES,
    PODS,
    K8sObjects,
    decode,
    kind_named,
)
from store.kv import KeyValue


@pytest.fixture
def objects(backend) -> K8sObjects:
    return K8sObjects(backend.client())


def ns(name: str, **labels: str) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def pod(namespace: str, name: str, labels: dict | None = None, ports=()) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels or {}, "uid": "u1"},
        "spec": {
            "containers": [
                {
                    "name": "c",
                    "image": "registry.k8s.io/e2e-test-images/agnhost:2.43",
                    "ports": [{"name": n, "containerPort": p} for n, p in ports],
                }
            ],
            "nodeName": "h1",
        },
        "status": {"podIP": "100.64.0.5"},
    }


def policy(namespace: str, name: str, spec: dict) -> dict:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


DENY_ALL = {"podSelector": {}, "policyTypes": ["Ingress"]}


def test_put_says_created_configured_or_unchanged_and_unchanged_writes_nothing(objects):
    assert objects.put(policy("x", "deny-all", DENY_ALL)) == "created"
    rev = objects.kv.revision()
    assert objects.put(policy("x", "deny-all", DENY_ALL)) == "unchanged"
    assert objects.kv.revision() == rev
    allow = {"podSelector": {}, "ingress": [{}]}
    assert objects.put(policy("x", "deny-all", allow)) == "configured"
    assert objects.get(NETWORK_POLICIES, "x", "deny-all")["spec"] == allow


def test_objects_are_kept_in_kubernetes_shape_cut_to_what_policy_needs(objects):
    objects.put(pod("x", "a", {"pod": "a"}, [("serve-80-tcp", 80)]))
    stored = objects.kv.get("k8s/pods/x/a")
    assert json.loads(stored.value) == {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "a", "namespace": "x", "labels": {"pod": "a"}},
        "spec": {
            "containers": [
                {
                    "name": "c",
                    "ports": [{"name": "serve-80-tcp", "containerPort": 80, "protocol": "TCP"}],
                }
            ]
        },
    }
    assert decode(stored) == model.Pod(
        "x", "a", {"pod": "a"}, (model.ContainerPort("serve-80-tcp", 80, "TCP"),)
    )


def test_a_namespace_is_stored_with_its_name_label(objects):
    objects.put(ns("x", team="a"))
    objects.put(ns("y", **{model.NAME_LABEL: "forged"}))
    assert objects.get(NAMESPACES, None, "x")["metadata"]["labels"] == {
        "team": "a",
        model.NAME_LABEL: "x",
    }
    assert objects.get(NAMESPACES, None, "y")["metadata"]["labels"] == {model.NAME_LABEL: "y"}
    assert objects.kv.get("k8s/namespaces/x") is not None


def test_an_invalid_object_is_never_written(objects):
    rev = objects.kv.revision()
    bad = policy("x", "p", {"podSelector": {"matchLabels": {"pod": "a b"}}})
    with pytest.raises(model.PolicyError, match=r"spec\.podSelector\.matchLabels.*'a b'"):
        objects.put(bad)
    with pytest.raises(ValueError, match="apiVersion 'extensions/v1beta1'"):
        objects.put({**policy("x", "p", DENY_ALL), "apiVersion": "extensions/v1beta1"})
    with pytest.raises(ValueError, match="kind 'Service'"):
        objects.put({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}})
    assert objects.kv.revision() == rev and objects.kv.range("k8s/")[0] == []


def test_list_by_kind_and_namespace_and_delete(objects):
    for n in ("x", "y"):
        objects.put(ns(n))
        for p in ("a", "b"):
            objects.put(pod(n, p))
    assert [o["metadata"]["name"] for o in objects.list(NAMESPACES)] == ["x", "y"]
    assert [(o["metadata"]["namespace"], o["metadata"]["name"]) for o in objects.list(PODS)] == [
        ("x", "a"),
        ("x", "b"),
        ("y", "a"),
        ("y", "b"),
    ]
    assert [o["metadata"]["name"] for o in objects.list(PODS, "y")] == ["a", "b"]
    assert objects.delete(PODS, "y", "a") is True
    assert objects.delete(PODS, "y", "a") is False
    assert objects.get(PODS, "y", "a") is None


def test_deleting_a_namespace_takes_its_pods_and_policies_at_one_revision(objects):
    for n in ("x", "xx"):  # "xx" shares the prefix "x": untouched
        objects.put(ns(n))
        objects.put(pod(n, "a"))
        objects.put(policy(n, "deny-all", DENY_ALL))
    rev = objects.kv.revision()
    assert objects.delete(NAMESPACES, None, "x") is True
    events = objects.kv.events_since("k8s/", rev)
    assert {e.key for e in events} == {
        "k8s/namespaces/x",
        "k8s/pods/x/a",
        "k8s/networkpolicies/x/deny-all",
    }
    assert {e.revision for e in events} == {rev + 1}
    assert [k.key for k in objects.kv.range("k8s/")[0]] == [
        "k8s/namespaces/xx",
        "k8s/networkpolicies/xx/deny-all",
        "k8s/pods/xx/a",
    ]


def test_replace_kind_makes_the_stored_objects_exactly_the_listed_ones(objects):
    objects.put(pod("x", "a", {"v": "1"}))
    objects.put(pod("x", "b"))
    objects.put(policy("x", "keep", DENY_ALL))
    counts = objects.replace_kind(PODS, [pod("x", "a", {"v": "2"}), pod("y", "c")])
    assert counts == {"created": 1, "configured": 1, "unchanged": 0, "deleted": 1}
    assert [(o["metadata"]["namespace"], o["metadata"]["name"]) for o in objects.list(PODS)] == [
        ("x", "a"),
        ("y", "c"),
    ]
    assert objects.get(NETWORK_POLICIES, "x", "keep") is not None
    rev = objects.kv.revision()
    with pytest.raises(model.PolicyError):
        objects.replace_kind(PODS, [pod("x", "a"), pod("x", "Bad_Name")])
    assert objects.kv.revision() == rev


def test_an_agent_lists_then_watches_and_decodes_every_change(objects):
    objects.put(ns("x"))
    records, rev = objects.snapshot()
    assert [decode(r) for r in records] == [model.Namespace("x", {model.NAME_LABEL: "x"})]
    objects.put(pod("x", "a", {"pod": "a"}))
    objects.put(policy("x", "deny-all", DENY_ALL))
    objects.delete(PODS, "x", "a")
    stop = threading.Event()
    seen = []
    for batch in objects.watch(rev, stop):
        seen += [(e.type, e.key) for e in batch]
        if len(seen) >= 3:
            stop.set()
            break
    assert seen == [
        ("put", "k8s/pods/x/a"),
        ("put", "k8s/networkpolicies/x/deny-all"),
        ("delete", "k8s/pods/x/a"),
    ]


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("k8s/pods/x", "{}", "not k8s/namespaces/NAME"),
        ("k8s/pods/x/a", "{not json", "not JSON"),
        ("k8s/pods/x/a", json.dumps(ns("x")), "holds a Namespace"),
        ("k8s/pods/x/a", json.dumps(pod("x", "b")), "holds Pod x/b"),
        ("k8s/pods/x/a", json.dumps(pod("x", "a", {"k": "-"})), "metadata.labels"),
    ],
)
def test_a_broken_record_is_a_record_error_naming_its_key(key, value, message):
    with pytest.raises(RecordError, match=message):
        decode(KeyValue(key, value, 1, 1))


def test_kinds_are_named_as_kubectl_names_them():
    for name in ("networkpolicies", "networkpolicy", "netpol", "NetworkPolicy"):
        assert kind_named(name) is NETWORK_POLICIES
    assert kind_named("networkpolicies.networking.k8s.io") is NETWORK_POLICIES
    assert kind_named("po") is PODS and kind_named("ns") is NAMESPACES
    with pytest.raises(ValueError, match="'services' is not kept"):
        kind_named("services")
