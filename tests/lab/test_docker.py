"""Debian's dockerd (docker.io 20.10) on lab hosts, as ``lab docker`` runs it.

Each host's dockerd runs in the host's network namespace and a mount namespace of its own
(lab/docker.py, lab/docker_ns.py): private roots, socket and plugin discovery, no bridge,
no iptables.  These tests run it for real: containers start, the machine's own namespace
and file system stay untouched, and stop, kill and ``lab down`` leave nothing behind.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from lab import docker, lab, naming, netns, ovs_host
from tests.helpers import host_paths, running_lab

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
    seen = subprocess.run(
        ["nsenter", "-m", "-t", str(pid), "ls", "/run", "/run/docker"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert "netns" not in seen and "plugins" in seen


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
