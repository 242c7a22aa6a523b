"""A lab whose hosts share state through a real 3-member etcd (Debian's etcd-server) in
namespaces of their own: pods across hosts, a host joining, an etcd member killed, an
agent killed past its host's TTL and brought back; and the root namespace untouched."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time

import pytest

from controller.endpoints import host_port_name
from lab import etcd_members, lab, naming, netns, pods
from lab.lab import LabError
from tests.helpers import host_veths, pod_ports, run, scrape
from tests.lab.test_lab import assert_nothing_left, gone, root_namespace
from tests.lab.test_restarts import loss, start_ping

pytestmark = pytest.mark.lab

CTL = [sys.executable, "-m", "ctl.main"]
HOST_TTL = 3
# How long a condition that follows from the TTL may take to show: the TTL, the agents'
# watch, one refresh; generous for a loaded 2-core machine (this waits, it asserts no speed).
SETTLE = HOST_TTL + 15
# A bound that proves a CNI ADD without a store quorum fails rather than hangs; how fast it
# fails is measured (printed here, recorded in docs/operations.md), not asserted.
ADD_RETURNS_WITHIN = 15.0


def ctl_json(*argv: str) -> list[dict]:
    proc = run([*CTL, *argv, "-o", "json"])
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def wait_for(condition, what: str, timeout: float = SETTLE) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout:.0f}s: {what}"
        time.sleep(0.2)


def flows_toward(name: str, host: str, tunnel_ip: str) -> list[str]:
    return [f for f in lab.dump_flows(name, host) if tunnel_ip in f]


@pytest.fixture(scope="module")
def etcd_lab():
    """3 etcd members, 4 hosts, host TTL 3 s, built through the CLI; a pod on each host."""
    if os.geteuid() != 0:
        pytest.fail("these tests create network namespaces and etcd members; run them as root")
    name = "t" + os.urandom(3).hex()
    root_before = root_namespace()
    try:
        proc = run(
            [
                *CTL,
                "lab",
                "up",
                "--name",
                name,
                "--hosts",
                "4",
                "--store",
                "etcd",
                "--etcd-members",
                "3",
                "--host-ttl",
                str(HOST_TTL),
            ]  # fmt: skip
        )
        assert proc.returncode == 0, proc.stderr
        assert "store etcd://198.18.1.1:2379,198.18.1.2:2379,198.18.1.3:2379" in proc.stdout
        ips = {h: pods.pod_add(name, h, "p1")["ip"] for h in ("h1", "h2", "h3", "h4")}
        yield name, ips
    finally:
        removed = lab.down(name)
    assert any(line.startswith("process etcd pid") for line in removed)
    assert root_namespace() == root_before  # no address, route or link in the root namespace


def test_agents_share_the_etcd_store_and_pods_reach_each_other(etcd_lab):
    name, ips = etcd_lab
    with open(os.path.join(naming.DEFAULT_STATE_ROOT, name, "hosts", "h1", "agent.conf")) as f:
        conf = f.read()
    assert "store = etcd://198.18.1.1:2379,198.18.1.2:2379,198.18.1.3:2379" in conf
    assert f"host_ttl = {HOST_TTL}" in conf
    for src in ips:
        for dst in ips:
            if src != dst:
                assert lab.ping_from(pods.pod_namespace(name, src, "p1"), ips[dst]), (src, dst)
    # The CLI reads the same store from the root namespace, through the lab's operator
    # namespace.
    hosts = ctl_json("host", "list", "--lab", name)
    assert [(h["name"], h["alive"], h["tunnel_ip"], h["endpoints"]) for h in hosts] == [
        ("h1", True, "198.18.0.1", 1),
        ("h2", True, "198.18.0.2", 1),
        ("h3", True, "198.18.0.3", 1),
        ("h4", True, "198.18.0.4", 1),
    ]
    assert all(0 <= h["lease_left"] <= HOST_TTL for h in hosts)  # renewed by each agent
    endpoints = ctl_json("endpoint", "list", "--lab", name, "--host", "h2")
    assert [e["ip"] for e in endpoints] == [ips["h2"]]
    with lab.open_lab_cluster(name) as cluster:
        assert sorted(h.name for h in cluster.list_hosts()) == ["h1", "h2", "h3", "h4"]


def test_a_host_added_to_the_running_lab_reaches_the_others(etcd_lab):
    name, ips = etcd_lab
    proc = run([*CTL, "lab", "host", "add", "--lab", name])
    assert proc.returncode == 0, proc.stderr
    assert "added h5" in proc.stdout
    others = list(ips)
    ips["h5"] = pods.pod_add(name, "h5", "p1")["ip"]
    for other in others:
        assert lab.ping_from(pods.pod_namespace(name, "h5", "p1"), ips[other]), other
        assert lab.ping_from(pods.pod_namespace(name, other, "p1"), ips["h5"]), other


def test_the_leader_killed_under_a_100_per_second_ping_loses_nothing_and_pods_still_start(
    etcd_lab,
):
    name, ips = etcd_lab
    victim = etcd_members.leader(name, 3)
    assert victim is not None
    ping = start_ping(pods.pod_namespace(name, "h2", "p1"), ips["h1"], 300)
    proc = run([*CTL, "lab", "etcd", "stop", "--lab", name, f"etcd{victim}"])  # SIGKILL
    assert proc.returncode == 0, proc.stderr
    assert lab.status(name).etcd[victim - 1].pid is None
    try:
        ip = pods.pod_add(name, "h1", "p2")["ip"]
        assert lab.ping_from(pods.pod_namespace(name, "h2", "p1"), ip)
    finally:
        proc = run([*CTL, "lab", "etcd", "start", "--lab", name, f"etcd{victim}"])  # rejoins
        assert proc.returncode == 0, proc.stderr
    assert loss(ping) == (300, 300)
    assert etcd_members.health(name, victim)
    pods.pod_del(name, "h1", "p2")


def test_a_killed_agent_drops_out_after_the_ttl_and_comes_back_with_its_addresses(etcd_lab):
    """kill -9 h3's agent: after the TTL no other host has a flow toward h3; its agent
    back: h3's pod is reachable from every host again, at the same address."""
    name, ips = etcd_lab
    h3_ip = naming.underlay_ip(3)
    others = [h for h in ips if h != "h3"]
    for other in others:
        assert flows_toward(name, other, h3_ip), other  # the tunnel toward h3 is there to lose
    proc = run([*CTL, "lab", "agent", "kill", "--lab", name, "h3"])
    assert proc.returncode == 0, proc.stderr
    for other in others:
        wait_for(lambda o=other: not flows_toward(name, o, h3_ip), f"{other} drops h3's flows")
    hosts = {h["name"]: h for h in ctl_json("host", "list", "--lab", name)}
    assert hosts["h3"]["alive"] is False and hosts["h3"]["endpoints"] == 1
    assert hosts["h3"]["lease_left"] is None
    assert all(hosts[h]["alive"] for h in others)

    proc = run([*CTL, "lab", "agent", "start", "--lab", name, "h3"])
    assert proc.returncode == 0, proc.stderr
    for other in others:
        wait_for(lambda o=other: flows_toward(name, o, h3_ip), f"{other} has flows toward h3")
        assert lab.ping_from(pods.pod_namespace(name, other, "p1"), ips["h3"]), other
    endpoints = ctl_json("endpoint", "list", "--lab", name, "--host", "h3")
    assert [e["ip"] for e in endpoints] == [ips["h3"]]


