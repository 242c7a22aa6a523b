"""The ofproto/trace parser and its explanation, on real outputs saved from a 2-host lab
(tests/unit/data/trace/: h1 198.18.0.1 with pod p1 100.64.0.3 on port 3 and gateway
100.64.0.2 on port 2; h2 198.18.0.2 with pod p1 100.64.0.65; tunnel port 1)."""

from __future__ import annotations

import dataclasses
import json
import pathlib

import pytest

from ctl import trace_explain
from ctl.status_report import ShapeError, from_json
from ctl.trace_commands import Drop, Forward, TraceReport
from ctl.trace_explain import Directory, HostView, PacketFacts
from ctl.trace_parse import parse
from store.cluster import Endpoint, Host, HostGateway, Network

DATA = pathlib.Path(__file__).parent / "data" / "trace"


def passes(name: str):
    return parse((DATA / f"{name}.txt").read_text())


D = Directory(
    hosts=(
        Host("h1", "198.18.0.1", 1, (HostGateway("default", "100.64.0.2", "0a:58:64:40:00:02"),)),
        Host("h2", "198.18.0.2", 2, (HostGateway("default", "100.64.0.64", "0a:58:64:40:00:40"),)),
    ),
    networks=(Network("default", 5001, "100.64.0.0/16", index=1),),
    endpoints=(
        Endpoint(
            "default", "h1", "L-h1-p1/eth0", "0a:58:64:40:00:03", "100.64.0.3", "L-h1-p1", "eth0"
        ),
        Endpoint(
            "default", "h2", "L-h2-p1/eth0", "0a:58:64:40:00:41", "100.64.0.65", "L-h2-p1", "eth0"
        ),
    ),
)
H1 = HostView(
    "h1",
    {1: "tun-vxlan", 2: "overlay-gw0", 3: "p1port"},
    {"tun-vxlan": "the tunnel port", "overlay-gw0": "h1's gateway port", "p1port": "pod h1/p1"},
    "vxlan",
)


def test_a_remote_pod_packet_goes_through_named_tables_to_the_tunnel():
    [one] = passes("pod_to_remote_pod")
    assert [s.table_id for s in one.steps] == [0, 10, 20, 50, 80, 90]  # br-phy's step skipped
    assert one.steps[1].match == "ip,in_port=3,dl_src=0a:58:64:40:00:03,nw_src=100.64.0.3"
    assert one.steps[2].match == "" and one.steps[2].cookie == 0x100000000000001
    assert one.steps[-1].output_ports == (1,)
    assert one.datapath_actions.startswith("tnl_push(")
    steps = [trace_explain.explain(s, H1, D) for s in one.steps]
    assert [s.table for s in steps] == [
        "classifier",
        "port_security",
        "arp_responder",
        "l2_forward",
        "host_conntrack",
        "output",
    ]
    assert "100.64.0.3 is h1/p1's own address" in steps[1].matched
    assert steps[3].feature == "l2_remote"
    assert "to h2 198.18.0.2 over vxlan, VNI 5001" in steps[3].explained
    assert trace_explain.final((one,))[0] == "output"


def test_an_address_two_networks_share_is_named_in_the_packets_network():
    # blue reuses default's CIDR: its pod b2 has p1's address and (derived) MAC.  The
    # port_security flow does not match the network: the packet's own names the owner.
    blue = Network("blue", 5002, "100.64.0.0/16", index=2)
    b2 = Endpoint(
        "blue", "h1", "L-h1-b2/eth0", "0a:58:64:40:00:03", "100.64.0.3", "L-h1-b2", "eth0"
    )
    both = dataclasses.replace(D, networks=(blue, *D.networks), endpoints=(b2, *D.endpoints))
    [one] = passes("pod_to_remote_pod")
    step = trace_explain.explain(one.steps[1], H1, both, "default")
    assert "100.64.0.3 is h1/p1's own address" in step.matched
    assert "b2" not in step.matched


