"""The agent's metrics after simulated events: CNI requests through the real API socket
(latency histograms by command and result, refusals by code and reason, one log line
each), flow and group counts kept from the messages sent, and the registry served as
Prometheus text."""

from __future__ import annotations

import logging
import urllib.request
from collections import Counter

from hypothesis import given, settings
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from controller import api_client, logformat, metrics, requestlog
from controller.admission import AttachError
from controller.api import ApiServer
from controller.policy_metrics import PolicyHitsCollector
from controller.reconciler import Reconciler, count_messages
from openflow.incremental import Engine, SetTunnel
from tests.unit.test_incremental import batches

SECONDS = "ovs_overlay_cni_request_seconds_count"
REFUSED = "ovs_overlay_refused_requests_total"


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def attach(network, container_id, ifname, netns, pod=None, **_):
    if container_id == "taken":
        raise AttachError("CNI_ARGS IP=100.64.0.9: in use", code=4, reason="address_in_use")
    if container_id == "odd":
        raise AttachError("refused for a reason nobody listed", code=4, reason="made-up")
    requestlog.note(steps={"ipam": 1.0, "veth": 10.0, "flows": 13.0})
    return {"ip": "100.64.0.7", "mac": "0a:58:64:40:00:07"}


def detach(network, container_id, ifname):
    requestlog.note(ip="100.64.0.7", pod="ns1/web-0", steps={"port and veth": 20.0})
    return {}


def test_cni_requests_are_timed_counted_and_logged_one_line_each(tmp_path, caplog):
    sock = str(tmp_path / "agent.sock")
    api = ApiServer(sock, {"attach": attach, "detach": detach})
    api.start()
    before = {
        "add_ok": sample(SECONDS, command="ADD", result="ok"),
        "add_4": sample(SECONDS, command="ADD", result="4"),
        "del_ok": sample(SECONDS, command="DEL", result="ok"),
        "in_use": sample(REFUSED, command="ADD", code="4", reason="address_in_use"),
        "other": sample(REFUSED, command="ADD", code="4", reason="other"),
        "bad": sample(REFUSED, command="unknown", code="6", reason="bad_request"),
        "args": sample(REFUSED, command="DEL", code="7", reason="bad_arguments"),
    }
    common = {"network": "default", "ifname": "eth0", "netns": "/run/netns/x"}
    try:
        with caplog.at_level(logging.INFO, logger="controller.requestlog"):
            assert api_client.call(sock, "attach", container_id="c1", pod="ns1/web-0", **common)[
                "ok"
            ]
            assert api_client.call(sock, "attach", container_id="taken", **common)["code"] == 4
            assert api_client.call(sock, "attach", container_id="odd", **common)["code"] == 4
            assert api_client.call(
                sock, "detach", container_id="c1", network="default", ifname="eth0"
            )["ok"]
            assert api_client.call(sock, "detach", container_id="c1")["code"] == 7
            assert api_client.call(sock, "no-such-op")["code"] == 6
    finally:
        api.stop()

    assert sample(SECONDS, command="ADD", result="ok") == before["add_ok"] + 1
    assert sample(SECONDS, command="ADD", result="4") == before["add_4"] + 2
    assert sample(SECONDS, command="DEL", result="ok") == before["del_ok"] + 1
    assert sample(REFUSED, command="ADD", code="4", reason="address_in_use") == before["in_use"] + 1
    # A reason outside the closed set is counted as "other": the label set stays bounded.
    assert sample(REFUSED, command="ADD", code="4", reason="other") == before["other"] + 1
    assert sample(REFUSED, command="unknown", code="6", reason="bad_request") == before["bad"] + 1
    assert sample(REFUSED, command="DEL", code="7", reason="bad_arguments") == before["args"] + 1
    # No container id or pod ever becomes a label.
    labels = {
        v
        for family in metrics.REGISTRY.collect()
        for s in family.samples
        for v in s.labels.values()
    }
    assert not labels & {"c1", "taken", "odd", "ns1/web-0", "100.64.0.7"}

    lines = [r for r in caplog.records if r.name == "controller.requestlog"]
    assert len(lines) == 6  # one per request
    add, taken, _odd, delete, _bad_args, _bad_op = (
        logformat.parse_kv(logformat.KeyValueFormatter().format(r)) for r in lines
    )
    assert add["msg"].startswith("attached c1/eth0 as 100.64.0.7 in ")
    assert add["msg"].endswith(" ms (ipam 1, veth 10, flows 13)")
    assert (add["cni"], add["container"], add["ifname"], add["pod"]) == (
        "ADD",
        "c1",
        "eth0",
        "ns1/web-0",
    )
    assert (add["network"], add["ip"], add["result"]) == ("default", "100.64.0.7", "ok")
    assert float(add["duration_ms"]) >= 0 and add["ms_veth"] == "10.0"
    assert (
        taken["msg"] == "attach of taken/eth0 refused (CNI error 4): CNI_ARGS IP=100.64.0.9: in use"
    )
    assert (taken["level"], taken["result"], taken["error"]) == (
        "warning",
        "4",
        "CNI_ARGS IP=100.64.0.9: in use",
    )
    assert delete["msg"].endswith(" ms (port and veth 20)")
    assert delete["ms_port_and_veth"] == "20.0"  # a key, whatever the step's name
    assert (delete["cni"], delete["ip"], delete["pod"], delete["result"]) == (
        "DEL",
        "100.64.0.7",
        "ns1/web-0",
        "ok",
    )