def test_host_remove_is_refused_for_a_live_host(etcd_lab):
    name, _ = etcd_lab
    proc = run([*CTL, "host", "remove", "h1", "--lab", name])
    assert proc.returncode == 1
    assert "host h1 is alive" in proc.stderr


# Last on the shared lab: a store outage for every agent.


def test_every_member_restarted_leaves_existing_traffic_untouched(etcd_lab):
    name, ips = etcd_lab
    ping = start_ping(pods.pod_namespace(name, "h2", "p1"), ips["h1"], 300)
    proc = run([*CTL, "lab", "etcd", "restart", "--lab", name, "etcd1", "etcd2", "etcd3"])
    assert proc.returncode == 0, proc.stderr
    assert loss(ping) == (300, 300)


def test_after_every_member_restarted_pods_start_with_no_duplicate_address(etcd_lab):
    name, ips = etcd_lab
    ip = pods.pod_add(name, "h2", "p3")["ip"]  # the agents are back on the store
    assert lab.ping_from(pods.pod_namespace(name, "h1", "p1"), ip)
    assert lab.ping_from(pods.pod_namespace(name, "h2", "p1"), ips["h1"])  # the ping resumes
    addresses = [e["ip"] for e in ctl_json("endpoint", "list", "--lab", name)]
    assert len(addresses) == len(set(addresses)) and ip in addresses
    pods.pod_del(name, "h2", "p3")


