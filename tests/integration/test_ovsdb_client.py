"""The OVSDB client against a real ovsdb-server and ovs-vswitchd inside a lab host."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import struct
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from controller import netns as thread_netns
from controller import rtnl, veth
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


@contextlib.contextmanager
def database_writes(lab_name: str):
    """Yields a list that, after the block, holds the transactions ovsdb-server received
    meanwhile from clients other than ovs-vswitchd (whose own assert its lock): the
    server's own count, from its jsonrpc log at debug level (written before it answers)."""
    log = os.path.join(host_paths(lab_name).logdir, "ovsdb-server.log")
    ovs(lab_name, "h1", "ovs-appctl", "-t", "ovsdb-server", "vlog/set", "jsonrpc:file:dbg")
    found: list[list] = []
    try:
        with open(log) as f:
            f.seek(0, os.SEEK_END)
            yield found
            for line in f.read().splitlines():
                if 'received request, method="transact"' not in line:
                    continue
                ops = json.loads(line.split("params=", 1)[1].rsplit(", id=", 1)[0])[1:]
                if {"op": "assert", "lock": "ovs_vswitchd"} not in ops:
                    found.append(ops)
    finally:
        ovs(lab_name, "h1", "ovs-appctl", "-t", "ovsdb-server", "vlog/set", "jsonrpc:file:info")


def test_a_port_add_and_a_delete_are_one_transaction_each(one_host_lab, client):
    """An endpoint port (port, interface, its external_ids) goes in with the next_cfg bump
    in one transaction, and its ofport is read from the update vswitchd's own transaction
    brings, not asked for; a delete is one transaction too."""
    name = one_host_lab.name
    make_veth(name, "vtx1")
    ep = EndpointPort("vtx1", "default", 5001, "c1", "eth0", "0a:58:64:40:00:02", "100.64.0.2")
    try:
        with database_writes(name) as added:
            client.add_endpoint_port(INTEGRATION_BRIDGE, ep)
            attached = client.list_endpoint_ports(INTEGRATION_BRIDGE)
        assert [a.endpoint for a in attached] == [ep] and attached[0].ofport > 0
        assert len(added) == 1
        tables = sorted(op["table"] for op in added[0] if op["op"] in ("insert", "mutate"))
        assert tables == ["Bridge", "Interface", "Open_vSwitch", "Port"]
        with database_writes(name) as deleted:
            client.delete_port("vtx1")
        assert len(deleted) == 1
    finally:
        client.delete_port("vtx1")
        netns.run_in_namespace(f"{name}-h1", ["ip", "link", "del", "vtx1"])


IFF_LOWER_UP, IFF_RUNNING, IFF_DORMANT = 0x10000, 0x40, 0x20000  # carrier, not settings


def test_vswitchd_takes_the_host_end_without_changing_it(one_host_lab, client):
    """Each link change in the host's namespace makes vswitchd reconfigure every port.
    The host end is made as vswitchd wants it (promiscuous, up), so opening it changes
    none of its flags: every notification of it, from its creation until vswitchd has
    applied the port, carries the same flags but for the carrier."""
    name = one_host_lab.name
    pod = f"{name}-vp{secrets.token_hex(2)}"
    netns.create_namespace(pod)
    try:
        with thread_netns.in_namespace(f"{name}-h1"):
            events = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, rtnl.NETLINK_ROUTE)
            events.bind((0, 1))  # RTNLGRP_LINK
            veth.create(
                pod,
                host_port="ovotestp",
                ifname="eth0",
                mac="0a:58:64:40:00:03",
                ip="100.64.0.3",
                prefixlen=16,
                gateway="100.64.0.1",
                mtu=1450,
            )
            with rtnl.Rtnl() as host:
                index = host.link_index("ovotestp")
        ep = EndpointPort(
            "ovotestp", "default", 5001, "c3", "eth0", "0a:58:64:40:00:03", "100.64.0.3"
        )
        client.add_endpoint_port(INTEGRATION_BRIDGE, ep)  # returns once vswitchd applied it
        flags = set()
        events.setblocking(False)
        with contextlib.suppress(BlockingIOError), events:
            while data := events.recv(65536):
                offset = 0
                while offset < len(data):
                    length, kind = struct.unpack_from("=IH", data, offset)
                    _, _, ifindex, ifflags, _ = struct.unpack_from("=BxHiII", data, offset + 16)
                    if kind == rtnl.RTM_NEWLINK and ifindex == index:
                        flags.add(ifflags & ~(IFF_LOWER_UP | IFF_RUNNING | IFF_DORMANT))
                    offset += (length + 3) & ~3
        assert len(flags) == 1 and flags.pop() & rtnl.IFF_PROMISC
        assert client.interface(INTEGRATION_BRIDGE, "ovotestp")["ofport"] > 0
    finally:
        client.delete_port("ovotestp")
        netns.delete_namespace(pod)  # takes the veth along
