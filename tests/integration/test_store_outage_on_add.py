"""An ADD while the cluster store is away: CNI code 11 naming the store, and nothing left
behind, on a real OVSDB and real namespaces, with a SQLite store that really is locked (a
second connection holding its write lock, as a stuck writer would) and a real etcd that
really is down."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest
from pyroute2 import IPRoute

from controller import netns as agent_netns
from controller.admission import AttachError
from controller.endpoints import (
    HOST_PORT_PREFIX,
    AttachRequest,
    EndpointManager,
    host_port_name,
)
from lab import naming, netns
from openflow.tables import table_names
from ovsdb.client import IntegrationBridge, OvsdbClient
from ovsdb.datapath import choose_datapath_type
from ovsdb.endpoint import EndpointPort
from store import open_cluster
from store.cluster import ClusterState
from store.sqlite import SqliteKvStore
from tests.etcd_server import EtcdCluster
from tests.helpers import host_paths

pytestmark = pytest.mark.integration

BRIDGE = "br-outage"


@pytest.fixture
def setup(one_host_lab, tmp_path):
    """An EndpointManager in the lab host's namespace, its store a file with a short
    busy timeout; yields (manager, store path, host namespace, lock/unlock, publish hook)."""
    path = str(tmp_path / "cluster.db")
    cluster = ClusterState(SqliteKvStore(path, busy_timeout=0.3))
    cluster.create_network("default", vni=5001, cidr="100.64.0.0/16")
    ovsdb = OvsdbClient(host_paths(one_host_lab.name).db_sock)
    ovsdb.ensure_integration_bridge(
        IntegrationBridge(BRIDGE, choose_datapath_type(), 6653, table_names())
    )
    locker = sqlite3.connect(path, isolation_level=None)
    hooks = {"publish": lambda: None}

    def lock() -> None:
        locker.execute("BEGIN IMMEDIATE")  # the write lock, held until unlock

    def unlock() -> None:
        locker.execute("ROLLBACK")

    manager = EndpointManager(
        "h1",
        BRIDGE,
        ovsdb,
        cluster,
        mtu_for=lambda network: 1450,
        gateway_for=lambda network: "100.64.0.1",
        publish=lambda: hooks["publish"](),
        missing_port_flows=lambda ofport: [],
    )
    host_ns = naming.host_namespace(one_host_lab.name, "h1")
    pods = []

    def pod(tag: str) -> str:
        name = f"{one_host_lab.name}-out-{tag}"
        netns.create_namespace(name)
        pods.append(name)
        return name

    try:
        yield manager, path, host_ns, lock, unlock, hooks, pod
    finally:
        if locker.in_transaction:
            unlock()
        locker.close()
        for name in pods:
            netns.delete_namespace(name)
        ovsdb.delete_bridge(BRIDGE)
        ovsdb.close()
        cluster.close()


def attach(manager, host_ns, pod_ns):
    with agent_netns.in_namespace(host_ns):  # veths are made in the host's namespace
        return manager.attach(AttachRequest("default", pod_ns, "eth0", f"/run/netns/{pod_ns}"))


def detach(manager, host_ns, pod_ns):
    with agent_netns.in_namespace(host_ns):
        manager.detach("default", pod_ns, "eth0")


def leftovers(manager, host_ns):
    with agent_netns.in_namespace(host_ns), IPRoute() as ipr:
        veths = [
            link.get("IFLA_IFNAME")
            for link in ipr.get_links()
            if link.get("IFLA_IFNAME", "").startswith(HOST_PORT_PREFIX)
        ]
    ports = [p.endpoint.port for p in manager.ovsdb.list_endpoint_ports(BRIDGE)]
    c = manager.cluster
    return veths, ports, c.allocations("default"), c.list_endpoints(), c.kv.range("macs/")[0]


EMPTY = ([], [], {}, [], [])


def test_an_add_with_the_store_locked_is_code_11_naming_it_and_leaves_nothing(setup):
    manager, path, host_ns, lock, unlock, _, pod = setup
    p = pod("a")
    lock()
    try:
        with pytest.raises(AttachError) as err:
            attach(manager, host_ns, p)
    finally:
        unlock()
    assert err.value.code == 11
    assert path in str(err.value) and "try again when the store is back" in str(err.value)
    assert leftovers(manager, host_ns) == EMPTY
    attach(manager, host_ns, p)  # the store is back: the retry works
    detach(manager, host_ns, p)
    assert leftovers(manager, host_ns) == EMPTY


def test_records_a_failed_rollback_could_not_remove_go_with_the_next_request(setup):
    manager, path, host_ns, lock, unlock, hooks, pod = setup
    first, second = pod("b"), pod("c")

    def publish_fails_and_the_store_goes() -> None:
        lock()  # the store goes away just as the flows fail to come
        raise AttachError("br-int did not take the new flows", code=11)

    hooks["publish"] = publish_fails_and_the_store_goes
    with pytest.raises(AttachError, match="did not take the new flows"):
        attach(manager, host_ns, first)
    unlock()
    veths, ports, allocations, endpoints, macs = leftovers(manager, host_ns)
    assert (veths, ports) == ([], [])  # the local half is undone
    assert list(allocations.values()) == [f"{first}/eth0"]  # the store's half could not be
    assert [e.attachment for e in endpoints] == [f"{first}/eth0"] and len(macs) == 1
    hooks["publish"] = lambda: None
    attach(manager, host_ns, second)  # the next request removes them first
    _, _, allocations, endpoints, macs = leftovers(manager, host_ns)
    assert list(allocations.values()) == [f"{second}/eth0"]
    assert [e.attachment for e in endpoints] == [f"{second}/eth0"] and len(macs) == 1
    detach(manager, host_ns, second)
    assert leftovers(manager, host_ns) == EMPTY


def test_records_a_del_left_while_the_store_was_away_go_with_no_request(setup):
    """A DEL while the store is locked removes the port and veth and fails with 11; once
    the store is back, the agent's cleanup thread releases the address, endpoint record
    and MAC claim by itself: no other request comes (a watch may never have noticed a short
    outage, so nothing but the cleanup's own retry can be relied on)."""
    manager, _, host_ns, lock, unlock, _, pod = setup
    p = pod("del")
    attach(manager, host_ns, p)
    stop = threading.Event()
    cleaner = threading.Thread(target=manager.keep_store_clean, args=(stop,))
    cleaner.start()
    try:
        lock()
        try:
            with pytest.raises(AttachError) as err:
                detach(manager, host_ns, p)
            assert err.value.code == 11
            veths, ports, allocations, endpoints, macs = leftovers(manager, host_ns)
            assert (veths, ports) == ([], [])  # the host's half went at once
            assert list(allocations.values()) == [f"{p}/eth0"] and len(macs) == 1
        finally:
            unlock()
        gone_by = time.monotonic() + 30  # a bound for a hung test, not a speed goal
        while leftovers(manager, host_ns) != EMPTY:
            assert time.monotonic() < gone_by, leftovers(manager, host_ns)
            time.sleep(0.1)
    finally:
        stop.set()
        manager.wake_store_cleanup()
        cleaner.join()


def test_an_add_with_etcd_down_is_code_11_naming_its_endpoints(one_host_lab):
    """A real etcd that stops answering (its only member killed): the ADD's first store
    call fails within the client's timeout, and nothing is left on the host or, once etcd
    is back, in the store.  etcd runs inside the lab host's namespace (forked from this
    thread while it is there), so its 127.0.0.1 is the host's, as the agent's would be."""
    host_ns = naming.host_namespace(one_host_lab.name, "h1")
    pod = f"{one_host_lab.name}-out-etcd"
    netns.create_namespace(pod)
    try:
        with agent_netns.in_namespace(host_ns):
            etcd = EtcdCluster(1)
            try:
                cluster = open_cluster(etcd.url(timeout=1))
                cluster.create_network("default", vni=5001, cidr="100.64.0.0/16")
                ovsdb = OvsdbClient(host_paths(one_host_lab.name).db_sock)
                ovsdb.ensure_integration_bridge(
                    IntegrationBridge(BRIDGE, choose_datapath_type(), 6653, table_names())
                )
                manager = EndpointManager(
                    "h1", BRIDGE, ovsdb, cluster, lambda n: 1450, lambda n: "100.64.0.1",
                    lambda: None, lambda ofport: [],
                )  # fmt: skip
                try:
                    etcd.kill(0)
                    with pytest.raises(AttachError) as err:
                        attach(manager, host_ns, pod)
                    assert err.value.code == 11
                    assert etcd.endpoints in str(err.value), err.value
                    assert "try again when the store is back" in str(err.value)
                    etcd.restart(0)
                    assert leftovers(manager, host_ns) == EMPTY
                    attach(manager, host_ns, pod)
                    detach(manager, host_ns, pod)
                    assert leftovers(manager, host_ns) == EMPTY
                finally:
                    ovsdb.delete_bridge(BRIDGE)
                    ovsdb.close()
                    cluster.close()
            finally:
                etcd.stop()
    finally:
        netns.delete_namespace(pod)


def test_an_agent_back_releases_a_mac_claim_an_interrupted_add_left(setup):
    """An agent killed between the MAC claim and the endpoint record leaves a claim with no
    attachment; its reconcile at start releases it (and keeps a live attachment's)."""
    manager, _, host_ns, _, _, _, pod = setup
    live = pod("live")
    attach(manager, host_ns, live)
    manager.cluster.claim_mac("default", "02:00:00:00:00:42", "gone/eth0", "h1")
    manager.cluster.claim_mac("default", "02:00:00:00:00:43", "elsewhere/eth0", "h2")
    with agent_netns.in_namespace(host_ns):
        removed = manager.reconcile()
    assert removed == ["MAC 02:00:00:00:00:42 of gone/eth0 in default (no endpoint)"]
    claims = manager.cluster.mac_claims_of("h1")
    assert [attachment for _, _, attachment in claims] == [f"{live}/eth0"]
    assert manager.cluster.mac_claims_of("h2")  # another host's claim is not ours to drop
    manager.cluster.release_mac("default", "02:00:00:00:00:43", "elsewhere/eth0", "h2")
    detach(manager, host_ns, live)
    assert leftovers(manager, host_ns) == EMPTY


def test_del_after_an_add_killed_between_port_and_record_releases_its_mac(setup):
    """What an agent killed after making the port but before writing the endpoint record
    leaves (address, MAC claim, port; no record): the runtime's DEL removes all of it."""
    manager, _, host_ns, _, _, _, _ = setup
    cluster, attachment = manager.cluster, "killed/eth0"
    ip = cluster.allocate_ip("default", "h1", attachment)
    cluster.claim_mac("default", "02:00:00:00:00:44", attachment, "h1")
    with agent_netns.in_namespace(host_ns), IPRoute() as ipr:  # the veth it had made
        ipr.link("add", ifname=host_port_name("killed", "eth0"), kind="veth", peer="killed0")
    manager.ovsdb.add_endpoint_port(
        BRIDGE,
        EndpointPort(
            host_port_name("killed", "eth0"), "default", 5001, "killed", "eth0",
            "02:00:00:00:00:44", ip,
        ),
    )  # fmt: skip
    detach(manager, host_ns, "killed")
    assert leftovers(manager, host_ns) == EMPTY
