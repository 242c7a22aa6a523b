"""containerd's CRI plugin drives ovs-overlay, as kubelet's runtime does on a node.

Debian 12's containerd 1.6 runs on two lab hosts (``lab containerd start``: private root,
state, sockets and config, our conflist naming the host's agent; lab/containerd.py says
what it needs here), and the test speaks CRI to it over gRPC as kubelet would
(tests/lab/cri.py): RunPodSandbox makes a pod's network namespace and runs CNI ADD,
StopPodSandbox runs DEL, RemovePodSandbox runs DEL again, without a netns.  The sandboxes'
network namespaces are entered by the path PodSandboxStatus names.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil

import pytest

from lab import agent_proc, containerd, lab, naming
from tests.helpers import host_paths, host_veths, ovs_map, pod_ports, rows, running_lab, store_pods

pytestmark = pytest.mark.lab

cri = pytest.importorskip("tests.lab.cri", reason="grpcio and grpcio-tools: pip install -e .[dev]")

HOSTS = ("h1", "h2")
POD_NAMESPACE = "web"


@pytest.fixture(scope="module")
def ctrd_lab():
    if os.geteuid() != 0:
        pytest.fail("this test creates network namespaces, OVS daemons and containers: run as root")
    missing = [t for t in ("containerd", "ctr", "runc") if shutil.which(t) is None]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}; ./quickstart.sh installs what this test needs")
    with running_lab(2) as name:
        cgroup_parent = f"/{name}-cri"
        try:
            for host in HOSTS:
                containerd.control(name, host, "start")
            yield name
        finally:
            lab.down(name)  # ends the pods; the cgroup parent the test named is the test's
            _remove_cgroup(cgroup_parent)


def _remove_cgroup(parent: str) -> None:
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f if " - cgroup" in line]
    for point in points:
        if os.path.isdir(point + parent):
            os.rmdir(point + parent)


def client(lab_name: str, host: str) -> cri.CriClient:
    return cri.CriClient(containerd.ContainerdPaths.of_host(host_paths(lab_name, host)).socket)


def run_pod(lab_name: str, host: str, name: str) -> cri.SandboxStatus:
    paths = containerd.ContainerdPaths.of_host(host_paths(lab_name, host))
    with client(lab_name, host) as c:
        sandbox = c.run_pod_sandbox(
            POD_NAMESPACE, name, f"uid-{name}", f"/{lab_name}-cri", paths.pod_logs
        )
        status = c.pod_sandbox_status(sandbox)
    assert status.state == "SANDBOX_READY"
    assert ipaddress.ip_address(status.ip) in ipaddress.ip_network(naming.DEFAULT_CIDR)
    # containerd's own bind mount of the pod's namespace, under its private state dir
    assert status.netns.startswith(paths.root + "/") and os.path.exists(status.netns)
    return status


def port_of(lab_name: str, host: str, sandbox: str) -> dict | None:
    for row in rows(lab_name, host, "Interface"):
        ids = ovs_map(row["external_ids"])
        if ids.get("ovs-overlay-container-id") == sandbox:
            return ids
    return None


def counts(lab_name: str) -> dict:
    allocations, endpoints = store_pods(lab_name)
    return {
        "veths": sum(len(host_veths(lab_name, h)) for h in HOSTS),
        "ports": sum(len(pod_ports(lab_name, h)) for h in HOSTS),
        "allocations": len(allocations),
        "endpoints": len(endpoints),
    }


def agent_log_count(lab_name: str, host: str, pattern: str) -> int:
    with open(os.path.join(host_paths(lab_name, host).logdir, "agent.log")) as f:
        return len(re.findall(pattern, f.read()))


def test_pods_on_two_hosts_reach_each_other_and_their_node(ctrd_lab):
    p1 = run_pod(ctrd_lab, "h1", "api-0")
    p2 = run_pod(ctrd_lab, "h2", "api-1")
    assert p1.ip != p2.ip

    # Each sandbox is a port on its own host's br-int, tagged with the sandbox id and the
    # Kubernetes pod containerd named in CNI_ARGS; the endpoint records carry the pod too.
    for st, host, pod in ((p1, "h1", "web/api-0"), (p2, "h2", "web/api-1")):
        ids = port_of(ctrd_lab, host, st.id)
        assert ids is not None and ids["ovs-overlay-ip"] == st.ip
        assert ids["ovs-overlay-pod"] == pod
    _, endpoints = store_pods(ctrd_lab)
    assert {(e.container_id, e.host, e.pod) for e in endpoints} == {
        (p1.id, "h1", "web/api-0"),
        (p2.id, "h2", "web/api-1"),
    }

    # Pod to pod across hosts, from inside the sandboxes' namespaces, both ways.
    assert lab.ping_from(p1.netns, p2.ip, count=3)
    assert lab.ping_from(p2.netns, p1.ip, count=3)
    # The node (the host's namespace) reaches its own pod.
    assert lab.ping(ctrd_lab, "h1", p1.ip, count=3)
    assert lab.ping(ctrd_lab, "h2", p2.ip, count=3)


def test_a_containerd_restart_keeps_pods_networked(ctrd_lab):
    p1 = run_pod(ctrd_lab, "h1", "db-0")
    p2 = run_pod(ctrd_lab, "h2", "db-1")
    adds = agent_log_count(ctrd_lab, "h1", rf"attached {p1.id}/eth0 ")
    for host in HOSTS:
        containerd.control(ctrd_lab, host, "restart")
    with client(ctrd_lab, "h1") as c:
        again = c.pod_sandbox_status(p1.id)
    # The sandbox and its namespace outlived containerd (its shim kept it), untouched:
    # same address and namespace, no second ADD.
    assert (again.state, again.ip, again.netns) == ("SANDBOX_READY", p1.ip, p1.netns)
    assert agent_log_count(ctrd_lab, "h1", rf"attached {p1.id}/eth0 ") == adds == 1
    assert lab.ping_from(p1.netns, p2.ip, count=3)
    assert lab.ping_from(p2.netns, p1.ip, count=3)


def test_stop_then_remove_leaves_nothing(ctrd_lab):
    before = counts(ctrd_lab)
    st = run_pod(ctrd_lab, "h2", "job-0")
    assert counts(ctrd_lab) == {k: v + 1 for k, v in before.items()}
    with client(ctrd_lab, "h2") as c:
        c.stop_pod_sandbox(st.id)  # DEL with the netns, which containerd then removes
        assert counts(ctrd_lab) == before
        assert port_of(ctrd_lab, "h2", st.id) is None
        assert not os.path.exists(st.netns)
        c.remove_pod_sandbox(st.id)  # DEL again, without a netns: nothing left to do
        assert st.id not in c.list_pod_sandboxes()
    assert counts(ctrd_lab) == before
    assert agent_log_count(ctrd_lab, "h2", rf"detached {st.id}/eth0 ") == 2
    assert agent_proc.agent_pid(host_paths(ctrd_lab, "h2")) is not None
