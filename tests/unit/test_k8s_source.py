"""The Kubernetes source (controller/k8s_source.py) without an API server: real API objects,
as a kube-apiserver sends them (status, managedFields, defaults), turned into the client's
models by the client's own deserializer (Watch.unmarshal_event, the code a live watch
runs), then translated and written to a real store; watch streams recorded as the API
server writes them (one JSON event per line, bookmarks, 410 Gone) replayed through the
event handling and the list-watch loop."""

from __future__ import annotations

import copy
import json
import threading

import pytest
from kubernetes import watch

from controller import k8s_source
from controller.k8s_source import Gone, KindMirror, follow, translate
from netpol import model
from store.k8s_objects import NAMESPACES, NETWORK_POLICIES, PODS, K8sObjects, decode


def deserialize(obj: dict, klass: str):
    """``obj`` as the client's model ``klass``, by the client's watch deserializer."""
    line = json.dumps({"type": "ADDED", "object": obj})
    return watch.Watch().unmarshal_event(line, klass)["object"]


def api_pod(namespace: str, name: str, labels: dict, rv: str, phase: str = "Running") -> dict:
    """A Pod as GET /api/v1/namespaces/NS/pods/NAME returns it (agnhost, as the e2e uses)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": "7b4f3b9e-1c1e-4d4b-9a63-1f0e8d3c9a10",
            "resourceVersion": rv,
            "creationTimestamp": "2026-12-01T10:00:00Z",
            "labels": labels,
            "managedFields": [
                {
                    "manager": "e2e.test",
                    "operation": "Update",
                    "apiVersion": "v1",
                    "time": "2026-12-01T10:00:00Z",
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:metadata": {"f:labels": {}}},
                }
            ],
        },
        "spec": {
            "containers": [
                {
                    "name": "cont-80-tcp",
                    "image": "registry.k8s.io/e2e-test-images/agnhost:2.53",
                    "command": ["/agnhost", "serve-hostname", "--tcp", "--port", "80"],
                    "ports": [{"name": "serve-80-tcp", "containerPort": 80, "protocol": "TCP"}],
                    "resources": {},
                    "terminationMessagePath": "/dev/termination-log",
                    "terminationMessagePolicy": "File",
                    "imagePullPolicy": "IfNotPresent",
                },
                {
                    "name": "cont-81-udp",
                    "image": "registry.k8s.io/e2e-test-images/agnhost:2.53",
                    "ports": [{"name": "serve-81-udp", "containerPort": 81, "protocol": "UDP"}],
                },
            ],
            "restartPolicy": "Always",
            "dnsPolicy": "ClusterFirst",
            "nodeName": "node-2",
            "serviceAccountName": "default",
            "schedulerName": "default-scheduler",
            "tolerations": [
                {
                    "key": "node.kubernetes.io/not-ready",
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "tolerationSeconds": 300,
                }
            ],
        },
        "status": {
            "phase": phase,
            "hostIP": "10.0.0.22",
            "podIP": "100.64.1.7",
            "podIPs": [{"ip": "100.64.1.7"}],
            "startTime": "2026-12-01T10:00:00Z",
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": None}],
        },
    }


def api_namespace(name: str, rv: str, **labels: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": name,
            "uid": "0d1c2b3a-4e5f-6a7b-8c9d-0e1f2a3b4c5d",
            "resourceVersion": rv,
            "creationTimestamp": "2026-12-01T09:59:00Z",
            "labels": {"kubernetes.io/metadata.name": name, **labels},
        },
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    }


def api_policy(namespace: str, name: str, rv: str) -> dict:
    """A NetworkPolicy as the API server returns it, its defaults filled in."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": "5a5b5c5d-0000-4000-8000-000000000001",
            "resourceVersion": rv,
            "generation": 1,
            "creationTimestamp": "2026-12-01T10:01:00Z",
        },
        "spec": {
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [
                {
                    "from": [
                        {
                            "namespaceSelector": {"matchLabels": {"ns": "y"}},
                            "podSelector": {
                                "matchExpressions": [
                                    {"key": "pod", "operator": "In", "values": ["b", "c"]}
                                ]
                            },
                        },
                        {"ipBlock": {"cidr": "100.64.0.0/10", "except": ["100.64.2.0/24"]}},
                    ],
                    "ports": [{"protocol": "TCP", "port": "serve-80-tcp"}],
                }
            ],
            "policyTypes": ["Ingress"],
        },
    }