@settings(max_examples=100, deadline=None)
@given(batches)
def test_flow_counts_kept_from_incremental_messages_equal_the_engines_flows(batches):
    engine = Engine(tunnel_ofport=1, generation=1)
    by_table = Counter(f.table.name for f in engine.flows())  # as a full sync counts them
    groups = len(engine.groups())
    tunnel = 1
    for batch in batches:
        batch = [SetTunnel(7 if tunnel == 1 else 1) if c is None else c for c in batch]
        tunnel = next((c.ofport for c in reversed(batch) if isinstance(c, SetTunnel)), tunnel)
        messages, _ = engine.apply(batch)
        groups += count_messages(by_table, messages)
        assert +by_table == Counter(f.table.name for f in engine.flows())
        assert groups == len(engine.groups())


def snapshot() -> metrics.Snapshot:
    return metrics.Snapshot(
        local_endpoints=2,
        peers=3,
        flows_by_table={"classifier": 5, "l2_lookup": 7},
        groups=1,
        generation=4,
        full_syncs=1,
        openflow_connected=True,
        ovsdb_reconnects=0,
        store_up=True,
        ready=True,
    )


def test_the_registry_is_served_as_prometheus_text_with_the_agents_state():
    server = metrics.MetricsServer("127.0.0.1", 0, snapshot)
    try:
        host, port = server.address
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
    finally:
        server.close()
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert values[("ovs_overlay_endpoints", ())] == 2
    assert values[("ovs_overlay_peers", ())] == 3
    assert values[("ovs_overlay_flows", (("table", "l2_lookup"),))] == 7
    assert values[("ovs_overlay_groups", ())] == 1
    assert values[("ovs_overlay_store_up", ())] == 1
    assert values[("ovs_overlay_ovsdb_reconnects_total", ())] == 0
    assert (
        "ovs_overlay_cni_request_seconds_count",
        (("command", "ADD"), ("result", "ok")),
    ) in values
    assert ("ovs_overlay_reconcile_seconds_count", (("kind", "full_sync"),)) in values
    # The process's own registry: no default process or platform collectors.
    assert not any(name.startswith(("process_", "python_")) for name, _ in values)
    assert not any(name.endswith("_created") for name, _ in values)


def test_metrics_port_0_serves_nothing():
    assert metrics.serve("127.0.0.1", 0, snapshot) is None


def test_without_a_switch_a_scrape_goes_without_policy_hits_and_counts_it():
    """A scrape never waits for a switch that is not there: the policy series are left
    out and the failure is counted; the registry's other metrics are served as ever."""
    rec = Reconciler(lambda: 0, lambda g: None, lambda: None, canary_interval=3600)
    collector = PolicyHitsCollector(rec)
    metrics.REGISTRY.register(collector)
    try:
        first = {
            f.name: f
            for f in text_string_to_metric_families(generate_latest(metrics.REGISTRY).decode())
        }
        second = {
            f.name: f
            for f in text_string_to_metric_families(generate_latest(metrics.REGISTRY).decode())
        }
    finally:
        metrics.REGISTRY.unregister(collector)
    assert "ovs_overlay_policy_rule_packets" not in first
    assert "ovs_overlay_policy_denied_packets" not in first
    assert first["ovs_overlay_policy_stats_failures"].samples[0].value == 1
    assert second["ovs_overlay_policy_stats_failures"].samples[0].value == 2
    assert "ovs_overlay_refused_requests" in first
