"""``ovs-overlayctl trace`` on a real 2-host lab: its verdicts agree with ping, and a drop
names its host, table and reason (forged source, across networks, VXLAN from a
non-peer)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ctl.status_report import from_json
from ctl.trace_commands import TraceReport
from lab import lab, naming, pods
from tests.helpers import create_network, running_lab

pytestmark = pytest.mark.lab

CTL = [sys.executable, "-m", "ctl.main"]


@pytest.fixture(scope="module")
def two_hosts():
    with running_lab(2) as name:
        made = {k: pods.pod_add(name, *k.split("/")) for k in ("h1/p1", "h2/p1")}
        create_network(name, "blue", "100.64.0.0/16", 5002)
        for key in ("h1/b1", "h1/b2", "h1/b3"):  # blue reuses default's addresses: one is free
            made[key] = pods.pod_add(name, *key.split("/"), network="blue")
        yield name, made


def trace(name: str, *argv: str) -> TraceReport:
    proc = subprocess.run(
        [*CTL, "trace", "--lab", name, *argv, "-o", "json"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    return from_json(TraceReport, json.loads(proc.stdout), where="trace")


def pod_ns(name: str, key: str) -> str:
    return pods.pod_namespace(name, *key.split("/"))


def test_pod_to_remote_pod_is_delivered_through_named_tables(two_hosts):
    name, made = two_hosts
    r = trace(name, "--from", "h1/p1", "--to", "h2/p1")
    assert (r.verdict, r.delivered_to, r.drop) == ("delivered", "pod h2/p1", None)
    path = [(s.host, s.table) for s in r.steps]
    assert path[:4] == [
        ("h1", "classifier"),
        ("h1", "port_security"),
        ("h1", "arp_responder"),
        ("h1", "l2_forward"),
    ]
    assert ("h2", "classifier") in path and path[-1] == ("h2", "output")
    l2 = next(s for s in r.steps if s.table == "l2_forward")
    assert "to h2 198.18.0.2 over vxlan, VNI 5001" in l2.explained
    assert f"{made['h1/p1']['ip']} is h1/p1's own address" in r.steps[1].matched
    assert lab.ping_from(pod_ns(name, "h1/p1"), made["h2/p1"]["ip"])


def test_a_forged_source_is_dropped_in_port_security(two_hosts):
    name, made = two_hosts
    r = trace(name, "--from", "h1/p1", "--to", "h2/p1", "--src-ip", "100.64.0.99")
    assert r.verdict == "dropped"
    assert (r.drop.host, r.drop.table) == ("h1", "port_security")
    assert r.drop.reason == "100.64.0.99 is not h1/p1's address"
    r = trace(name, "--from", "h1/p1", "--to", "h2/p1", "--src-mac", "0a:58:64:40:ee:ee")
    assert (r.verdict, r.drop.table) == ("dropped", "port_security")
    # ping from a forged address fails the same way
    done = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            pod_ns(name, "h1/p1"),
            "ip",
            "addr",
            "add",
            "100.64.0.99/32",
            "dev",
            "eth0",
        ],
        check=True,
    )
    assert done.returncode == 0
    try:
        ok = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                pod_ns(name, "h1/p1"),
                "ping",
                "-c",
                "1",
                "-W",
                "2",
                "-I",
                "100.64.0.99",
                made["h2/p1"]["ip"],
            ],
            capture_output=True,
        )
        assert ok.returncode != 0
    finally:
        subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                pod_ns(name, "h1/p1"),
                "ip",
                "addr",
                "del",
                "100.64.0.99/32",
                "dev",
                "eth0",
            ],
            check=True,
        )


def test_across_networks_is_dropped_and_ping_fails(two_hosts):
    name, made = two_hosts
    with lab.open_lab_cluster(name) as cluster:
        taken = {e.ip for e in cluster.list_endpoints("default")}
        taken |= {g.ip for h in cluster.list_hosts() for g in h.gateways}
    blue = next(k for k in ("h1/b1", "h1/b2", "h1/b3") if made[k]["ip"] not in taken)
    r = trace(name, "--from", "h1/p1", "--to", blue)
    assert r.verdict == "dropped"
    assert (r.drop.host, r.drop.table) == ("h1", "l2_forward")
    assert "is not known in network default" in r.drop.reason
    assert not lab.ping_from(pod_ns(name, "h1/p1"), made[blue]["ip"])


def test_vxlan_from_a_non_peer_is_dropped_in_the_classifier(two_hosts):
    name, _ = two_hosts
    r = trace(name, "--from", "198.18.0.99", "--to", "h1/p1")
    assert (r.verdict, r.drop.host, r.drop.table) == ("dropped", "h1", "classifier")
    assert r.drop.reason == "VXLAN from 198.18.0.99, not a peer"


def test_node_to_remote_pod_and_pod_to_outside_are_delivered(two_hosts):
    name, made = two_hosts
    r = trace(name, "--from", "h1", "--to", "h2/p1")
    assert (r.verdict, r.delivered_to) == ("delivered", "pod h2/p1")
    assert lab.ping_from(naming.host_namespace(name, "h1"), made["h2/p1"]["ip"])
    r = trace(name, "--from", "h1/p1", "--to", naming.EXT_IP, "--proto", "udp", "--dport", "53")
    assert (r.verdict, r.delivered_to) == ("delivered-to-host", "h1 (node)")
    assert any("nftables" in n for n in r.notes)
    assert lab.ping_from(pod_ns(name, "h1/p1"), naming.EXT_IP)


def test_an_unknown_pod_is_one_sentence(two_hosts):
    name, _ = two_hosts
    proc = subprocess.run(
        [*CTL, "trace", "--lab", name, "--from", "h1/nope", "--to", "h2/p1"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert len(proc.stderr.strip().splitlines()) == 1 and "no pod h1/nope" in proc.stderr