@pytest.fixture
def objects(backend) -> K8sObjects:
    return K8sObjects(backend.client())


def test_a_real_pod_is_stored_with_only_what_policy_needs_in_kubernetes_shape():
    pod = deserialize(api_pod("x", "a", {"pod": "a"}, "100"), "V1Pod")
    assert type(pod).__name__ == "V1Pod" and pod.status.pod_ip == "100.64.1.7"
    assert translate(PODS, pod) == {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "a", "namespace": "x", "labels": {"pod": "a"}},
        "spec": {
            "containers": [
                {
                    "name": "cont-80-tcp",
                    "ports": [{"name": "serve-80-tcp", "containerPort": 80, "protocol": "TCP"}],
                },
                {
                    "name": "cont-81-udp",
                    "ports": [{"name": "serve-81-udp", "containerPort": 81, "protocol": "UDP"}],
                },
            ]
        },
    }


def test_real_namespaces_and_policies_translate_to_what_the_model_reads():
    ns = translate(NAMESPACES, deserialize(api_namespace("y", "7", ns="y"), "V1Namespace"))
    assert model.parse_namespace(ns) == model.Namespace(
        "y", {"kubernetes.io/metadata.name": "y", "ns": "y"}
    )
    raw = api_policy("x", "allow-b", "9")
    stored = translate(NETWORK_POLICIES, deserialize(raw, "V1NetworkPolicy"))
    assert stored["spec"] == raw["spec"]
    assert model.parse_network_policy(stored) == model.parse_network_policy(raw)


def test_list_items_without_kind_get_their_kind():
    listed = deserialize(
        {
            "apiVersion": "v1",
            "kind": "PodList",
            "metadata": {"resourceVersion": "120"},
            "items": [{k: v for k, v in api_pod("x", "a", {}, "100").items() if k != "kind"}],
        },
        "V1PodList",
    )
    assert translate(PODS, listed.items[0])["kind"] == "Pod"


def lines(*events: tuple[str, dict]) -> list[str]:
    """A recorded watch stream: one JSON event per line, as the API server writes it."""
    return [json.dumps({"type": t, "object": o}) for t, o in events]


GONE = {
    "kind": "Status",
    "apiVersion": "v1",
    "metadata": {},
    "status": "Failure",
    "message": "too old resource version: 100 (250)",
    "reason": "Expired",
    "code": 410,
}


def replay(mirror: KindMirror, recorded: list[str], klass: str) -> list:
    w = watch.Watch()
    return [mirror.on_event(w.unmarshal_event(line, klass)) for line in recorded]


def test_watch_events_create_change_and_delete_and_resume_where_they_left_off(objects):
    mirror = KindMirror(objects, PODS)
    mirror.relist([], "100")
    a1 = api_pod("x", "a", {"pod": "a"}, "101", phase="Pending")
    a2 = api_pod("x", "a", {"pod": "a"}, "102")  # a status change only
    a3 = api_pod("x", "a", {"pod": "z"}, "103")  # a label change
    bookmark = {"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": "150"}}
    outcomes = replay(
        mirror,
        lines(
            ("ADDED", a1),
            ("MODIFIED", a2),
            ("MODIFIED", a3),
            ("ADDED", api_pod("x", "b", {}, "104")),
            ("DELETED", api_pod("x", "b", {}, "105")),
            ("BOOKMARK", bookmark),
        ),
        "V1Pod",
    )
    assert outcomes == ["created", "unchanged", "configured", "created", "deleted", None]
    assert mirror.resource_version == "150"
    [record] = objects.kv.range("k8s/pods/")[0]
    assert decode(record).labels == {"pod": "z"}


def test_a_410_gone_event_asks_for_a_new_list(objects):
    mirror = KindMirror(objects, PODS)
    with pytest.raises(Gone, match="too old resource version"):
        replay(mirror, lines(("ERROR", GONE)), "V1Pod")


