"""Membership on a 3-host lab (the lab's agents use host_ttl 6 s): a host whose agent is
SIGKILLed loses its tunnel and endpoint flows on every other host once its lease runs
out, and gets them back, with the same addresses, when its agent starts again."""

from __future__ import annotations

import signal
import time

import pytest

from lab import agent_proc, lab, naming, pods
from tests.helpers import host_paths, running_lab

pytestmark = pytest.mark.lab

H3_IP = naming.underlay_ip(3)
WITHIN = 60.0  # a wait for a condition, not a measure


def flows_toward(name: str, host: str, ip: str) -> list[str]:
    return [f for f in lab.dump_flows(name, host) if ip in f]


def wait_until(what: str, predicate) -> None:
    deadline = time.monotonic() + WITHIN
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {WITHIN:.0f}s: {what}")
        time.sleep(0.2)


def test_a_silent_host_goes_after_its_ttl_and_comes_back_with_its_pods():
    with running_lab(3) as name:
        a = pods.pod_add(name, "h1", "a")
        c = pods.pod_add(name, "h3", "c")
        a_ns, c_ns = pods.pod_namespace(name, "h1", "a"), pods.pod_namespace(name, "h3", "c")
        assert lab.ping_from(a_ns, c["ip"])
        assert flows_toward(name, "h1", H3_IP) and flows_toward(name, "h2", H3_IP)

        assert agent_proc.stop(host_paths(name, "h3"), signal.SIGKILL) is not None
        for host in ("h1", "h2"):
            wait_until(
                f"{host} drops every flow toward h3",
                lambda h=host: not flows_toward(name, h, H3_IP),
            )
        assert not lab.ping_from(a_ns, c["ip"])

        lab.agent_control(name, "h3", "start")
        for host in ("h1", "h2"):
            wait_until(f"{host} has h3's flows again", lambda h=host: flows_toward(name, h, H3_IP))
        assert lab.ping_from(a_ns, c["ip"])  # same address: the endpoint outlived the lease
        assert lab.ping_from(c_ns, a["ip"])
