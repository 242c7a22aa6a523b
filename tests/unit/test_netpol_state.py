"""The policy state from the store's records: one address per pod, the newest (a pod
rescheduled off a dead host left its old record behind), this host's own ports first."""

from __future__ import annotations

from netpol import model
from netpol.state import LOCAL_REVISION, from_records


def pod(key: str) -> model.Pod:
    ns, name = key.split("/")
    return model.parse_pod({"metadata": {"name": name, "namespace": ns}})


def test_a_pod_is_at_its_newest_address_and_this_hosts_own_port_wins():
    db = pod("ns/db-0")
    stale, moved = ("ns/db-0", "100.64.0.5", 10), ("ns/db-0", "100.64.1.9", 42)
    assert [p.ip for p in from_records([db], [moved, stale]).pods] == ["100.64.1.9"]
    assert [p.ip for p in from_records([db], [stale, moved]).pods] == ["100.64.1.9"]
    here = ("ns/db-0", "100.64.2.7", LOCAL_REVISION)
    assert [p.ip for p in from_records([db], [moved, here]).pods] == ["100.64.2.7"]
    # An endpoint without its Pod object, and a Pod without an endpoint, are no pods.
    assert from_records([pod("ns/other")], [moved]).pods == ()
