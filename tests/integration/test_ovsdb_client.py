"""The OVSDB client against a real ovsdb-server and ovs-vswitchd inside a lab host."""

from __future__ import annotations

import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from lab import netns, ovs_host
from lab.naming import INTEGRATION_BRIDGE
from openflow.tables import table_names
from ovsdb.client import IntegrationBridge, OvsdbClient, PortError
from ovsdb.datapath import choose_datapath_type
from ovsdb.endpoint import EndpointPort
from ovsdb.tunnel import TunnelPort
from tests.helpers import host_paths, ovs, ovs_map, rows

pytestmark = pytest.mark.integration


@pytest.fixture
def client(one_host_lab):
    with OvsdbClient(host_paths(one_host_lab.name).db_sock) as c:
        yield c


def spec(name="br-int"):
    return IntegrationBridge(
        name=name, datapath=choose_datapath_type(), controller_port=6653, table_names=table_names()
    )


def test_integration_bridge_as_the_agent_needs_it(one_host_lab, client):
    client.ensure_integration_bridge(spec("br-itest"))
    info = client.bridge_info("br-itest")
    # No openvswitch kernel module here: the automatic choice is the userspace datapath.
    assert info.datapath_type == "netdev"
    assert info.fail_mode == "secure"
    assert info.protocols == ("OpenFlow13",)
    assert info.controllers == ("tcp:127.0.0.1:6653",)
    # vswitchd retries the agent at least every second, not after up to 8 s.
    assert {r["max_backoff"] for r in rows(one_host_lab.name, "h1", "Controller")} == {1000}
    assert info.table_names == table_names()
    # vswitchd really made it, and OpenFlow tools show the table names.
    features = ovs(
        one_host_lab.name, "h1", "ovs-ofctl", "-O", "OpenFlow13", "dump-table-features", "br-itest"
    )
    assert 'table 50 ("l2_forward")' in features
    client.delete_bridge("br-itest")
    assert client.bridge_info("br-itest") is None


def test_ensuring_twice_changes_nothing(one_host_lab, client):
    name = one_host_lab.name
    client.ensure_integration_bridge(spec())
    before = {t: rows(name, "h1", t) for t in ("Bridge", "Controller", "Flow_Table", "Port")}
    client.ensure_integration_bridge(spec())
    client.ensure_tunnel_port(INTEGRATION_BRIDGE, TunnelPort())
    after = {t: rows(name, "h1", t) for t in ("Bridge", "Controller", "Flow_Table", "Port")}
    # Same rows, same UUIDs: in particular the controller row is not recreated, which
    # would make vswitchd drop its OpenFlow connection.
    for table in before:
        assert sorted(r["_uuid"][1] for r in after[table]) == sorted(
            r["_uuid"][1] for r in before[table]
        ), table


def test_flow_based_tunnel_port_and_type_change(one_host_lab, client):
    client.ensure_tunnel_port(INTEGRATION_BRIDGE, TunnelPort(tunnel_type="geneve", dst_port=6081))
    iface = client.interface(INTEGRATION_BRIDGE, "tun-geneve")
    assert iface["type"] == "geneve"
    assert iface["options"] == {
        "remote_ip": "flow",
        "key": "flow",
        "dst_port": "6081",
    }
    assert iface["ofport"] > 0  # vswitchd accepted it
    # Changing an option converges the existing port instead of failing or duplicating it.
    client.ensure_tunnel_port(INTEGRATION_BRIDGE, TunnelPort(tunnel_type="geneve", dst_port=6082))
    assert client.interface(INTEGRATION_BRIDGE, "tun-geneve")["options"]["dst_port"] == "6082"
    client.delete_port("tun-geneve")
    assert client.interface(INTEGRATION_BRIDGE, "tun-geneve") is None


def make_veth(lab_name: str, name: str) -> None:
    ns = f"{lab_name}-h1"
    netns.create_veth(ns, name, ns, name + "p", 1450)


def test_endpoint_ports_are_tagged_listed_and_removed(one_host_lab, client):
    name = one_host_lab.name
    make_veth(name, "vep1")
    make_veth(name, "vep2")
    eps = [
        EndpointPort("vep1", "default", 5001, "c1", "eth0", "0a:58:64:40:00:02", "100.64.0.2"),
        EndpointPort("vep2", "blue", 5002, "c2", "net1", "0a:58:64:40:01:02", "100.64.0.2"),
    ]
    for ep in eps:
        client.add_endpoint_port(INTEGRATION_BRIDGE, ep)
    client.add_endpoint_port(INTEGRATION_BRIDGE, eps[0])  # idempotent
    listed = client.list_endpoint_ports(INTEGRATION_BRIDGE)
    assert [a.endpoint for a in listed] == eps
    assert all(a.ofport and a.ofport > 0 for a in listed)
    # The tag is visible to any OVSDB tool, which is how the network is read back.
    ids = {r["name"]: ovs_map(r["external_ids"]) for r in rows(name, "h1", "Interface")}
    assert ids["vep2"]["ovs-overlay-network"] == "blue"
    assert ids["vep2"]["iface-id"] == "c2/net1"
    # The tunnel and bridge ports are not endpoints.
    assert {a.endpoint.port for a in listed} == {"vep1", "vep2"}

    client.delete_port("vep1")
    client.delete_port("vep1")  # already gone: fine
    assert [a.endpoint.port for a in client.list_endpoint_ports(INTEGRATION_BRIDGE)] == ["vep2"]
    client.delete_port("vep2")


