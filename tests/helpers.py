"""Observing a lab host from tests: the plain OVS tools (never used to configure) and the
agent's metrics."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import subprocess
import sys
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from controller import netns as thread_netns
from lab import agent_proc, lab, naming, netns
from store import open_cluster
from store.cluster import is_gateway_attachment

CTL = [sys.executable, "-m", "ctl.main"]


@contextlib.contextmanager
def running_lab(hosts: int, **options) -> Iterator[str]:
    """A lab of ``hosts`` hosts under a fresh name (``t`` + random hex), removed afterwards
    even when the test fails; yields its name."""
    if os.geteuid() != 0:
        pytest.fail("these tests create network namespaces and OVS daemons; run them as root")
    name = "t" + secrets.token_hex(3)
    try:
        lab.up(name, hosts, **options)
        yield name
    finally:
        lab.down(name)


def host_paths(lab_name: str, host: str = "h1"):
    return lab.LabPaths(naming.DEFAULT_STATE_ROOT, lab_name).host(host)


def ovs(lab_name: str, host: str, *argv: str) -> str:
    """Run an OVS tool in a lab host's namespace against its own daemons; return stdout."""
    ns = naming.host_namespace(lab_name, host)
    result = netns.run_in_namespace(ns, argv, env=host_paths(lab_name, host).env())
    return result.stdout


def add_test_bridge(lab_name: str, bridge: str, ofports, prefix: str) -> None:
    """A bridge of a test's own on h1's ovs-vswitchd (netdev, secure, OpenFlow 1.3), with an
    internal port ``PREFIX<n>`` at each OpenFlow port number ``n``."""
    ports = []
    for ofport in ofports:
        port = f"{prefix}{ofport}"
        ports += ["--", "add-port", bridge, port, "--", "set", "interface", port]
        ports += ["type=internal", f"ofport_request={ofport}"]
    ovs(
        lab_name, "h1", "ovs-vsctl", "add-br", bridge, "--", "set", "bridge", bridge,
        "datapath_type=netdev", "fail_mode=secure", "protocols=OpenFlow13", *ports,
    )  # fmt: skip


def create_network(lab_name: str, network: str, cidr: str, vni: int) -> None:
    """``ovs-overlayctl network --lab L create NETWORK --cidr CIDR --vni VNI``."""
    subprocess.run(
        [*CTL, "network", "--lab", lab_name, "create", network, "--cidr", cidr, "--vni", str(vni)],
        check=True,
    )


def rows(lab_name: str, host: str, table: str) -> list[dict]:
    """All rows of an OVSDB table, as dicts of column -> raw OVSDB JSON value."""
    out = json.loads(ovs(lab_name, host, "ovs-vsctl", "--format=json", "list", table))
    return [dict(zip(out["headings"], r, strict=True)) for r in out["data"]]


def ovs_map(value) -> dict:
    """Decode an OVSDB JSON map (["map", [[k, v], ...]])."""
    assert value[0] == "map"
    return {k: v for k, v in value[1]}


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, **kwargs)


# -- what a lab host holds for pods: counted by the CNI tests to find leaks ---------------

POD_PORT_PREFIX = "ovo"  # controller.endpoints.HOST_PORT_PREFIX: host veth ends and OVS ports
_COOKIE = re.compile(r"cookie=0x[0-9a-f]+, ")


def host_veths(lab_name: str, host: str) -> set[str]:
    """The pods' host-side veth ends (``ovo*``) in a lab host's namespace."""
    out = netns.run_in_namespace(naming.host_namespace(lab_name, host), ["ip", "-br", "link"])
    return {
        line.split()[0].split("@")[0]
        for line in out.stdout.splitlines()
        if line.startswith(POD_PORT_PREFIX)
    }


def pod_ports(lab_name: str, host: str) -> set[str]:
    """The pods' ports (``ovo*``) on a lab host's br-int."""
    out = ovs(lab_name, host, "ovs-vsctl", "list-ports", naming.INTEGRATION_BRIDGE)
    return {p for p in out.split() if p.startswith(POD_PORT_PREFIX)}


def flows(lab_name: str, host: str) -> list[str]:
    """br-int's flows, sorted, without cookies and counters: a restarted agent installs the
    same flows under a new generation's cookie, so two dumps of one state compare equal."""
    out = ovs(
        lab_name,
        host,
        "ovs-ofctl",
        "-O",
        "OpenFlow13",
        "--no-stats",
        "dump-flows",
        naming.INTEGRATION_BRIDGE,
    )
    return sorted(_COOKIE.sub("", line.strip()) for line in out.splitlines() if "actions=" in line)


def groups(lab_name: str, host: str) -> list[str]:
    """br-int's groups, sorted, each with its buckets sorted (a flood group has one bucket
    per local pod)."""
    out = ovs(
        lab_name, host, "ovs-ofctl", "-O", "OpenFlow13", "dump-groups", naming.INTEGRATION_BRIDGE
    )
    return sorted(
        ",bucket=".join([head, *sorted(buckets)])
        for head, *buckets in (
            line.strip().split(",bucket=") for line in out.splitlines() if "group_id=" in line
        )
    )


def store_pods(lab_name: str, network: str = naming.DEFAULT_NETWORK) -> tuple[dict, list]:
    """The cluster state's address allocations (address -> attachment) and endpoint records
    of ``network``'s pods: the hosts' own gateway addresses are left out."""
    cluster = open_cluster(lab.LabPaths(naming.DEFAULT_STATE_ROOT, lab_name).store_url)
    try:
        allocations = {
            ip: att
            for ip, att in cluster.allocations(network).items()
            if not is_gateway_attachment(att)
        }
        return allocations, cluster.list_endpoints(network)
    finally:
        cluster.close()


def scrape(name: str, host: str) -> dict[tuple, float]:
    """The host agent's metrics, fetched over the host namespace's own loopback."""
    url = f"http://127.0.0.1:{agent_proc.METRICS_PORT}/metrics"
    with (
        thread_netns.in_namespace(naming.host_namespace(name, host)),
        urllib.request.urlopen(url, timeout=10) as r,
    ):
        text = r.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
