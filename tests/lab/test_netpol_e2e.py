"""NetworkPolicy on the upstream e2e model (tests/lab/reachability.py): namespaces x, y, z;
pods a, b, c in each, spread over three hosts, every pod serving TCP and UDP on ports 80
and 81; each case compares the full 9x9 matrix on every probed port and protocol with
upstream's expectation."""

from __future__ import annotations

import itertools

import pytest

from lab import pods
from tests.helpers import CTL, run, running_lab
from tests.lab import reachability as r

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
                name, host, f"{ns}{pod}", k8s=f"{ns}/{pod}", labels=[f"pod={pod}"], ports=ports
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
