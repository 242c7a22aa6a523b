"""Parts restart under live traffic: the agent (kill -9) and ovs-vswitchd."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import pytest

from controller import api_client
from lab import agent_proc, lab, netns, ovs_host, pods
from openflow import cookies
from tests.helpers import host_paths, ovs, rows, running_lab

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def two_pods():
    with running_lab(2) as name:
        a = pods.pod_add(name, "h1", "p1")
        b = pods.pod_add(name, "h2", "p1")
        yield name, a, b


def start_ping(namespace: str, ip: str, count: int) -> subprocess.Popen:
    """100 packets/s; each gets 1 s to be answered."""
    return subprocess.Popen(
        ["ping", "-i", "0.01", "-c", str(count), "-W", "1", "-q", ip],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: netns.enter_namespace(namespace),
    )


def loss(ping: subprocess.Popen) -> tuple[int, int]:
    out, _ = ping.communicate(timeout=60)
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    return int(m.group(1)), int(m.group(2))


def test_kill_9_of_an_agent_under_traffic_loses_nothing(two_pods):
    name, a, b = two_pods
    paths = host_paths(name, "h1")
    ping = start_ping(pods.pod_namespace(name, "h1", "p1"), b["ip"], 400)
    time.sleep(0.5)  # traffic is flowing before the fault
    old = agent_proc.stop(paths, signal.SIGKILL)
    assert old is not None
    time.sleep(1.0)  # the data path runs on its own while no agent exists
    lab.agent_control(name, "h1", "start")  # new generation installed, old one removed
    sent, received = loss(ping)
    assert sent == 400
    assert received == sent
    assert lab.ping_from(pods.pod_namespace(name, "h2", "p1"), a["ip"])


def test_a_started_agent_syncs_over_br_int_mgmt_and_keeps_vswitchds_link_spare(two_pods):
    """The agent does not wait for vswitchd to dial it (its first attempts back off 1, 2,
    4 s): it connects to br-int.mgmt and syncs over that.  vswitchd's own connection,
    when it comes, is kept as a spare: one full sync, and traffic still flows."""
    name, a, b = two_pods
    paths = host_paths(name, "h1")
    log = os.path.join(paths.logdir, "agent.log")
    offset = os.path.getsize(log)
    lab.agent_control(name, "h1", "restart")
    deadline = time.monotonic() + 30
    while not all(r["is_connected"] for r in rows(name, "h1", "Controller")):
        assert time.monotonic() < deadline, "vswitchd never connected to the agent's listener"
        time.sleep(0.1)
    with open(log) as f:
        f.seek(offset)
        started = f.read()
    assert f"connected to {os.path.join(paths.rundir, 'br-int.mgmt')}" in started
    status = api_client.call(agent_proc.socket_path(paths), "status")["result"]
    assert status["full_syncs"] == 1
    assert lab.ping_from(pods.pod_namespace(name, "h1", "p1"), b["ip"])


def test_ovs_vswitchd_restart_gets_the_pipeline_back(two_pods):
    name, a, b = two_pods
    paths = host_paths(name, "h2")
    started = time.monotonic()
    lab.restart_vswitchd(name, "h2")
    # The agent sees the reconnect, replays, and clears flow-restore-wait.
    deadline = time.monotonic() + 20
    while not lab.ping_from(pods.pod_namespace(name, "h1", "p1"), b["ip"]):
        assert time.monotonic() < deadline, "pipeline did not come back"
    print(f"pipeline back {time.monotonic() - started:.2f}s after the restart began")
    out = netns.run_in_namespace(
        f"{name}-h2", ["ovs-vsctl", "get", "Open_vSwitch", ".", "other_config"], env=paths.env()
    ).stdout
    assert "flow-restore-wait" not in out
    assert ovs_host.daemon_pid(paths, "ovs-vswitchd") is not None
    # The new vswitchd knows no routes (--disable-system-route): the agent gave it the
    # tunnels' one again, or the ping above could not have crossed.
    routes = netns.run_in_namespace(
        f"{name}-h2", ["ovs-appctl", "ovs/route/show"], env=paths.env()
    ).stdout
    assert "User: 198.18.0.0/16 dev br-phy SRC 198.18.0.2" in routes, routes


def test_a_restarted_agent_keeps_the_flows_ovs_learned_and_finds_no_leftovers(two_pods):
    """host_return's learned flows (generation 0, Feature.HOST_RETURN_LEARNED) are not the
    agent's to replace: a full sync neither deletes them nor takes them for another
    generation's leftovers (which would read every flow and delete generation 0)."""
    name, a, b = two_pods
    paths = host_paths(name, "h1")
    learned = cookies.cookie(cookies.Feature.HOST_RETURN_LEARNED, 0)
    flow = (
        f"cookie={learned:#x},table=81,priority=100,idle_timeout=3600,tcp,reg2=0x1/0xffff,"
        f"nw_src={b['ip']},nw_dst={a['ip']},tp_src=80,tp_dst=40000,actions=output:1"
    )
    ovs(name, "h1", "ovs-ofctl", "-O", "OpenFlow13", "add-flow", "br-int", flow)
    log = os.path.join(paths.logdir, "agent.log")
    before = os.path.getsize(log)
    agent_proc.stop(paths)
    lab.agent_control(name, "h1", "start")
    with open(log, errors="replace") as f:
        f.seek(before)
        synced = [line for line in f if "in place" in line]
    assert synced and "leftovers" not in synced[-1], synced
    dump = ovs(
        name,
        "h1",
        "ovs-ofctl",
        "-O",
        "OpenFlow13",
        "dump-flows",
        "br-int",
        f"cookie={learned:#x}/-1",
    )
    assert f"nw_src={b['ip']}" in dump, dump