def test_conntrack_recirculation_is_a_second_pass_whose_output_counts():
    first, second = passes("tunnel_to_local_pod")
    assert first.datapath_actions == "ct(zone=1),recirc(0x1)"
    assert first.steps[-1].actions == ("ct(table=81,zone=NXM_NX_REG2[0..15])", "drop")
    assert [s.table_id for s in second.steps] == [81, 90]
    kind, _, ports = trace_explain.final((first, second))
    assert (kind, ports) == ("output", (3,))


@pytest.mark.parametrize(
    ("name", "table", "packet", "reason"),
    [
        (
            "forged_source_ip",
            10,
            PacketFacts(
                "p1port",
                "0a:58:64:40:00:03",
                "0a:58:64:40:00:41",
                "100.64.0.99",
                "100.64.0.65",
                "default",
            ),
            "100.64.0.99 is not h1/p1's address",
        ),
        (
            "vxlan_from_non_peer",
            0,
            PacketFacts(
                "tun-vxlan",
                "0a:58:64:40:00:41",
                "0a:58:64:40:00:03",
                "100.64.0.65",
                "100.64.0.3",
                "default",
                "198.18.0.99",
                5001,
            ),
            "VXLAN from 198.18.0.99, not a peer",
        ),
        (
            "unknown_destination_mac",
            50,
            PacketFacts(
                "p1port",
                "0a:58:64:40:00:03",
                "0a:58:64:40:00:77",
                "100.64.0.3",
                "100.64.0.77",
                "default",
            ),
            "0a:58:64:40:00:77 is not known in network default",
        ),
    ],
)
def test_a_drop_names_its_table_and_reason(name, table, packet, reason):
    trace = passes(name)
    kind, last, ports = trace_explain.final(trace)
    assert (kind, last.table_id, last.actions, ports) == ("dropped", table, ("drop",), ())
    assert trace_explain.drop_reason(last.table_id, packet, H1, D) == reason


def test_output_to_the_gateway_port_is_the_host():
    [one] = passes("pod_to_outside")
    kind, _, ports = trace_explain.final((one,))
    assert (kind, ports) == ("output", (2,))
    assert "h1's gateway" in trace_explain.explain(one.steps[3], H1, D).matched


def test_text_that_is_no_trace_is_refused():
    with pytest.raises(ValueError, match="no datapath actions"):
        parse("ovs-appctl: cannot connect\n")


def test_the_json_report_round_trips_through_the_typed_checker():
    [one] = passes("forged_source_ip")
    steps = tuple(trace_explain.explain(s, H1, D) for s in one.steps)
    report = TraceReport(
        "h1/p1",
        "h2/p1",
        "in_port=...",
        (),
        steps,
        "dropped",
        None,
        Drop("h1", "port_security", "why"),
    )
    value = json.loads(json.dumps(dataclasses.asdict(report)))
    assert from_json(TraceReport, value, where="trace") == report
    del value["verdict"]
    with pytest.raises(ShapeError):
        from_json(TraceReport, value, where="trace")


def test_a_forwarded_trace_round_trips_and_an_unknown_verdict_is_refused():
    [one] = passes("pod_to_remote_pod")
    steps = tuple(trace_explain.explain(s, H1, D) for s in one.steps)
    command = "ovs-overlayctl trace --arriving-from 198.18.0.1 --vni 5001 --from a/b --to c/d"
    report = TraceReport(
        "a/b", "c/d", "in_port=...", (), steps, "forwarded", None, None,
        Forward("h2", "198.18.0.2", 5001, command),
    )  # fmt: skip
    value = json.loads(json.dumps(dataclasses.asdict(report)))
    assert from_json(TraceReport, value, where="trace") == report
    assert value["forwarded"]["command"] == command
    value["verdict"] = "tunnelled"
    with pytest.raises(ShapeError, match="trace.verdict is 'tunnelled', not one of"):
        from_json(TraceReport, value, where="trace")
    del value["forwarded"]
    with pytest.raises(ShapeError):
        from_json(TraceReport, value, where="trace")
