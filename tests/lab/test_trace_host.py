"""``ovs-overlayctl trace`` as an operator runs it on a node: inside a lab host's namespace,
with that host's own agent config and no ``--lab``.  It sees only its own ovs-vswitchd, so a
packet for a pod on another host is ``forwarded`` with the command to run there, and that
command, run on the receiving host, ends where ping says.  Pods are named as Kubernetes
names them (``NAMESPACE/NAME``, from CNI_ARGS)."""

from __future__ import annotations

import json
import shlex
import subprocess

import pytest

from ctl.status_report import from_json
from ctl.trace_commands import TraceReport
from lab import agent_proc, lab, naming, netns, pods
from tests.helpers import CTL, host_paths, running_lab

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def k8s_pods():
    with running_lab(2) as name:
        made = {
            "web/front-1": pods.pod_add(name, "h1", "a", k8s="web/front-1"),
            "web/back-1": pods.pod_add(name, "h2", "b", k8s="web/back-1"),
        }
        yield name, made


def on_host(name: str, host: str, *argv: str):
    """``ovs-overlayctl`` in ``host``'s namespace with that host's agent config only."""
    conf = agent_proc.config_path(host_paths(name, host))
    return netns.run_in_namespace(
        naming.host_namespace(name, host), [*CTL, *argv, "--config", conf], check=False
    )


def report(done) -> TraceReport:
    assert done.returncode == 0, done.stderr
    return from_json(TraceReport, json.loads(done.stdout), where="trace")


def test_a_remote_pod_is_forwarded_then_delivered_by_the_printed_command(k8s_pods):
    name, made = k8s_pods
    first = report(
        on_host(name, "h1", "trace", "--from", "web/front-1", "--to", "web/back-1", "-o", "json")
    )
    assert (first.verdict, first.delivered_to, first.drop) == ("forwarded", None, None)
    f = first.forwarded
    assert (f.host, f.tunnel_ip, f.vni) == ("h2", "198.18.0.2", 5001)
    assert f.command == (
        "ovs-overlayctl trace --arriving-from 198.18.0.1 --vni 5001 "
        "--from web/front-1 --to web/back-1"
    )
    assert {s.host for s in first.steps} == {"h1"}
    assert f"{made['web/front-1']['ip']} is web/front-1's own address" in first.steps[1].matched
    assert any("to h2 198.18.0.2 over vxlan, VNI 5001" in s.explained for s in first.steps)

    argv = shlex.split(f.command)
    assert argv[0] == "ovs-overlayctl"
    second = report(on_host(name, "h2", *argv[1:], "-o", "json"))
    assert (second.verdict, second.delivered_to) == ("delivered", "pod web/back-1")
    assert {s.host for s in second.steps} == {"h2"}
    assert "VXLAN from h1 198.18.0.1, a peer" in second.steps[0].matched
    assert lab.ping_from(pods.pod_namespace(name, "h1", "a"), made["web/back-1"]["ip"])

    # the human form says the same, with the command to copy
    text = on_host(name, "h1", "trace", "--from", "web/front-1", "--to", "web/back-1")
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines()[-2:] == [
        "verdict: forwarded to h2 198.18.0.2 over the tunnel, VNI 5001",
        f"  continue on h2: {f.command}",
    ]


def test_a_source_on_another_host_says_where_to_run_the_trace(k8s_pods):
    name, _ = k8s_pods
    done = on_host(name, "h2", "trace", "--from", "web/front-1", "--to", "web/back-1")
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "ovs-overlayctl: web/front-1 is on host h1 (198.18.0.1), not on h2; run the trace there"
    )


def test_pods_are_found_by_namespace_and_name_in_the_lab_too(k8s_pods):
    name, made = k8s_pods
    done = subprocess.run(
        [*CTL, "trace", "--lab", name, "--from", "web/front-1", "--to", "h2/b", "-o", "json"],
        capture_output=True,
        text=True,
    )
    r = report(done)
    assert (r.verdict, r.delivered_to) == ("delivered", "pod web/back-1")
    unknown = on_host(name, "h1", "trace", "--from", "web/nope", "--to", "web/back-1")
    assert unknown.returncode == 1
    assert unknown.stderr.count("\n") == 1 and "pod web/nope" in unknown.stderr
