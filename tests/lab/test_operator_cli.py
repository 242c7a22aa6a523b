"""``ovs-overlayctl status`` and ``flows`` against a real 3-host lab, as an operator runs
them: human and JSON (the JSON read back into its typed shape), and every error one
sentence with a non-zero exit."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ctl.flow_report import FlowReport
from ctl.status_report import StatusReport, from_json
from lab import agent_proc, lab, naming, pods
from openflow import cookies
from tests.helpers import flows, groups, host_paths, ovs, run, running_lab

pytestmark = pytest.mark.lab

CTL = [sys.executable, "-m", "ctl.main"]


@pytest.fixture(scope="module")
def three_hosts():
    """A 3-host lab with a pod on h1 and one on h2 that have pinged each other."""
    with running_lab(3) as name:
        a = pods.pod_add(name, "h1", "p1")
        b = pods.pod_add(name, "h2", "p1")
        assert lab.ping_from(pods.pod_namespace(name, "h1", "p1"), b["ip"], count=3)
        yield name, a, b


def ctl(*argv: str) -> subprocess.CompletedProcess:
    return run([*CTL, *argv])


def one_sentence(proc: subprocess.CompletedProcess) -> str:
    """The error of a failed command: non-zero exit, one line on stderr, nothing else."""
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("ovs-overlayctl: ")
    return lines[0]


def generation(name: str, host: str) -> int:
    out = ovs(name, host, "ovs-vsctl", "get", "Bridge", "br-int", "external_ids")
    return int(out.split("ovs-overlay-generation=")[1].split(",")[0].strip('"}\n '))


def test_status_json_has_the_agent_from_its_engine_and_the_cluster_from_the_store(three_hosts):
    name, a, b = three_hosts
    proc = ctl("status", "--lab", name, "--host", "h1", "-o", "json")
    assert proc.returncode == 0, proc.stderr
    report = from_json(StatusReport, json.loads(proc.stdout))  # every key, every type
    agent = report.agent
    assert (report.agent_error, report.cluster_error) == (None, None)
    assert (agent.host, agent.ready, agent.framework) == ("h1", True, "os-ken")
    assert agent.socket == agent_proc.socket_path(host_paths(name, "h1"))
    assert (agent.datapath_type, agent.tunnel_ip) == ("netdev", "198.18.0.1")
    assert agent.generation == generation(name, "h1") and agent.last_full_sync is not None
    assert (
        agent.store.reachable
        and agent.store.url == lab.LabPaths(naming.DEFAULT_STATE_ROOT, name).store_url
    )
    c = agent.counts
    # Remote endpoints: b, and h2's and h3's gateways (each host's own address).
    assert (c.local_endpoints, c.gateways, c.networks, c.peers, c.remote_endpoints) == (
        1,
        1,
        1,
        2,
        3,
    )
    # The engine's counts are what br-int has.
    assert (c.flows, c.groups) == (len(flows(name, "h1")), len(groups(name, "h1")))
    assert c.policies == 0 and report.cluster.policies == 0  # no NetworkPolicy here
    hosts = {h.name: h for h in report.cluster.hosts}
    assert sorted(hosts) == ["h1", "h2", "h3"] and all(h.alive for h in hosts.values())
    assert hosts["h2"].tunnel_ip == "198.18.0.2" and hosts["h2"].lease_left > 0
    assert (hosts["h1"].endpoints, hosts["h3"].endpoints) == (1, 0)
    [net] = report.cluster.networks
    assert (net.name, net.vni, net.index, net.cidr, net.gateway) == (
        "default",
        naming.DEFAULT_VNI,
        1,
        naming.DEFAULT_CIDR,
        True,
    )
    # A block per host (each claims one for its gateway); 3 gateways and 2 pods.
    assert (net.blocks, net.addresses_used) == (3, 5) and net.block_addresses > 5


def test_status_for_people(three_hosts):
    name, _, _ = three_hosts
    proc = ctl("status", "--lab", name, "--host", "h2")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    out = proc.stdout
    assert out.startswith("agent h2: ready (ovs-overlay ")
    assert "bridge br-int (netdev), tunnel vxlan from 198.18.0.2" in out
    assert ": reachable since " in out
    assert "local endpoints 1, gateways 1, networks 1, peers 2, remote endpoints 3" in out
    assert "NAME  ALIVE  TUNNEL IP   LEASE LEFT  ENDPOINTS  BLOCKS" in out
    assert "default  5001  1      100.64.0.0/16" in out and " 5/" in out


def test_flows_json_by_table_and_feature_with_the_switch_counters(three_hosts):
    name, _, b = three_hosts
    proc = ctl("flows", "--lab", name, "--host", "h1", "-o", "json")
    assert proc.returncode == 0, proc.stderr
    rep = from_json(FlowReport, json.loads(proc.stdout))
    assert rep.generation == generation(name, "h1")
    assert rep.totals.flows == len(flows(name, "h1"))
    assert (rep.totals.stale, rep.totals.unknown) == (0, 0)
    assert [t.table for t in rep.tables] == [
        "classifier",
        "port_security",
        "arp_responder",
        "l2_forward",
        "policy_conntrack",
        "policy_state",
        "egress_rules",
        "egress_isolation",
        "ingress_rules",
        "ingress_isolation",
        "policy_commit",
        "host_conntrack",
        "host_return",
        "output",
        "canary",
    ]
    l2 = next(t for t in rep.tables if t.table == "l2_forward")
    [remote] = [g for g in l2.features if g.feature == "l2_remote"]
    # b's decision, and those of h2's and h3's gateways (their hosts' own addresses).
    [to_b] = [f for f in remote.flows if f"dl_dst={b['mac']}" in f.match]
    assert len(remote.flows) == 3
    assert f"dl_dst={b['mac']}" in to_b.match and to_b.packets >= 3  # the pings to b
    assert sum(t.totals.flows for t in rep.tables) == rep.totals.flows
    assert sum(f.totals.flows for f in rep.by_feature) == rep.totals.flows

    only = from_json(
        FlowReport,
        json.loads(
            ctl(
                "flows", "--lab", name, "--host", "h1", "--feature", "l2_remote", "-o", "json"
            ).stdout
        ),
    )
    assert only.totals.flows == 3 and only.tables[0].table == "l2_forward"


def test_flows_flags_a_stale_generation_and_an_unknown_cookie(three_hosts):
    name, _, _ = three_hosts
    gen = generation(name, "h3")
    stale = cookies.cookie(cookies.Feature.CANARY, gen + 40)
    # Two flows in the canary table, which no packet reaches: someone else's, and one of a
    # generation the agent no longer has (as an agent that died mid-sync leaves).
    for spec in (
        f"cookie={stale:#x},table=canary,priority=7,actions=drop",
        "cookie=0x0,table=canary,priority=5,actions=drop",
    ):
        ovs(name, "h3", "ovs-ofctl", "-O", "OpenFlow13", "--names", "add-flow", "br-int", spec)
    try:
        proc = ctl("flows", "--lab", name, "--host", "h3", "--table", "canary")
        assert proc.returncode == 0, proc.stderr
        assert f"priority=7 actions=drop [STALE generation {gen + 40}]" in proc.stdout
        assert "priority=5 actions=drop [UNKNOWN cookie 0x0]" in proc.stdout
        assert "table canary (250): 3 flows, 0 packets, 0 bytes, 2 stale, 1 unknown" in proc.stdout
        rep = from_json(
            FlowReport,
            json.loads(ctl("flows", "--lab", name, "--host", "h3", "-o", "json").stdout),
        )
        assert (rep.totals.stale, rep.totals.unknown) == (2, 1)
    finally:
        for match in (f"cookie={stale:#x}/-1", "cookie=0x0/-1"):
            ovs(name, "h3", "ovs-ofctl", "-O", "OpenFlow13", "del-flows", "br-int", match)


def test_every_cli_error_is_one_sentence_and_a_non_zero_exit(three_hosts):
    name, _, _ = three_hosts
    sock = agent_proc.socket_path(host_paths(name, "h1"))
    assert "no lab named nosuchlab" in one_sentence(
        ctl("status", "--lab", "nosuchlab", "--host", "h1")
    )
    assert "no lab named nosuchlab" in one_sentence(
        ctl("flows", "--lab", "nosuchlab", "--host", "h1")
    )
    assert f"lab {name} has no host h9; its hosts are h1..h3" in one_sentence(
        ctl("status", "--lab", name, "--host", "h9")
    )
    assert f"lab {name} has no host h9" in one_sentence(ctl("flows", "--lab", name, "--host", "h9"))
    assert "store URL 'bogus://x' is not supported" in one_sentence(
        ctl("status", "--socket", sock, "--store", "bogus://x")
    )
    assert "feature 'bogus' is not one of" in one_sentence(
        ctl("flows", "--lab", name, "--host", "h1", "--feature", "bogus")
    )
    assert "no agent socket at /nonexistent/agent.sock" in one_sentence(
        ctl("status", "--socket", "/nonexistent/agent.sock")
    )


def test_status_of_a_stopped_agent_names_its_socket_and_the_fix(three_hosts):
    name, _, _ = three_hosts
    lab.agent_control(name, "h3", "stop")
    try:
        proc = ctl("status", "--lab", name, "--host", "h3", "-o", "json")
        error = one_sentence(proc)
        sock = agent_proc.socket_path(host_paths(name, "h3"))
        assert sock in error and f"ovs-overlayctl lab agent start --lab {name} h3" in error
        report = from_json(StatusReport, json.loads(proc.stdout))
        assert report.agent is None and report.agent_error == error.removeprefix("ovs-overlayctl: ")
        assert report.cluster is not None  # the store still answers for the cluster part
    finally:
        lab.agent_control(name, "h3", "start")
