"""The lab's dockerd configuration and image, without running dockerd."""

from __future__ import annotations

import io
import os
import tarfile

from lab import agent_proc, docker, pause_image
from lab.ovs_host import OvsHostPaths

HOST = OvsHostPaths("/run/ovs-overlay/lab/L/hosts/h1")


def test_dockerd_makes_no_network_and_keeps_every_path_its_own():
    paths = docker.DockerPaths.of_host(HOST)
    conf = docker.daemon_config(paths, docker.cgroup_parent(HOST))
    # No docker0, no iptables rules, no sysctls: the host's namespace is the agent's.
    assert conf["bridge"] == "none"
    assert conf["iptables"] is conf["ip6tables"] is conf["ip-masq"] is conf["ip-forward"] is False
    assert conf["hosts"] == [f"unix://{paths.socket}"]
    assert conf["exec-opts"] == ["native.cgroupdriver=cgroupfs"]
    assert conf["cgroup-parent"] == "/L-h1-docker"  # named for the lab host: lab down finds it
    for key in ("data-root", "exec-root", "pidfile"):
        assert conf[key].startswith(paths.root + "/"), key


def test_the_agent_serves_the_docker_plugin_where_dockerd_looks(tmp_path):
    host = OvsHostPaths(str(tmp_path / "h1"))
    os.makedirs(host.rundir)
    conf = agent_proc.write_config(host, "h1", "198.18.0.1", "sqlite:///x", "vxlan", 6653, 6)
    with open(conf) as f:
        text = f.read()
    assert f"[docker]\nplugin_dir = {agent_proc.plugin_dir(host)}\n" in text
    assert os.path.isdir(agent_proc.plugin_dir(host))


def test_the_image_holds_busybox_and_its_applets():
    layer = pause_image.busybox_layer(["sh", "ping", "true"])
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert members["bin/busybox"].isfile() and members["bin/busybox"].mode & 0o111
    assert {n: m.linkname for n, m in members.items() if m.issym()} == {
        "bin/sh": "busybox",
        "bin/ping": "busybox",
        "bin/true": "busybox",
    }
