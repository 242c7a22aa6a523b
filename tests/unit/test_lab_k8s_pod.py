"""The Pod object a lab pod stands for (``lab pod add --k8s NS/NAME --label --port``):
built from the options and checked as the API server checks it, before any side effect."""

from __future__ import annotations

import pytest

from lab import pods
from lab.lab import LabError
from netpol import model
from store.k8s_objects import decode, encode
from store.kv import KeyValue


def test_the_options_make_a_pod_with_labels_and_named_ports():
    obj = pods.k8s_pod_object("x/a", ["pod=a", "tier="], ["serve-80-udp:80/udp"])
    assert decode(KeyValue("k8s/pods/x/a", encode(obj), 1, 1)) == model.Pod(
        "x", "a", {"pod": "a", "tier": ""}, (model.ContainerPort("serve-80-udp", 80, "UDP"),)
    )


@pytest.mark.parametrize(
    "labels, ports, error, message",
    [
        (["pod"], [], LabError, "label 'pod' is not KEY=VALUE"),
        (["pod=a b"], [], model.PolicyError, "metadata.labels: 'a b' is not a valid label value"),
        ([], ["80/TCP"], LabError, "port '80/TCP' is not NAME:PORT/PROTO"),
        ([], ["web:0/TCP"], model.PolicyError, "containerPort: 0 is not a port number"),
        ([], ["web:80/ICMP"], model.PolicyError, "protocol: 'ICMP' is not one of"),
    ],
)
def test_a_bad_label_or_port_is_refused_naming_it(labels, ports, error, message):
    with pytest.raises(error, match=message):
        pods.k8s_pod_object("x/a", labels, ports)


def test_labels_without_a_kubernetes_name_are_refused_before_anything_is_made():
    with pytest.raises(LabError, match="give --k8s NAMESPACE/NAME"):
        pods.pod_add("no-such-lab", "h1", "a", labels=["pod=a"])