def store_traces(name: str, attachment: str) -> dict[str, list[str]]:
    """Every record the store holds for ``attachment`` in the default network: its address
    (both keys), endpoint records and MAC claims, on any host."""
    network = naming.DEFAULT_NETWORK
    with lab.open_lab_cluster(name) as cluster:
        return {
            "address": [ip for ip, a in cluster.allocations(network).items() if a == attachment],
            "attachment": [
                kv.key for kv in [cluster.kv.get(f"attachments/{network}/{attachment}")] if kv
            ],
            "endpoint": [
                f"{e.host}/{e.ip}"
                for e in cluster.list_endpoints(network)
                if e.attachment == attachment
            ],
            "mac": [
                kv.key
                for kv in cluster.kv.range(f"macs/{network}/")[0]
                if json.loads(kv.value).get("attachment") == attachment
            ],
        }


def test_quorum_lost_keeps_traffic_fails_add_fast_with_code_11_and_leaves_nothing(etcd_lab):
    """Two of three members killed: a 100/s ping across hosts loses nothing; a CNI ADD
    fails with code 11 naming the store, promptly, and leaves no port, veth or record
    (once the store is back and the agent has served another request); a DEL meanwhile
    removes the port and veth, fails with 11, and its store records go with the agent's
    next request; the members back, every host's new pod reaches the others and no
    address is given twice."""
    name, ips = etcd_lab
    hosts = sorted(ips)
    paths = lab.LabPaths(naming.DEFAULT_STATE_ROOT, name)
    deleted = pods.pod_namespace(name, "h1", "d1")
    pods.pod_add(name, "h1", "d1")
    # Keep the leader: it is the member that has accepted writes last, so the outage
    # starts with a leader that still believes it leads until it misses its quorum.
    survivor = etcd_members.leader(name, 3)
    assert survivor is not None
    victims = [f"etcd{k}" for k in (1, 2, 3) if k != survivor]
    ping = start_ping(pods.pod_namespace(name, "h2", "p1"), ips["h1"], 2000)
    proc = run([*CTL, "lab", "etcd", "stop", "--lab", name, *victims])  # SIGKILL
    assert proc.returncode == 0, proc.stderr
    failed = [pods.pod_namespace(name, "h1", "q1"), pods.pod_namespace(name, "h1", "q2")]
    try:
        started = time.monotonic()
        proc = run(
            [*CTL, "lab", "pod", "add", "--lab", name, "--host", "h1", "--name", "q1"],
            timeout=ADD_RETURNS_WITHIN,
        )
        took = time.monotonic() - started
        print(f"\nlab pod add right after the quorum was lost failed after {took:.2f} s")
        assert proc.returncode == 1
        assert "CNI ADD of pod" in proc.stderr and "(CNI error 11)" in proc.stderr
        assert "the cluster store did not answer" in proc.stderr
        assert "198.18.1.1:2379,198.18.1.2:2379,198.18.1.3:2379" in proc.stderr
        # The plugin alone, as a runtime runs it, once the survivor knows it has no leader.
        netns.create_namespace(failed[1])
        try:
            started = time.monotonic()
            rc, out = pods.cni_exec(paths, "h1", "ADD", failed[1])
            print(f"CNI ADD (the plugin) without a quorum: {time.monotonic() - started:.2f} s")
        finally:
            netns.delete_namespace(failed[1])
        assert rc == 1 and out["code"] == 11, out
        assert "etcdserver: no leader" in out["msg"]
        # A DEL meanwhile: the port and veth go, the store records wait for the store.
        with pytest.raises(LabError, match=r"CNI DEL of pod .* failed \(CNI error 11\)"):
            pods.pod_del(name, "h1", "d1")
        assert host_port_name(deleted, pods.POD_IFNAME) not in pod_ports(name, "h1")
        assert ping.poll() is None  # still pinging: the outage is inside the ping
    finally:
        proc = run([*CTL, "lab", "etcd", "start", "--lab", name, *victims])  # waits: healthy
        assert proc.returncode == 0, proc.stderr
    assert ping.poll() is None
    assert loss(ping) == (2000, 2000)

    # The store back, h1's agent removes the store records the DEL left without waiting
    # for another request (endpoints.py, keep_store_clean).
    empty = {"address": [], "attachment": [], "endpoint": [], "mac": []}
    gone_by = time.monotonic() + 30
    while store_traces(name, f"{deleted}/{pods.POD_IFNAME}") != empty:
        assert time.monotonic() < gone_by, store_traces(name, f"{deleted}/{pods.POD_IFNAME}")
        time.sleep(0.2)
    # h1's metrics saw it: the outage and the store back, the ADDs and the DEL refused
    # with 11 because the store did not answer.
    seen = scrape(name, "h1")
    assert seen[("ovs_overlay_store_outages_total", ())] >= 1
    assert seen[("ovs_overlay_store_reconnects_total", ())] >= 1
    assert seen[("ovs_overlay_store_up", ())] == 1
    refused = (("code", "11"), ("command", "ADD"), ("reason", "store_unavailable"))
    assert seen[("ovs_overlay_refused_requests_total", refused)] >= 2
    assert (
        seen[("ovs_overlay_cni_request_seconds_count", (("command", "DEL"), ("result", "11")))] == 1
    )
    # A new pod on each host, attached through the store that is back.
    new = {h: pods.pod_add(name, h, "q3")["ip"] for h in hosts}
    for ns in [*failed, deleted]:
        assert host_port_name(ns, pods.POD_IFNAME) not in pod_ports(name, "h1")
        assert host_port_name(ns, pods.POD_IFNAME) not in host_veths(name, "h1")
        assert store_traces(name, f"{ns}/{pods.POD_IFNAME}") == {
            "address": [],
            "attachment": [],
            "endpoint": [],
            "mac": [],
        }, ns
    assert not any(netns.namespace_exists(ns) for ns in failed)
    pods.pod_del(name, "h1", "d1")  # the runtime's retry: everything is gone already
    for src in hosts:
        for dst in hosts:
            if src != dst:
                assert lab.ping_from(pods.pod_namespace(name, src, "q3"), new[dst]), (src, dst)
    endpoints = ctl_json("endpoint", "list", "--lab", name)
    addresses = [e["ip"] for e in endpoints]
    assert len(addresses) == len(set(addresses)) and set(new.values()) <= set(addresses)
    with lab.open_lab_cluster(name) as cluster:
        held = cluster.allocations(naming.DEFAULT_NETWORK)
    assert len(set(held.values())) == len(held)  # no attachment holds two addresses
    for h in hosts:
        pods.pod_del(name, h, "q3")


def test_down_removes_the_members_of_a_lab_whose_state_is_gone(lab_name):
    lab.up(lab_name, 1, agents=False, store="etcd", etcd_members=1)
    pid = lab.status(lab_name).etcd[0].pid
    assert pid is not None and etcd_members.health(lab_name, 1)
    shutil.rmtree(os.path.join(naming.DEFAULT_STATE_ROOT, lab_name))  # a crash lost it all
    lab.down(lab_name)  # from the namespaces' names alone
    assert gone(pid)
    assert_nothing_left(lab_name, [pid])
    assert not any(ns.startswith(f"{lab_name}-") for ns in netns.list_namespaces())