def test_a_port_vswitchd_cannot_open_leaves_no_row(one_host_lab, client):
    ep = EndpointPort("vnothere", "default", 5001, "c9", "eth0", "0a:58:64:40:00:09", "100.64.0.9")
    with pytest.raises(PortError, match="could not open device vnothere"):
        client.add_endpoint_port(INTEGRATION_BRIDGE, ep)
    assert "vnothere" not in {r["name"] for r in rows(one_host_lab.name, "h1", "Port")}


def test_concurrent_port_adds_share_transactions_and_keep_their_own_errors(one_host_lab, client):
    """Twelve threads add ports at once, one of them for a device that does not exist:
    they go in fewer transactions than twelve (group commit: vswitchd reconfigures fewer
    times), the eleven get their ports, and only the twelfth gets the PortError."""
    name = one_host_lab.name
    good = [f"vgc{i}" for i in range(11)]
    for port in good:
        netns.run_in_namespace(
            f"{name}-h1", ["ip", "link", "add", port, "type", "veth", "peer", "name", port + "p"]
        )
    start = threading.Barrier(12)

    def add(port: str):
        ep = EndpointPort(port, "default", 5001, port, "eth0", "0a:58:64:40:00:09", "100.64.0.9")
        start.wait()
        try:
            client.add_endpoint_port(INTEGRATION_BRIDGE, ep)
        except PortError as exc:
            return str(exc)
        return None

    cfg_before = rows(name, "h1", "Open_vSwitch")[0]["next_cfg"]
    try:
        with ThreadPoolExecutor(max_workers=12) as pool:
            ports = [*good, "vgcnothere"]
            outcome = dict(zip(ports, pool.map(add, ports), strict=True))
        transactions = rows(name, "h1", "Open_vSwitch")[0]["next_cfg"] - cfg_before
        assert transactions < 12  # one of them is the refused port's removal
        assert outcome.pop("vgcnothere").startswith("ovs-vswitchd could not open device vgcnothere")
        assert outcome == dict.fromkeys(good)
        for port in good:
            assert client.interface(INTEGRATION_BRIDGE, port)["ofport"] > 0
        assert client.interface(INTEGRATION_BRIDGE, "vgcnothere") is None
    finally:
        for port in good:
            client.delete_port(port)
            netns.run_in_namespace(f"{name}-h1", ["ip", "link", "del", port])


def test_client_survives_an_ovsdb_server_restart(one_host_lab, client):
    name = one_host_lab.name
    paths = host_paths(name)
    client.ensure_integration_bridge(spec())
    bridges_before = sorted(r["_uuid"][1] for r in rows(name, "h1", "Bridge"))
    assert client.reconnects == 0

    old_pid = ovs_host.kill_daemon(paths, "ovsdb-server", signal.SIGKILL)
    assert old_pid is not None
    ovs_host.start_ovsdb_server(paths, f"{name}-h1")
    assert ovs_host.daemon_pid(paths, "ovsdb-server") not in (None, old_pid)

    # The same client object: its next calls reconnect and work, and create no duplicates.
    client.ensure_integration_bridge(spec())
    client.ensure_tunnel_port(INTEGRATION_BRIDGE, TunnelPort())
    assert client.bridge_info(INTEGRATION_BRIDGE).controllers == ("tcp:127.0.0.1:6653",)
    # A write reaches the new server only over a new connection (the calls above may have
    # found nothing to change in the replica): counted once, for the metric.
    client.set_bridge_external_ids(INTEGRATION_BRIDGE, {"ovs-overlay-test": "restarted"})
    assert client.reconnects == 1
    assert sorted(r["_uuid"][1] for r in rows(name, "h1", "Bridge")) == bridges_before
    assert len(rows(name, "h1", "Controller")) == len(
        {r["_uuid"][1] for r in rows(name, "h1", "Controller")}
    )
    ports = [r["name"] for r in rows(name, "h1", "Port")]
    assert len(ports) == len(set(ports))
