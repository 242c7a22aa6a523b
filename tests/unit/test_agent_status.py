"""The agent's status answer (controller/status.py) and the progress a large full sync
logs (controller/reconciler.py), at the lowest layer that shows them."""

from __future__ import annotations

import json
import logging

from controller import reconciler as reconciler_mod
from controller.config import AgentConfig
from controller.membership import Membership
from controller.reconciler import Reconciler
from controller.status import agent_status, redact_store_url, version
from openflow.incremental import Peer, Upsert
from openflow.state import LocalPort, NetworkSpec, RemoteEndpoint
from store import open_cluster


def _config(store: str) -> AgentConfig:
    return AgentConfig(
        host="h1",
        tunnel_ip="198.18.0.1",
        store=store,
        ovsdb_sock="/nonexistent/db.sock",
        bridge="br-int",
        tunnel_type="vxlan",
        datapath_type=None,
        socket="/nonexistent/agent.sock",
        underlay_mtu=None,
        underlay_cidr=None,
        underlay_bridge="br-phy",
        host_ttl=40,
        canary_interval=2.0,
        controller_port=6653,
    )


def test_credentials_in_a_store_url_are_never_shown():
    assert redact_store_url("etcd://u:secret@10.0.0.1:2379,u:secret@10.0.0.2:2379?cacert=/ca") == (
        "etcd://10.0.0.1:2379,10.0.0.2:2379?cacert=/ca"
    )
    assert redact_store_url("sqlite:////var/lib/x.db") == "sqlite:////var/lib/x.db"


def test_status_counts_come_from_the_engine_and_the_store_health_from_the_keepalive(tmp_path):
    url = f"sqlite:///{tmp_path}/cluster.db"
    cluster = open_cluster(url)
    member = Membership(cluster, "h1", "198.18.0.1", ttl=40, republish=lambda: 0)
    assert not member.store_reachable  # not registered yet: nothing known
    member.register()
    rec = Reconciler(lambda: 0, lambda g: None, lambda: None, canary_interval=3600)
    net = NetworkSpec("default", 5001, 1)
    rec._engine.apply(  # the worker's engine, as the worker would fill it (not started)
        [
            Upsert("networks/default", net, (1,)),
            Upsert("hosts/h2", Peer("198.18.0.2"), (2,)),
            Upsert("port/a", LocalPort("default", 3, "0a:58:64:40:00:02", "100.64.0.2"), (0,)),
            Upsert(
                "endpoints/b",
                RemoteEndpoint("default", "198.18.0.2", "0a:58:64:40:00:40", "100.64.0.64"),
                (1,),
            ),
        ]
    )
    try:
        status = agent_status(_config(url), True, "netdev", rec, member, policies=2)
    finally:
        cluster.close()
    assert json.loads(json.dumps(status)) == status  # what the API sends
    assert status["counts"] == {
        "local_endpoints": 1,
        "gateways": 0,
        "networks": 1,
        "peers": 1,
        "remote_endpoints": 1,
        "flows": len(rec._engine.flows()),
        "groups": 1,
        "policies": 2,
    }
    assert status["store"]["url"] == url and status["store"]["reachable"] is True
    assert status["framework"] == "os-ken" and status["version"] == version() != "unknown"
    assert (status["host"], status["ready"], status["datapath_type"]) == ("h1", True, "netdev")
    assert status["last_full_sync"] is None and status["full_syncs"] == 0


def test_a_large_full_sync_logs_its_progress_and_a_small_one_does_not(caplog):
    with caplog.at_level(logging.INFO, logger="controller.reconciler"):
        total = 2 * reconciler_mod.PROGRESS_STEP + 1
        sent = reconciler_mod._Counted(iter(range(total)), reconciler_mod._progress(7, total, 0))
        assert sum(1 for _ in sent) == total
        small = reconciler_mod.PROGRESS_STEP
        quiet = reconciler_mod._Counted(iter(range(small)), reconciler_mod._progress(8, small, 0))
        assert sum(1 for _ in quiet) == small
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(" (")[0] for line in lines] == [
        f"br-int: generation 7: {reconciler_mod.PROGRESS_STEP} of {total} flows sent",
        f"br-int: generation 7: {2 * reconciler_mod.PROGRESS_STEP} of {total} flows sent",
    ]
