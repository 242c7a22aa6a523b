"""``ovs-overlayctl status``' report: its JSON shape held by a typed round trip, and the
terminal view."""

from __future__ import annotations

import json

import pytest

from ctl.status_report import (
    AgentCounts,
    AgentStatus,
    ClusterStatus,
    HostRow,
    NetworkRow,
    ShapeError,
    StatusReport,
    StoreHealth,
    from_json,
    render,
)

NOW = 1_800_000_000.0
AGENT = AgentStatus(
    socket="/run/ovs-overlay/agent.sock",
    host="h1",
    ready=True,
    version="0.1.0",
    framework="os-ken",
    generation=4,
    full_syncs=2,
    last_full_sync=NOW - 12,
    bridge="br-int",
    datapath_type="netdev",
    tunnel_type="vxlan",
    tunnel_ip="198.18.0.1",
    store=StoreHealth("etcd://198.18.1.1:2379", False, NOW - 3),
    counts=AgentCounts(2, 1, 1, 2, 4, 31, 1, 3),
)
CLUSTER = ClusterStatus(
    hosts=(
        HostRow("h1", True, "198.18.0.1", 5, 2, 1),
        HostRow("h9", False, None, None, 1, 1),
    ),
    networks=(NetworkRow("default", 5001, 1, "100.64.0.0/16", None, True, None, 2, 128, 3),),
    policies=5,
)


def test_the_json_reads_back_into_the_same_report():
    report = StatusReport(AGENT, None, CLUSTER, None)
    data = json.loads(json.dumps(report.to_json()))
    assert from_json(StatusReport, data) == report
    down = StatusReport(None, "no agent socket at /x", None, None)
    assert from_json(StatusReport, json.loads(json.dumps(down.to_json()))) == down


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("agent", "counts", "flows"), "31", "status.agent.counts.flows is '31', not a int"),
        (("agent", "ready"), 1, "status.agent.ready is 1, not a bool"),
        (("cluster", "hosts"), {}, "status.cluster.hosts is not a list"),
        (("agent", "store", "extra"), 1, "status.agent.store lacks"),
    ],
)
def test_a_json_of_another_shape_is_refused(path, value, message):
    data = json.loads(json.dumps(StatusReport(AGENT, None, CLUSTER, None).to_json()))
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(ShapeError, match=message.replace("(", r"\(")):
        from_json(StatusReport, data)
    del target[path[-1]]
    if path[-1] != "extra":
        with pytest.raises(ShapeError, match="lacks"):
            from_json(StatusReport, data)


def test_an_agent_that_says_more_than_this_cli_knows_is_still_read():
    data = json.loads(json.dumps(AGENT.__dict__, default=lambda o: o.__dict__))
    data["gateway_of_the_future"] = {"anything": 1}
    assert from_json(AgentStatus, data, strict=False) == AGENT


def test_the_terminal_view():
    lines = render(StatusReport(AGENT, None, CLUSTER, None), now=NOW)
    assert lines[:5] == [
        "agent h1: ready (ovs-overlay 0.1.0 under os-ken, socket /run/ovs-overlay/agent.sock)",
        "  generation 4, 2 full sync(s), last 12 s ago (2027-01-15 07:59:48 UTC)",
        "  bridge br-int (netdev), tunnel vxlan from 198.18.0.1",
        "  store etcd://198.18.1.1:2379: UNREACHABLE since 3 s ago (2027-01-15 07:59:57 UTC)",
        "  local endpoints 2, gateways 1, networks 1, peers 2, remote endpoints 4, flows 31, "
        "groups 1, policies 3",
    ]
    assert lines[5:] == [
        "",
        "hosts",
        "NAME  ALIVE  TUNNEL IP   LEASE LEFT  ENDPOINTS  BLOCKS",
        "h1    yes    198.18.0.1  5s          2          1",
        "h9    no     -           -           1          1",
        "",
        "networks",
        "NAME     VNI   INDEX  CIDR           MTU  GATEWAY  EGRESS  BLOCKS  "
        "ADDRESSES (USED/IN BLOCKS)",
        "default  5001  1      100.64.0.0/16  -    yes      -       2       3/128",
        "",
        "networkpolicies 5",
    ]


def test_status_asks_the_socket_the_agent_listens_on_by_default():
    from controller.config import OPTS
    from ctl.status_commands import DEFAULT_SOCKET

    assert next(o.default for o in OPTS if o.dest == "socket") == DEFAULT_SOCKET


def test_an_agent_that_is_not_there_is_one_sentence_naming_the_socket_and_the_fix(tmp_path):
    import socket

    from ctl.status_commands import ask_agent

    missing = str(tmp_path / "agent.sock")
    assert ask_agent(missing, "start it") == (
        None,
        f"no agent socket at {missing}: the agent is not running there; start it",
    )
    stale = str(tmp_path / "stale.sock")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(stale)  # bound, never listening: what a killed agent leaves
        assert ask_agent(stale, "start it") == (
            None,
            f"nothing listens on {stale}: the agent is not running; start it",
        )


def test_a_store_that_does_not_answer_leaves_the_cluster_part_out_with_its_reason():
    from contextlib import contextmanager

    from ctl.status_commands import read_cluster
    from store.kv import StoreUnavailableError

    @contextmanager
    def opener():
        raise StoreUnavailableError("no etcd endpoint of 198.18.1.1:2379 answered")
        yield

    assert read_cluster(opener) == (
        None,
        "the cluster part could not be read: no etcd endpoint of 198.18.1.1:2379 answered",
    )