def test_a_refused_object_is_logged_and_the_rest_goes_on(objects, caplog):
    mirror = KindMirror(objects, NETWORK_POLICIES)
    good = api_policy("x", "good", "1")
    bad = copy.deepcopy(good)
    bad["metadata"]["name"] = "bad"
    bad["spec"]["ingress"][0]["ports"][0]["port"] = "Not_A_Port_Name"
    assert mirror.relist([deserialize(good, "V1NetworkPolicy")], "1")["created"] == 1
    outcomes = replay(mirror, lines(("ADDED", bad), ("MODIFIED", good)), "V1NetworkPolicy")
    assert outcomes == ["refused", "unchanged"]
    assert "networkpolicy x/bad" in caplog.text and "'Not_A_Port_Name'" in caplog.text
    assert [kv.key for kv in objects.kv.range("k8s/")[0]] == ["k8s/networkpolicies/x/good"]


def test_a_relist_deletes_what_went_away_while_no_watch_ran(objects):
    mirror = KindMirror(objects, NAMESPACES)
    mirror.relist([deserialize(api_namespace(n, "5"), "V1Namespace") for n in "xy"], "5")
    counts = mirror.relist([deserialize(api_namespace("y", "5", team="a"), "V1Namespace")], "9")
    assert counts == {"created": 0, "configured": 1, "unchanged": 0, "deleted": 1}
    assert mirror.resource_version == "9"
    assert [o["metadata"]["name"] for o in objects.list(NAMESPACES)] == ["y"]


def test_the_loop_lists_watches_and_lists_again_after_gone(objects):
    """follow() on a recorded session: list at 100, two events, the watch expires (410),
    list again at 300 (one pod went away meanwhile), an event, then stop."""
    pods = {
        "a": deserialize(api_pod("x", "a", {"pod": "a"}, "90"), "V1Pod"),
        "b": deserialize(api_pod("x", "b", {"pod": "b"}, "91"), "V1Pod"),
    }
    lists = iter([([pods["a"], pods["b"]], "100"), ([pods["a"]], "300")])
    sessions = iter(
        [
            lines(("MODIFIED", api_pod("x", "a", {"pod": "a2"}, "101")), ("ERROR", GONE)),
            lines(("ADDED", api_pod("x", "c", {}, "301"))),
        ]
    )
    stop = threading.Event()
    watched_from = []

    def watch_call(resource_version: str):
        watched_from.append(resource_version)
        w = watch.Watch()
        recorded = next(sessions)
        for i, line in enumerate(recorded):
            if i == len(recorded) - 1 and len(watched_from) == 2:
                stop.set()  # the last event of the recording
            yield w.unmarshal_event(line, "V1Pod")

    follow(KindMirror(objects, PODS), lambda: next(lists), watch_call, stop)
    assert watched_from == ["100", "300"]
    stored = {o["metadata"]["name"]: o["metadata"].get("labels") for o in objects.list(PODS)}
    # The relist at 300 restored a's listed labels and removed b; c came by the watch.
    assert stored == {"a": {"pod": "a"}, "c": None}


def test_the_resources_watched_are_the_three_kinds():
    assert [r.kind for r in k8s_source.RESOURCES] == [NAMESPACES, PODS, NETWORK_POLICIES]


def test_the_store_is_named_once_and_an_agent_config_without_one_is_refused(tmp_path):
    parse = k8s_source.build_parser().parse_args
    with pytest.raises(ValueError, match="exactly one of --store URL and --agent-config"):
        k8s_source.store_url_from(parse([]))
    conf = tmp_path / "agent.conf"
    conf.write_text("[agent]\ntunnel_type = vxlan\n")
    with pytest.raises(ValueError, match="has no \\[agent\\] store; give --store URL"):
        k8s_source.store_url_from(parse(["--agent-config", str(conf)]))
    conf.write_text("[agent]\nstore = etcd://10.0.0.1:2379?cacert=/a%20b/ca.crt\n")
    assert k8s_source.store_url_from(parse(["--agent-config", str(conf)])).endswith("%20b/ca.crt")
