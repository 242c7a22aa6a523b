"""Kubernetes objects in a lab, through the commands an operator runs: ``lab pod add --k8s``
sends kubelet's CNI_ARGS and applies the Pod (and its Namespace), ``apply -f`` changes its
labels and adds a policy, ``get`` shows them, ``pod del`` deletes the Pod object."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.helpers import CTL, run, running_lab

pytestmark = pytest.mark.lab


def ctl(*argv: str, stdin: str | None = None) -> str:
    done = run([*CTL, *argv], input=stdin)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize(
    "store", [{}, {"store": "etcd", "etcd_members": 1}], ids=["sqlite", "etcd"]
)
def test_a_lab_pod_is_a_kubernetes_pod_whose_labels_apply_changes(store):
    with running_lab(1, **store) as name:
        ctl(
            "lab",
            "pod",
            "add",
            "--lab",
            name,
            "--host",
            "h1",
            "--name",
            "a",
            "--k8s",
            "x/a",
            "--label",
            "pod=a",
            "--port",
            "serve-80-tcp:80/TCP",
        )
        pod = json.loads(ctl("get", "pod", "a", "-n", "x", "-o", "json", "--lab", name))
        assert pod["metadata"]["labels"] == {"pod": "a"}
        assert pod["spec"]["containers"][0]["ports"] == [
            {"name": "serve-80-tcp", "containerPort": 80, "protocol": "TCP"}
        ]
        [namespace] = json.loads(ctl("get", "ns", "-o", "json", "--lab", name))["items"]
        assert namespace["metadata"]["labels"] == {"kubernetes.io/metadata.name": "x"}
        [endpoint] = json.loads(ctl("endpoint", "list", "-o", "json", "--lab", name))
        assert endpoint["pod"] == "x/a"

        pod["metadata"]["labels"] = {"pod": "b"}
        policy = {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "deny-all", "namespace": "x"},
            "spec": {"podSelector": {}},
        }
        out = ctl("apply", "-f", "-", "--lab", name, stdin=yaml.safe_dump_all([pod, policy]))
        assert out.splitlines() == [
            "pod/a configured",
            "networkpolicy.networking.k8s.io/deny-all created",
        ]
        assert "pod=b" in ctl("get", "pods", "-n", "x", "--lab", name)

        ctl("lab", "pod", "del", "--lab", name, "--host", "h1", "--name", "a")
        assert json.loads(ctl("get", "pods", "-A", "-o", "json", "--lab", name))["items"] == []
        assert "deny-all" in ctl("get", "netpol", "-n", "x", "--lab", name)


def test_a_pod_object_that_is_not_valid_adds_no_pod():
    with running_lab(1) as name:
        done = run(
            [
                *CTL,
                "lab",
                "pod",
                "add",
                "--lab",
                name,
                "--host",
                "h1",
                "--name",
                "a",
                "--k8s",
                "x/a",
                "--label",
                "pod=not valid",
            ]
        )
        assert done.returncode == 1
        assert "pod x/a: metadata.labels: 'not valid' is not a valid label value" in done.stderr
        assert json.loads(ctl("endpoint", "list", "-o", "json", "--lab", name)) == []
        assert json.loads(ctl("get", "ns", "-o", "json", "--lab", name))["items"] == []
