"""Debian's dockerd (docker.io 20.10) on lab hosts, as ``lab docker`` runs it.

Each host's dockerd runs in the host's network namespace and a mount namespace of its own
(lab/docker.py, lab/docker_ns.py): private roots, socket and plugin discovery, no bridge,
no iptables.  These tests run it for real: containers start, the machine's own namespace
and file system stay untouched, and stop, kill and ``lab down`` leave nothing behind.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from lab import docker, lab, naming, netns, ovs_host, pods
from store import docker_records, open_cluster
from tests.helpers import create_network, host_paths, pod_ports, running_lab, store_pods

pytestmark = pytest.mark.lab

HOSTS = ("h1", "h2")
# What dockerd 20.10 writes outside its roots when nothing stops it (lab/docker_ns.py).
MACHINE_PATHS = ("/etc/docker/key.json", "/opt/containerd", "/run/docker", "/var/lib/docker")


@pytest.fixture(scope="module")
def docker_lab():
    if os.geteuid() != 0:
        pytest.fail("this test creates network namespaces, OVS daemons and containers: run as root")
    missing = [p for p in (docker.DOCKERD, docker.DOCKER, "/usr/bin/runc") if not os.path.exists(p)]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}; ./quickstart.sh installs docker.io")
    there = {p for p in MACHINE_PATHS if os.path.lexists(p)}
    with running_lab(2) as name:
        for host in HOSTS:
            docker.control(name, host, "start")
        yield name
    # Everything dockerd wrote was in the lab, and lab down took it away.
    assert {p for p in MACHINE_PATHS if os.path.lexists(p)} == there


def paths(lab_name: str, host: str) -> docker.DockerPaths:
    return docker.DockerPaths.of_host(host_paths(lab_name, host))


def dk(lab_name: str, host: str, *args: str) -> str:
    return docker.cli(paths(lab_name, host), *args).stdout.strip()


def own_processes(lab_name: str, host: str) -> list[int]:
    """dockerd (if running) and everything it left: containerd, shims, containers."""
    pid = docker.dockerd_pid(paths(lab_name, host))
    return ([pid] if pid else []) + docker.leftovers(host_paths(lab_name, host))


def cgroups(lab_name: str, host: str) -> list[str]:
    parent = docker.cgroup_parent(host_paths(lab_name, host))
    return [
        d
        for point in set(docker.containerd.cgroup_mounts().values())
        for d, _, _ in os.walk(point + parent)
    ]


def root_namespace_links() -> set[str]:
    out = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True, check=True)
    return {line.split()[0].split("@")[0] for line in out.stdout.splitlines()}


def test_a_container_runs_and_nothing_reaches_the_machine(docker_lab):
    links = root_namespace_links()
    assert dk(docker_lab, "h1", "image", "ls", "--format", "{{.Repository}}") == docker.IMAGE
    run = docker.cli(
        paths(docker_lab, "h1"), "run", "--rm", "--network", "none", docker.IMAGE, "true"
    )
    assert run.returncode == 0
    out = dk(docker_lab, "h1", "run", "--rm", "--network", "none", docker.IMAGE, "ip", "-o", "link")
    assert [line.split(":")[1].strip() for line in out.splitlines()] == ["lo"]
    # No docker0 and no DOCKER chains: not in the host's namespace, nor in the machine's.
    ns = naming.host_namespace(docker_lab, "h1")
    host_links = netns.run_in_namespace(ns, ["ip", "-br", "link"]).stdout
    assert "docker0" not in host_links and "docker0" not in root_namespace_links()
    assert root_namespace_links() == links
    if shutil.which("iptables-save"):
        for argv in (["iptables-save"], ["ip", "netns", "exec", ns, "iptables-save"]):
            rules = subprocess.run(argv, capture_output=True, text=True).stdout
            assert "DOCKER" not in rules, argv
    # dockerd's view: its plugin directory is the host's, the machine's /run is not there.
    pid = docker.dockerd_pid(paths(docker_lab, "h1"))
    # -r: dockerd's own root too.  Entering a mount namespace puts nsenter at that
    # namespace's root, which is not dockerd's when the lab runs in a chroot (the
    # fresh-root CI): there dockerd's /run is the chroot's.
    seen = subprocess.run(
        ["nsenter", "-m", "-r", "-t", str(pid), "ls", "/run", "/run/docker"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert "netns" not in seen and "plugins" in seen
    # What it writes to /etc/docker and /opt is the lab's (same files), not the machine's.
    root = paths(docker_lab, "h1").root
    inodes = subprocess.run(
        [
            "nsenter",
            "-m",
            "-r",
            "-t",
            str(pid),
            "stat",
            "-c",
            "%i",
            "/etc/docker/key.json",
            "/opt/containerd",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    lab_files = (os.path.join(root, "etc", "key.json"), os.path.join(root, "opt", "containerd"))
    assert [int(i) for i in inodes] == [os.stat(f).st_ino for f in lab_files]


def test_the_cli_drives_a_hosts_dockerd(docker_lab):
    ctl = [os.path.join(os.path.dirname(sys.executable), "ovs-overlayctl"), "lab"]
    run = subprocess.run(
        [
            *ctl,
            "docker",
            "exec",
            "--lab",
            docker_lab,
            "h2",
            "--",
            "docker",
            "run",
            "--rm",
            "--network",
            "none",
            docker.IMAGE,
            "cat",
            "/proc/net/dev",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "lo:" in run.stdout and "eth0" not in run.stdout
    status = subprocess.run(
        [*ctl, "status", "--lab", docker_lab], capture_output=True, text=True, check=True
    ).stdout
    assert "dockerd" in status and "DOWN" not in status
    refused = subprocess.run(
        [*ctl, "docker", "stop", "--lab", docker_lab, "h3"], capture_output=True, text=True
    )
    assert refused.returncode != 0 and "has no host h3" in refused.stderr


def test_stop_leaves_nothing_running(docker_lab):
    dk(
        docker_lab,
        "h2",
        "run",
        "-d",
        "--name",
        "stopper",
        "--network",
        "none",
        docker.IMAGE,
        "sleep",
        "600",
    )
    assert len(own_processes(docker_lab, "h2")) >= 4  # dockerd, containerd, shim, sleep
    docker.control(docker_lab, "h2", "stop")
    # SIGTERM: dockerd stopped the container, its containerd and the shim went with it.
    assert own_processes(docker_lab, "h2") == []
    # runc removed the container's cgroups; only the host's parent (empty) is left.
    parent = docker.cgroup_parent(host_paths(docker_lab, "h2"))
    assert all(d.endswith(parent) for d in cgroups(docker_lab, "h2"))
    docker.control(docker_lab, "h2", "start")
    state = dk(docker_lab, "h2", "inspect", "--format", "{{.State.Status}}", "stopper")
    assert state == "exited"
    dk(docker_lab, "h2", "rm", "stopper")


def test_a_killed_dockerd_restarts_and_lab_down_removes_everything(docker_lab):
    dk(
        docker_lab,
        "h1",
        "run",
        "-d",
        "--name",
        "orphan",
        "--network",
        "none",
        docker.IMAGE,
        "sleep",
        "600",
    )
    docker.control(docker_lab, "h1", "kill")
    # SIGKILL: its containerd died with it; the shim and the container live on.
    left = docker.leftovers(host_paths(docker_lab, "h1"))
    assert len(left) == 2 and docker.dockerd_pid(paths(docker_lab, "h1")) is None
    docker.control(docker_lab, "h1", "start")
    # The new dockerd reached the old shim (its socket is kept in the lab) and ended it.
    assert dk(docker_lab, "h1", "inspect", "--format", "{{.State.Status}}", "orphan") == "exited"
    assert not any(pid in left for pid in own_processes(docker_lab, "h1"))
    # Killed again with a container running: removing the host's Docker ends it all.
    dk(docker_lab, "h1", "start", "orphan")
    docker.control(docker_lab, "h1", "kill")
    assert docker.leftovers(host_paths(docker_lab, "h1"))
    removed = docker.remove(host_paths(docker_lab, "h1"))
    assert any(line.startswith("cgroup ") for line in removed)
    assert own_processes(docker_lab, "h1") == []
    assert cgroups(docker_lab, "h1") == []
    assert not os.path.exists(paths(docker_lab, "h1").root)
    docker.control(docker_lab, "h1", "start")  # a fresh start imports the image again
    assert dk(docker_lab, "h1", "image", "ls", "--format", "{{.Repository}}") == docker.IMAGE


def test_lab_down_ends_a_killed_dockerds_containers():
    with running_lab(1) as name:
        docker.control(name, "h1", "start")
        dk(name, "h1", "run", "-d", "--network", "none", docker.IMAGE, "sleep", "600")
        docker.control(name, "h1", "kill")
        left = docker.leftovers(host_paths(name, "h1"))
        assert left
        parent = docker.cgroup_parent(host_paths(name, "h1"))
        lab.down(name)
        assert all(ovs_host.wait_gone(pid, 5) for pid in left)
        assert not any(
            os.path.isdir(point + parent)
            for point in set(docker.containerd.cgroup_mounts().values())
        )


# --- Docker networks on the overlay (the agent's remote drivers, controller/cnm/) ---

OVERLAY_CIDR = naming.DEFAULT_CIDR
# --subnet is required (controller/cnm/ipam.py): libnetwork 20.10 checks a pool it did not
# name against the host's routes and asks again while it overlaps, and every host routes
# its overlay networks (its gateway address).


def docker_network(lab_name: str, host: str, name: str, network: str | None, cidr: str) -> None:
    """``docker network create`` onto ovs-overlay network ``network`` (None: a network
    of this Docker network's own, made by the driver)."""
    named = ["--ipam-opt", f"network={network}", "--opt", f"network={network}"]
    dk(
        lab_name,
        host,
        "network",
        "create",
        "-d",
        "ovs-overlay",
        "--ipam-driver",
        "ovs-overlay",
        "--subnet",
        cidr,
        *(named if network else []),
        name,
    )


def run_container(lab_name: str, host: str, name: str, network: str, ip: str = "") -> str:
    """A container sleeping on Docker network ``network`` (at ``ip``, if given); returns
    its address."""
    dk(
        lab_name,
        host,
        "run",
        "-d",
        "--name",
        name,
        "--network",
        network,
        *(["--ip", ip] if ip else []),
        docker.IMAGE,
        "sleep",
        "600",
    )
    return dk(
        lab_name,
        host,
        "inspect",
        "--format",
        f'{{{{(index .NetworkSettings.Networks "{network}").IPAddress}}}}',
        name,
    )


def reaches(lab_name: str, host: str, container: str, ip: str) -> bool:
    probe = docker.cli(
        paths(lab_name, host), "exec", container, "ping", "-c", "1", "-W", "2", ip, check=False
    )
    return probe.returncode == 0


def counts(lab_name: str, network: str = naming.DEFAULT_NETWORK) -> dict:
    """What an endpoint holds, on both hosts: veth ends in the host's namespace (host end
    ``ovo*``, a container end not yet moved ``ovd*``), br-int ports, the network's address
    and MAC claims and endpoint records, the agents' Docker records, and the networks the
    driver made (``docker-*``)."""
    allocations, endpoints = store_pods(lab_name, network)
    cluster = open_cluster(lab.LabPaths(naming.DEFAULT_STATE_ROOT, lab_name).store_url)
    try:
        nets = sum(len(docker_records.list_networks(cluster.kv, h)) for h in HOSTS)
        eps = sum(len(docker_records.list_endpoints(cluster.kv, h)) for h in HOSTS)
        macs = len(cluster.kv.range(f"macs/{network}/")[0])
        made = len([n for n in cluster.list_networks() if n.name.startswith("docker-")])
    finally:
        cluster.close()
    links = []
    for h in HOSTS:
        out = netns.run_in_namespace(naming.host_namespace(lab_name, h), ["ip", "-br", "link"])
        links += [line.split()[0] for line in out.stdout.splitlines()]
    return {
        "veths": len([link for link in links if link.startswith(("ovo", "ovd"))]),
        "ports": sum(len(pod_ports(lab_name, h)) for h in HOSTS),
        "claims": len(allocations),
        "mac claims": macs,
        "endpoints": len(endpoints),
        "docker networks": nets,
        "docker endpoints": eps,
        "made networks": made,
    }


def test_containers_on_two_hosts_reach_each_other_and_rm_leaves_nothing(docker_lab):
    before = counts(docker_lab)
    for host in HOSTS:
        docker_network(docker_lab, host, "blue", naming.DEFAULT_NETWORK, OVERLAY_CIDR)
    ip1 = run_container(docker_lab, "h1", "web1", "blue")
    ip2 = run_container(docker_lab, "h2", "web2", "blue")
    assert ip1 != ip2 and ip1.startswith("100.64.") and ip2.startswith("100.64.")
    grown = counts(docker_lab)
    assert grown["ports"] == before["ports"] + 2 and grown["claims"] == before["claims"] + 2
    assert grown["docker endpoints"] == before["docker endpoints"] + 2
    assert reaches(docker_lab, "h1", "web1", ip2) and reaches(docker_lab, "h2", "web2", ip1)
    for host, name in (("h1", "web1"), ("h2", "web2")):
        dk(docker_lab, host, "rm", "-f", name)
        dk(docker_lab, host, "network", "rm", "blue")
    assert counts(docker_lab) == before


def test_a_pod_and_a_container_reach_each_other_and_the_node_and_outside(docker_lab):
    docker_network(docker_lab, "h1", "green", naming.DEFAULT_NETWORK, OVERLAY_CIDR)
    ip = run_container(docker_lab, "h1", "app", "green")
    pod = pods.pod_add(docker_lab, "h2", "cli")["ip"]
    try:
        assert reaches(docker_lab, "h1", "app", pod)
        assert lab.ping_from(pods.pod_namespace(docker_lab, "h2", "cli"), ip)
        # The node reaches its container from its gateway address, as it does a pod, and
        # the container reaches the outside through the host's egress SNAT.
        assert lab.ping(docker_lab, "h1", ip)
        assert reaches(docker_lab, "h1", "app", naming.EXT_IP)
    finally:
        pods.pod_del(docker_lab, "h2", "cli")
        dk(docker_lab, "h1", "rm", "-f", "app")
        dk(docker_lab, "h1", "network", "rm", "green")


def test_docker_networks_stay_apart_even_with_one_subnet(docker_lab):
    cidr = "100.80.0.0/16"
    create_network(docker_lab, "red", cidr, 5101)
    create_network(docker_lab, "teal", cidr, 5102)
    for host in HOSTS:
        docker_network(docker_lab, host, "red", "red", cidr)
        docker_network(docker_lab, host, "teal", "teal", cidr)
    try:
        red = {
            name: (host, run_container(docker_lab, host, name, "red"))
            for host, name in (("h1", "red1"), ("h1", "red3"), ("h2", "red2"))
        }
        teal_ip = run_container(docker_lab, "h2", "teal2", "teal")
        for src, (host, _) in red.items():
            assert all(reaches(docker_lab, host, src, ip) for _, ip in red.values())
        # The same subnet in both: an address of red that teal does not use (teal has its
        # own hosts' gateway addresses and teal2) must not answer from teal, on either host.
        in_teal = set(addresses(docker_lab, "teal"))
        assert teal_ip in in_teal
        targets = [ip for _, ip in red.values() if ip not in in_teal]
        assert targets and {h for h, ip in red.values() if ip in targets} == set(HOSTS)
        for ip in targets:
            assert not reaches(docker_lab, "h2", "teal2", ip), ip
    finally:
        for host, name in (("h1", "red1"), ("h1", "red3"), ("h2", "red2"), ("h2", "teal2")):
            docker.cli(paths(docker_lab, host), "rm", "-f", name, check=False)
        for host in HOSTS:
            for net in ("red", "teal"):
                docker.cli(paths(docker_lab, host), "network", "rm", net, check=False)


def test_docker_networks_without_opt_network_are_each_their_own(docker_lab):
    """The same --subnet and no --opt network on two hosts: two networks, the driver's,
    that stay apart; each goes with its Docker network."""
    before = counts(docker_lab)
    cidr = "100.90.0.0/24"
    for host in HOSTS:
        docker_network(docker_lab, host, "solo", None, cidr)
    try:
        assert counts(docker_lab)["made networks"] == before["made networks"] + 2
        a1 = run_container(docker_lab, "h1", "solo1", "solo", "100.90.0.10")
        a3 = run_container(docker_lab, "h1", "solo3", "solo", "100.90.0.30")
        b2 = run_container(docker_lab, "h2", "solo2", "solo", "100.90.0.20")
        assert reaches(docker_lab, "h1", "solo1", a3)  # within one network
        assert not reaches(docker_lab, "h1", "solo1", b2)
        assert not reaches(docker_lab, "h2", "solo2", a1)
    finally:
        for host, name in (("h1", "solo1"), ("h1", "solo3"), ("h2", "solo2")):
            docker.cli(paths(docker_lab, host), "rm", "-f", name, check=False)
        for host in HOSTS:
            docker.cli(paths(docker_lab, host), "network", "rm", "solo", check=False)
    assert counts(docker_lab) == before


def addresses(lab_name: str, network: str) -> list[str]:
    """Every address claimed in ``network``: endpoints and the hosts' gateways."""
    cluster = open_cluster(lab.LabPaths(naming.DEFAULT_STATE_ROOT, lab_name).store_url)
    try:
        return list(cluster.allocations(network))
    finally:
        cluster.close()


def docker_run(lab_name: str, name: str, network: str) -> subprocess.Popen:
    """``docker run`` on h1, left running (it waits on its container)."""
    return subprocess.Popen(
        [docker.DOCKER, "run", "--name", name, "--network", network, docker.IMAGE, "sleep", "600"],
        env=docker.cli_env(paths(lab_name, "h1")),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_a_dockerd_killed_mid_run_leaks_nothing_once_restarted(docker_lab):
    docker_network(docker_lab, "h1", "mid", naming.DEFAULT_NETWORK, OVERLAY_CIDR)
    before = counts(docker_lab)
    run = docker_run(docker_lab, "midrun", "mid")
    try:
        # Killed once the agent has plugged the container (its port is on br-int), while
        # `docker run` still waits on it.
        deadline = time.monotonic() + 60
        while counts(docker_lab)["ports"] == before["ports"]:
            assert time.monotonic() < deadline, "docker run never plugged its container"
            time.sleep(0.05)
        docker.control(docker_lab, "h1", "kill")
    finally:
        run.wait()
    assert counts(docker_lab)["ports"] == before["ports"] + 1  # the container runs on
    docker.control(docker_lab, "h1", "start")
    assert dk(docker_lab, "h1", "inspect", "--format", "{{.State.Running}}", "midrun") == "false"
    assert counts(docker_lab) == before
    dk(docker_lab, "h1", "rm", "midrun")
    dk(docker_lab, "h1", "network", "rm", "mid")
    assert counts(docker_lab)["docker networks"] == before["docker networks"] - 1


def test_a_dockerd_killed_before_its_container_is_plugged_leaks_nothing(docker_lab):
    """Killed while the agent holds an address claimed for the container and no port
    (between RequestAddress and Join): only the agent's cleanup at the restarted
    dockerd's Activate can find that claim, libnetwork never learnt of it."""
    docker_network(docker_lab, "h1", "early", naming.DEFAULT_NETWORK, OVERLAY_CIDR)
    before = counts(docker_lab)
    cluster = open_cluster(lab.LabPaths(naming.DEFAULT_STATE_ROOT, docker_lab).store_url)
    pid = docker.dockerd_pid(paths(docker_lab, "h1"))
    run = docker_run(docker_lab, "earlyrun", "early")
    try:
        # One store read each for claims and published endpoints (a Join publishes one
        # as it plugs the port), so the loop is quick enough to see the moment.
        base = (
            len(cluster.allocations(naming.DEFAULT_NETWORK)),
            len(cluster.list_endpoints(naming.DEFAULT_NETWORK)),
        )
        deadline = time.monotonic() + 60
        while True:
            claims = len(cluster.allocations(naming.DEFAULT_NETWORK))
            published = len(cluster.list_endpoints(naming.DEFAULT_NETWORK))
            if claims > base[0] and published == base[1]:
                break
            assert published == base[1], "the container was plugged before its claim was seen"
            assert time.monotonic() < deadline, "docker run never asked for an address"
        os.kill(pid, signal.SIGKILL)  # as `lab docker kill` does (its containerd dies too)
        assert ovs_host.wait_gone(pid, docker.STOP_TIMEOUT)
    finally:
        run.wait()
        cluster.close()
    killed = counts(docker_lab)
    assert killed["claims"] > before["claims"]
    docker.control(docker_lab, "h1", "start")
    assert counts(docker_lab) == before
    docker.cli(paths(docker_lab, "h1"), "rm", "-f", "earlyrun", check=False)
    dk(docker_lab, "h1", "network", "rm", "early")
