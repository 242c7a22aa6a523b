"""``ovs-overlayctl apply|delete -f`` and ``get``: kubectl's verbs on the stored Kubernetes
objects, multi-document files validated whole before any write."""

from __future__ import annotations

import io
import json

import pytest
import yaml

from ctl.main import main
from store import open_kv
from store.k8s_objects import NAMESPACES, NETWORK_POLICIES, PODS, K8sObjects

MANIFEST = """\
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {team: a}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec:
  podSelector: {matchExpressions: [{key: pod, operator: In, values: [a, b]}]}
  policyTypes: [Ingress]
---
# a pod in the default namespace (none named)
apiVersion: v1
kind: Pod
metadata: {name: a, labels: {pod: a}}
spec: {containers: [{name: c, image: agnhost, ports: [{name: serve-80, containerPort: 80}]}]}
"""


@pytest.fixture
def url(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/cluster.db"


@pytest.fixture
def objects(url):
    kv = open_kv(url)
    yield K8sObjects(kv)
    kv.close()


def ctl(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def write(tmp_path, text: str) -> str:
    path = tmp_path / "objects.yaml"
    path.write_text(text)
    return str(path)


def test_apply_prints_what_each_object_became_as_kubectl_does(capsys, tmp_path, url, objects):
    path = write(tmp_path, MANIFEST)
    code, out, _ = ctl(capsys, "apply", "-f", path, "--store", url)
    assert code == 0
    assert out.splitlines() == [
        "namespace/x created",
        "networkpolicy.networking.k8s.io/deny-all created",
        "pod/a created",
    ]
    assert ctl(capsys, "apply", "-f", path, "--store", url)[1].splitlines() == [
        "namespace/x unchanged",
        "networkpolicy.networking.k8s.io/deny-all unchanged",
        "pod/a unchanged",
    ]
    code, out, _ = ctl(
        capsys,
        "apply",
        "-f",
        write(tmp_path, MANIFEST.replace("pod: a}", "pod: z}")),
        "--store",
        url,
    )
    assert out.splitlines()[2] == "pod/a configured"
    assert objects.get(PODS, "default", "a")["metadata"]["labels"] == {"pod": "z"}
    assert objects.get(NAMESPACES, None, "x")["metadata"]["labels"]["kubernetes.io/metadata.name"]


def test_apply_reads_standard_input(capsys, url, objects, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(MANIFEST))
    code, out, _ = ctl(capsys, "apply", "-f", "-", "--store", url, "-n", "default")
    assert code != 0  # the policy names namespace x, -n says default: refused, nothing written
    assert objects.list(NAMESPACES) == []
    monkeypatch.setattr("sys.stdin", io.StringIO(MANIFEST))
    assert ctl(capsys, "apply", "-f", "-", "--store", url)[0] == 0
    assert objects.get(NETWORK_POLICIES, "x", "deny-all") is not None


@pytest.mark.parametrize(
    "broken, message",
    [
        (
            ("values: [a, b]", "values: [a, 'b c']"),
            "document 2: networkpolicy x/deny-all: spec.podSelector.matchExpressions[0].values: "
            "'b c' is not a valid label value for pod",
        ),
        (
            ("containerPort: 80", "containerPort: 70000"),
            "document 3: pod default/a: spec.containers[0].ports[0].containerPort: 70000 is not",
        ),
        (
            ("networking.k8s.io/v1", "extensions/v1beta1"),
            "document 2 (NetworkPolicy deny-all): apiVersion 'extensions/v1beta1' is not "
            "networking.k8s.io/v1",
        ),
        (("kind: Pod", "kind: Service"), "document 3 (Service a): kind 'Service' is not one of"),
        (("name: deny-all", "labels: {}"), "document 2 (networkpolicy): metadata.name is required"),
        (("policyTypes: [Ingress]", "policyTypes: [In"), "is not valid YAML at line"),
    ],
)
def test_one_invalid_document_applies_nothing_and_is_named(
    capsys, tmp_path, url, objects, broken, message
):
    path = write(tmp_path, MANIFEST.replace(*broken))
    code, out, err = ctl(capsys, "apply", "-f", path, "--store", url)
    assert code == 1 and out == ""
    assert message in err and len(err.strip().splitlines()) == 1
    assert objects.kv.range("k8s/")[0] == []


def test_delete_removes_what_the_file_names_and_says_what_was_missing(
    capsys, tmp_path, url, objects
):
    path = write(tmp_path, MANIFEST)
    ctl(capsys, "apply", "-f", path, "--store", url)
    code, out, err = ctl(capsys, "delete", "-f", path, "--store", url)
    assert code == 0, err
    assert sorted(out.splitlines()) == [
        "namespace/x deleted",
        "networkpolicy.networking.k8s.io/deny-all deleted",
        "pod/a deleted",
    ]
    assert objects.kv.range("k8s/")[0] == []
    code, out, err = ctl(capsys, "delete", "-f", path, "--store", url)
    assert code == 1 and "pod/a not found in namespace default" in err
    assert ctl(capsys, "delete", "-f", path, "--store", url, "--ignore-not-found")[0] == 0


def test_get_shows_tables_and_objects_in_yaml_or_json(capsys, tmp_path, url):
    ctl(capsys, "apply", "-f", write(tmp_path, MANIFEST), "--store", url)
    code, out, _ = ctl(capsys, "get", "netpol", "-n", "x", "--store", url)
    assert out.splitlines() == ["NAME       POD-SELECTOR", "deny-all   pod in (a,b)"]
    code, out, _ = ctl(capsys, "get", "pods", "-A", "--store", url)
    assert out.splitlines()[1].split() == ["default", "a", "pod=a"]
    assert ctl(capsys, "get", "po", "-n", "x", "--store", url)[2].startswith("No resources found")
    code, out, _ = ctl(
        capsys, "get", "networkpolicy", "deny-all", "-n", "x", "-o", "yaml", "--store", url
    )
    assert yaml.safe_load(out)["spec"]["policyTypes"] == ["Ingress"]
    code, out, _ = ctl(capsys, "get", "namespaces", "-o", "json", "--store", url)
    listed = json.loads(out)
    assert listed["kind"] == "List"
    assert [o["metadata"]["labels"] for o in listed["items"]] == [
        {"team": "a", "kubernetes.io/metadata.name": "x"}
    ]
    code, _, err = ctl(capsys, "get", "netpol", "nope", "-n", "x", "--store", url)
    assert code == 1 and "networkpolicy.networking.k8s.io/nope is not stored in namespace x" in err
    code, _, err = ctl(capsys, "get", "services", "--store", url)
    assert code == 1 and "kind 'services' is not kept" in err
