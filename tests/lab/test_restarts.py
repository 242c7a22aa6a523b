"""Parts restart under live traffic: the agent (kill -9) and ovs-vswitchd."""

from __future__ import annotations

import re
import signal
import subprocess
import time

import pytest

from lab import agent_proc, lab, netns, ovs_host, pods
from tests.helpers import host_paths, running_lab

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
