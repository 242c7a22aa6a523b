"""The agent's /metrics scraped in a lab host, from inside its namespace (where the agent
listens on 127.0.0.1:9810), after CNI ADDs and DELs: the latency histograms count them,
the endpoint count follows, and the flows by table are what br-int really has.  The
agent's log has one key=value line per request, with its fields."""

from __future__ import annotations

import collections
import os
import re
import time

import pytest

from controller import logformat
from lab import lab, pods
from tests.helpers import host_paths, ovs, running_lab, scrape

pytestmark = pytest.mark.lab

RESYNCED_WITHIN = 30.0  # waits for the agents, not measures


def requests(values: dict, command: str) -> float:
    return values.get(
        ("ovs_overlay_cni_request_seconds_count", (("command", command), ("result", "ok"))), 0
    )


def flows_on_switch(name: str, host: str) -> collections.Counter:
    dump = ovs(
        name, host, "ovs-ofctl", "-O", "OpenFlow13", "--names", "--no-stats", "dump-flows", "br-int"
    )
    # The flow's own table, not a table an action names (ct(table=…), resubmit).
    return collections.Counter(re.findall(r"^\s*cookie=\S+\s+table=\"?(\w+)", dump, re.M))


def test_metrics_count_adds_and_dels_and_br_ints_flows():
    with running_lab(2) as name:
        before = scrape(name, "h1")
        assert before[("ovs_overlay_ready", ())] == 1
        assert before[("ovs_overlay_peers", ())] == 1
        assert requests(before, "ADD") == 0

        a = pods.pod_add(name, "h1", "a")
        pods.pod_add(name, "h1", "b")
        c = pods.pod_add(name, "h2", "c")
        pods.pod_del(name, "h1", "b")
        # h1 learns of c by watch: once a reaches c, nothing is on its way to br-int.
        deadline = time.monotonic() + RESYNCED_WITHIN
        while not lab.ping_from(pods.pod_namespace(name, "h1", "a"), c["ip"]):
            assert time.monotonic() < deadline, "h1 never got the flows to h2's pod"

        after = scrape(name, "h1")
        assert requests(after, "ADD") == 2
        assert requests(after, "DEL") == 1
        assert after[("ovs_overlay_endpoints", ())] == 1
        assert scrape(name, "h2")[("ovs_overlay_endpoints", ())] == 1
        # What the agent counted as it sent, table by table, is what br-int has.
        counted = {
            labels[0][1]: int(v)
            for (metric, labels), v in after.items()
            if metric == "ovs_overlay_flows" and v
        }
        assert counted == dict(flows_on_switch(name, "h1"))
        assert after[("ovs_overlay_reconcile_seconds_count", (("kind", "full_sync"),))] >= 1
        assert after[("ovs_overlay_reconcile_seconds_count", (("kind", "incremental"),))] >= 2
        assert after[("ovs_overlay_store_watch_lag_seconds_count", ())] >= 1  # h2's pod c

        # One key=value line per request, with the request's fields.
        with open(os.path.join(host_paths(name, "h1").logdir, "agent.log")) as f:
            lines = [logformat.parse_kv(line) for line in f if " cni=" in line]
        assert [(r["cni"], r["result"]) for r in lines] == [
            ("ADD", "ok"),
            ("ADD", "ok"),
            ("DEL", "ok"),
        ]
        add = lines[0]
        assert (add["ip"], add["network"], add["ifname"]) == (a["ip"], "default", "eth0")
        assert add["msg"].startswith(f"attached {add['container']}/eth0 as {a['ip']} in ")
        assert float(add["duration_ms"]) > 0 and "ms_flows" in add
        assert lines[2]["ip"] and lines[2]["container"] == lines[1]["container"]

        # ovs-vswitchd restarted: a reconnect, a full sync, and the counts start over from
        # what that sync sent, still equal to br-int's.
        lab.restart_vswitchd(name, "h1")
        deadline = time.monotonic() + RESYNCED_WITHIN  # as test_restarts: traffic is back
        while not lab.ping_from(pods.pod_namespace(name, "h1", "a"), c["ip"]):
            assert time.monotonic() < deadline, "h1's pipeline did not come back"
        again = scrape(name, "h1")
        assert again[("ovs_overlay_full_syncs_total", ())] >= 2
        assert again[("ovs_overlay_openflow_reconnects_total", ())] >= 1
        assert again[("ovs_overlay_openflow_disconnects_total", ())] >= 1
        counted = {
            labels[0][1]: int(v)
            for (metric, labels), v in scrape(name, "h1").items()
            if metric == "ovs_overlay_flows" and v
        }
        assert counted == dict(flows_on_switch(name, "h1"))
