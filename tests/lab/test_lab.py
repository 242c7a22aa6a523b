"""The lab end to end: real namespaces, real OVS daemons, real pings."""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import sys

import pytest
from pyroute2 import IPRoute

from lab import lab, naming, netns, ovs_host
from tests.helpers import host_paths, run

pytestmark = pytest.mark.lab

CTL = [sys.executable, "-m", "ctl.main"]


def namespaces_of(name: str) -> list[str]:
    return [ns for ns in netns.list_namespaces() if naming.owns_namespace(name, ns)]


def daemon_pids(status: lab.LabStatus) -> list[int]:
    return [pid for h in status.hosts for pid in h.daemons.values() if pid]


def gone(pid: int) -> bool:
    """Exited: no such process, or a zombie waiting for init to reap it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] == "Z"
    except FileNotFoundError:
        return True


def assert_nothing_left(name: str, pids: list[int]) -> None:
    assert namespaces_of(name) == []
    assert all(gone(pid) for pid in pids)
    assert not os.path.exists(os.path.join(naming.DEFAULT_STATE_ROOT, name))


def root_namespace() -> tuple:
    """Links, addresses and routes of the root namespace (read only)."""
    with IPRoute() as ipr:
        links = sorted(link.get("IFLA_IFNAME") for link in ipr.get_links())
        addrs = sorted(a.get("IFA_ADDRESS") for a in ipr.get_addr())
        routes = sorted(str(r.get("RTA_DST")) for r in ipr.get_routes())
    return links, addrs, routes


def test_three_hosts_reach_each_other_over_the_underlay_and_go_away(lab_name):
    root_before = root_namespace()
    proc = run([*CTL, "lab", "up", "--name", lab_name, "--hosts", "3"])
    assert proc.returncode == 0, proc.stderr
    assert "198.18.0.3/16" in proc.stdout and "br-int (netdev)" in proc.stdout
    status = lab.status(lab_name)
    assert len(daemon_pids(status)) == 9  # ovsdb-server, ovs-vswitchd, agent per host

    for src, dst in itertools.permutations(status.hosts, 2):
        assert lab.ping(lab_name, src.name, dst.underlay_ip), f"{src.name} -> {dst.name}"

    # 'lab exec' points plain OVS tools at that host's own daemons.
    proc = run(
        [
            *CTL,
            "lab",
            "exec",
            "--lab",
            lab_name,
            "h2",
            "--",
            "ovs-vsctl",
            "get",
            "bridge",
            "br-int",
            "datapath_type",
        ]
    )
    assert proc.stdout.strip() == "netdev"
    proc = run(
        [*CTL, "lab", "exec", "--lab", lab_name, "h2", "--", "ip", "-br", "addr", "show", "br-phy"]
    )
    assert "198.18.0.2/16" in proc.stdout

    # Nothing of the lab appeared in the root namespace.
    assert root_namespace() == root_before

    proc = run([*CTL, "lab", "down", "--name", lab_name])
    assert proc.returncode == 0, proc.stderr
    assert_nothing_left(lab_name, daemon_pids(status))

    # The name is free again.
    again = lab.up(lab_name, 2)
    assert lab.ping(lab_name, "h2", again.hosts[0].underlay_ip)
    lab.down(lab_name)
    assert_nothing_left(lab_name, daemon_pids(again))


def test_up_on_a_name_in_use_changes_nothing(lab_name):
    status = lab.up(lab_name, 1)
    before = (namespaces_of(lab_name), daemon_pids(status))
    proc = run([*CTL, "lab", "up", "--name", lab_name, "--hosts", "2"])
    assert proc.returncode == 1
    assert f"lab {lab_name} already exists" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert (namespaces_of(lab_name), daemon_pids(lab.status(lab_name))) == before


def test_a_failure_midway_tears_down_what_was_made(lab_name, monkeypatch):
    real_build = lab.build_host

    def fail_on_second(paths, index, *args):
        if index == 2:
            raise RuntimeError("injected failure on host 2")
        real_build(paths, index, *args)

    monkeypatch.setattr(lab, "build_host", fail_on_second)
    with pytest.raises(RuntimeError, match="injected"):
        lab.up(lab_name, 3)
    assert_nothing_left(lab_name, [])
    assert not any("ovs-overlay/lab/" + lab_name + "/" in _cmdline(pid) for pid in _all_pids())


def test_down_cleans_a_crashed_lab_whose_state_is_gone(lab_name):
    status = lab.up(lab_name, 2)
    pids = daemon_pids(status)
    # Crash: one vswitchd dies, and the state directory (with the pidfiles) is lost.
    ovs_host.kill_daemon(host_paths(lab_name, "h1"), "ovs-vswitchd", signal.SIGKILL)
    shutil.rmtree(os.path.join(naming.DEFAULT_STATE_ROOT, lab_name))
    assert lab_name in lab.list_labs()
    removed = lab.down(lab_name)
    assert any("namespace" in r for r in removed)
    assert_nothing_left(lab_name, pids)


def _namespaces_of_these_commands() -> list[str]:
    """The namespaces the refused commands below could have made (other labs may come and
    go meanwhile: the machine is shared)."""
    return [n for n in netns.list_namespaces() if n.startswith(("ok-", "nosuchlab-"))]


def test_bad_input_is_one_sentence_and_changes_nothing():
    before = _namespaces_of_these_commands()
    for argv, text in [
        (["lab", "up", "--name", "Bad-Name", "--hosts", "2"], "lab name 'Bad-Name' is invalid"),
        (["lab", "up", "--name", "ok", "--hosts", "0"], "host count 0 is outside"),
        (["lab", "down", "--name", "nosuchlab"], "no lab named nosuchlab"),
        (["lab", "status", "--lab", "nosuchlab"], "no lab named nosuchlab"),
        (["lab", "exec", "--lab", "nosuchlab", "h1", "--", "true"], "has no host h1"),
        (["lab", "up", "--name", "ok", "--etcd-members", "3"], "applies to --store etcd only"),
        (["lab", "up", "--name", "ok", "--store", "etcd", "--etcd-members", "8"], "outside 1..7"),
        (["lab", "up", "--name", "ok", "--host-ttl", "0"], "host TTL 0 is not"),
        (["lab", "host", "add", "--lab", "nosuchlab"], "no lab named nosuchlab"),
        (["lab", "etcd", "stop", "--lab", "nosuchlab", "etcd1"], "has no etcd"),
        (["lab", "agent", "kill", "--lab", "nosuchlab", "h1"], "has no agent on host h1"),
    ]:
        proc = run([*CTL, *argv])
        assert proc.returncode == 1, argv
        assert proc.stderr.startswith("ovs-overlayctl: ") and text in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    assert _namespaces_of_these_commands() == before


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_the_underlay_bridge_keeps_its_mac_when_ports_come_and_go(lab_name):
    """The operator's address lives on the underlay bridge: if the bridge's MAC followed its
    ports' (Linux's default), a host added with a lower port MAC would move the address to
    a new MAC behind etcd's ARP cache, and an operator's watch would stall
    (lab/netns.create_bridge)."""
    underlay = naming.underlay_namespace(lab_name)
    netns.create_namespace(underlay)
    netns.create_bridge(underlay, naming.UNDERLAY_BRIDGE)
    with netns.open_namespace(underlay) as ns:
        bridge = netns.link_index(ns, naming.UNDERLAY_BRIDGE)
        before = ns.get_links(bridge)[0].get("IFLA_ADDRESS")
        for port, mac in (("p1", "fe:ff:ff:ff:ff:fe"), ("p2", "02:00:00:00:00:00")):
            ns.link("add", ifname=port, kind="veth", address=mac, peer=f"{port}peer")
            ns.link("set", index=netns.link_index(ns, port), master=bridge, state="up")
            assert ns.get_links(bridge)[0].get("IFLA_ADDRESS") == before, port
        ns.link("del", index=netns.link_index(ns, "p2"))
        assert ns.get_links(bridge)[0].get("IFLA_ADDRESS") == before
