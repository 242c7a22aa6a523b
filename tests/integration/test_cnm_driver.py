"""Docker's remote drivers over their real socket, on a real OVSDB and real namespaces:
HTTP/1.1 + JSON as dockerd speaks it (bodies shaped as libnetwork's api.go), with the test
doing libnetwork's own part of a Join (moving the container end into a sandbox netns and
naming it eth0).  Every scenario ends by counting what is left: ports, veths, address and
MAC claims, endpoint records, Docker records."""

from __future__ import annotations

import http.client
import json
import secrets
import shutil
import socket
import sqlite3
import tempfile
import threading
import time

import pytest

from controller import netns as agent_netns
from controller.cnm import cleanup, network
from controller.cnm.common import UNBOUND_TTL, Context, endpoint_attachment
from controller.cnm.server import CnmServer
from controller.endpoints import EndpointManager, mac_for
from controller.hoststate import gateway_ip
from lab import naming, netns
from openflow.tables import table_names
from ovsdb.client import IntegrationBridge, OvsdbClient
from ovsdb.datapath import choose_datapath_type
from store import docker_records
from store.cluster import ClusterState
from store.kv import KvError
from store.sqlite import SqliteKvStore
from tests.helpers import host_paths, run

pytestmark = pytest.mark.integration

BRIDGE = "br-cnm"
NID = "1" * 64


class Docker:
    """dockerd's side of the socket: one kept-alive HTTP/1.1 connection, as pkg/plugins."""

    def __init__(self, path: str):
        self.conn = http.client.HTTPConnection("plugin")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        self.conn.sock = sock

    def call(self, method: str, body: object = None, raw: bytes | None = None):
        data = raw if raw is not None else json.dumps(body).encode()
        headers = {"Accept": "application/vnd.docker.plugins.v1.2+json"}
        self.conn.request("POST", f"/{method}", data, headers)
        resp = self.conn.getresponse()
        return resp.status, json.loads(resp.read())

    def ok(self, method: str, body: object = None) -> dict:
        status, answer = self.call(method, body)
        assert status == 200 and "Err" not in answer, answer
        return answer

    def refused(self, method: str, body: object = None, raw: bytes | None = None) -> str:
        status, answer = self.call(method, body, raw)
        assert status == 500, answer
        return answer["Err"]


@pytest.fixture
def driver(one_host_lab, tmp_path):
    """The driver's socket served from the lab host's namespace (its threads are born
    there), over a SQLite store with network blue; yields (docker, ctx, host ns, sandbox)."""
    # A short busy timeout: a test that holds the store's write lock (the store away)
    # sees a request fail in seconds, not SqliteKvStore's default half a minute.
    cluster = ClusterState(SqliteKvStore(str(tmp_path / "cluster.db"), busy_timeout=2.0))
    cluster.create_network("blue", vni=5002, cidr="100.65.0.0/16")
    ovsdb = OvsdbClient(host_paths(one_host_lab.name).db_sock)
    ovsdb.ensure_integration_bridge(
        IntegrationBridge(BRIDGE, choose_datapath_type(), 6653, table_names())
    )
    manager = EndpointManager(
        "h1",
        BRIDGE,
        ovsdb,
        cluster,
        mtu_for=lambda network: 1450,
        gateway_for=lambda network: gateway_ip(network.cidr),
        publish=lambda: None,  # no OpenFlow here: flows are the agent's, tested in tests/lab
        missing_port_flows=lambda ofport: [],
    )
    ctx = Context("h1", cluster, manager)
    host_ns = naming.host_namespace(one_host_lab.name, "h1")
    plugins = tempfile.mkdtemp(prefix="cnm")  # short: a unix socket path has 108 bytes
    sandboxes = []

    def sandbox() -> str:
        name = f"{one_host_lab.name}-sb{len(sandboxes)}"
        netns.create_namespace(name)
        sandboxes.append(name)
        return name

    server = CnmServer(plugins, ctx)
    with agent_netns.in_namespace(host_ns):
        server.start()
    docker = Docker(server.path)
    try:
        yield docker, ctx, host_ns, sandbox
    finally:
        docker.conn.close()
        server.stop()
        shutil.rmtree(plugins)
        for end in leftovers(ctx, host_ns)["veths"]:  # the lab's host outlives this test
            run(["ip", "-n", host_ns, "link", "del", end])
        for name in sandboxes:
            netns.delete_namespace(name)
        ovsdb.delete_bridge(BRIDGE)
        ovsdb.close()
        cluster.close()


def ip_in(namespace: str, *argv: str) -> str:
    result = run(["ip", "-n", namespace, *argv])
    assert result.returncode == 0, result.stderr
    return result.stdout


def move_into(host_ns: str, peer: str, sandbox: str, address: str, gateway: str) -> None:
    """libnetwork's part of a Join: the container end into the sandbox as eth0, addressed."""
    ip_in(host_ns, "link", "set", peer, "netns", sandbox)
    ip_in(sandbox, "link", "set", peer, "name", "eth0")
    ip_in(sandbox, "addr", "add", address, "dev", "eth0")
    ip_in(sandbox, "link", "set", "eth0", "up")
    ip_in(sandbox, "route", "add", "default", "via", gateway)


def leftovers(ctx: Context, host_ns: str) -> dict:
    links = ip_in(host_ns, "-br", "link").split("\n")
    cluster = ctx.cluster
    return {
        "veths": [
            line.split()[0].split("@")[0] for line in links if line.startswith(("ovo", "ovd"))
        ],
        "ports": [p.endpoint.port for p in ctx.endpoints.ovsdb.list_endpoint_ports(BRIDGE)],
        "addresses": cluster.allocations("blue"),
        "macs": cluster.mac_claims_of("h1"),
        "endpoints": cluster.list_endpoints(),
        "docker": [kv.key for kv in cluster.kv.range("docker/")[0]],
    }


NOTHING = {"veths": [], "ports": [], "addresses": {}, "macs": [], "endpoints": [], "docker": []}


def create_network(docker: Docker) -> str:
    pool = docker.ok(
        "IpamDriver.RequestPool",
        {
            "AddressSpace": "ovs-overlay",
            "Pool": "100.65.0.0/16",
            "SubPool": "",
            "Options": {"network": "blue"},
        },
    )
    gw = docker.ok(
        "IpamDriver.RequestAddress",
        {
            "PoolID": pool["PoolID"],
            "Address": "",
            "Options": {"RequestAddressType": "com.docker.network.gateway"},
        },
    )
    docker.ok(
        "NetworkDriver.CreateNetwork",
        {
            "NetworkID": NID,
            "Options": {
                "com.docker.network.enable_ipv6": False,
                "com.docker.network.generic": {"network": "blue"},
            },
            "IPv4Data": [
                {"AddressSpace": "ovs-overlay", "Pool": pool["Pool"], "Gateway": gw["Address"]}
            ],
            "IPv6Data": [],
        },
    )
    return pool["PoolID"]


def create_endpoint(docker: Docker, pool_id: str) -> tuple[str, str, str]:
    """RequestAddress then CreateEndpoint, as libnetwork orders them: (id, address, MAC)."""
    eid = secrets.token_hex(32)
    address = docker.ok("IpamDriver.RequestAddress", {"PoolID": pool_id, "Address": ""})["Address"]
    answer = docker.ok(
        "NetworkDriver.CreateEndpoint",
        {
            "NetworkID": NID,
            "EndpointID": eid,
            "Interface": {"Address": address, "AddressIPv6": "", "MacAddress": ""},
            "Options": {},
        },
    )
    return eid, address, answer["Interface"]["MacAddress"]


def join(docker: Docker, eid: str, sandbox: str) -> dict:
    return docker.ok(
        "NetworkDriver.Join",
        {
            "NetworkID": NID,
            "EndpointID": eid,
            "SandboxKey": f"/var/run/docker/netns/{sandbox}",
            "Options": {},
        },
    )


def test_a_container_lifecycle_as_dockerd_drives_it_leaves_nothing(driver):
    docker, ctx, host_ns, sandbox = driver
    assert docker.ok("Plugin.Activate") == {"Implements": ["NetworkDriver", "IpamDriver"]}
    assert docker.ok("NetworkDriver.GetCapabilities", {})["Scope"] == "local"
    pool_id = create_network(docker)
    eid, address, mac = create_endpoint(docker, pool_id)
    ip = address.split("/")[0]
    assert mac == mac_for(ip)
    sb = sandbox()
    answer = join(docker, eid, sb)
    peer = answer["InterfaceName"]["SrcName"]
    assert answer["InterfaceName"]["DstPrefix"] == "eth"
    assert answer["Gateway"] == "100.65.0.1" and answer["DisableGatewayService"] is True
    # The port is tagged by network like a CNI pod's, so pipeline, trace and endpoint list
    # see it; both veth ends at the network's MTU with TX checksum offload off.
    [port] = ctx.endpoints.ovsdb.list_endpoint_ports(BRIDGE)
    ep = port.endpoint
    assert (ep.network, ep.vni, ep.ip, ep.mac) == ("blue", 5002, ip, mac)
    assert ep.attachment == endpoint_attachment(eid)
    [record] = ctx.cluster.list_endpoints("blue")
    assert (record.host, record.ip, record.mac) == ("h1", ip, mac)
    for end in (ep.port, peer):
        assert "mtu 1450 " in ip_in(host_ns, "link", "show", end)
        tx = run(["ip", "netns", "exec", host_ns, "ethtool", "-k", end]).stdout
        assert "tx-checksumming: off" in tx
    assert f"link/ether {mac} " in ip_in(host_ns, "link", "show", peer)
    move_into(host_ns, peer, sb, address, answer["Gateway"])
    assert join(docker, eid, sb) == answer  # a repeated Join changes nothing
    docker.ok("NetworkDriver.Leave", {"NetworkID": NID, "EndpointID": eid})
    assert "eth0" not in ip_in(sb, "-br", "link")  # the pair went with the host end
    assert ctx.cluster.holder("blue", ip) == endpoint_attachment(eid)  # still DeleteEndpoint's
    assert docker.ok("NetworkDriver.Leave", {"NetworkID": NID, "EndpointID": eid}) == {}
    docker.ok("NetworkDriver.DeleteEndpoint", {"NetworkID": NID, "EndpointID": eid})
    docker.ok("IpamDriver.ReleaseAddress", {"PoolID": pool_id, "Address": ip})
    assert docker.ok("NetworkDriver.DeleteEndpoint", {"NetworkID": NID, "EndpointID": eid}) == {}
    docker.ok("IpamDriver.ReleasePool", {"PoolID": pool_id})
    docker.ok("NetworkDriver.DeleteNetwork", {"NetworkID": NID})
    assert leftovers(ctx, host_ns) == NOTHING
    assert ctx.cluster.get_network("blue") is not None  # not the driver's to delete


def test_malformed_requests_get_err_and_change_nothing(driver):
    docker, ctx, host_ns, sandbox = driver
    pool_id = create_network(docker)
    eid, _, _ = create_endpoint(docker, pool_id)
    before = leftovers(ctx, host_ns)
    assert "not JSON" in docker.refused("NetworkDriver.Join", raw=b'{"NetworkID": ')
    assert "EndpointID" in docker.refused(
        "NetworkDriver.Join", {"NetworkID": NID, "EndpointID": "x/y"}
    )
    unknown = {"NetworkID": NID, "EndpointID": "f" * 64, "SandboxKey": "/x"}
    assert "CreateEndpoint first" in docker.refused("NetworkDriver.Join", unknown)
    other = {
        "NetworkID": "2" * 64,
        "EndpointID": "f" * 64,
        "Interface": {"Address": "100.65.0.9/16"},
    }
    assert "no CreateNetwork reached this agent" in docker.refused(
        "NetworkDriver.CreateEndpoint", other
    )
    lost, _, _ = create_endpoint(docker, pool_id)
    ctx.cluster.release_attachment("blue", "h1", endpoint_attachment(lost), derive_mac=mac_for)
    before = leftovers(ctx, host_ns)
    lost_join = {"NetworkID": NID, "EndpointID": lost, "SandboxKey": "/x"}
    assert "no longer holds its address" in docker.refused("NetworkDriver.Join", lost_join)
    status, answer = docker.call("NetworkDriver.NoSuchMethod", {})
    assert status == 404 and "is not a method" in answer["Err"]
    assert leftovers(ctx, host_ns) == before
    # The connection and the server live on: the next request is served.
    join(docker, eid, sandbox())
    assert len(leftovers(ctx, host_ns)["ports"]) == 1


def test_what_a_killed_dockerd_left_goes_at_the_next_activate(driver):
    docker, ctx, host_ns, sandbox = driver
    pool_id = create_network(docker)
    # A running container, whose sandbox then dies with dockerd's containers.
    gone, gone_address, _ = create_endpoint(docker, pool_id)
    sb = sandbox()
    answer = join(docker, gone, sb)
    move_into(host_ns, answer["InterfaceName"]["SrcName"], sb, gone_address, "100.65.0.1")
    # Joined, but dockerd died before moving the container end.
    unmoved = create_endpoint(docker, pool_id)[0]
    join(docker, unmoved, sandbox())
    # Created, never joined; and an address asked for, never bound.
    create_endpoint(docker, pool_id)
    docker.ok("IpamDriver.RequestAddress", {"PoolID": pool_id, "Address": ""})
    # dockerd is killed; its containers' sandboxes die; a new dockerd activates the driver.
    netns.delete_namespace(sb)
    restarted = Docker(docker.conn.sock.getpeername())
    try:
        restarted.ok("Plugin.Activate")
    finally:
        restarted.conn.close()
    left = leftovers(ctx, host_ns)
    assert left["docker"] == [f"docker/h1/networks/{NID}"]  # the network stays, as in dockerd
    assert {k: v for k, v in left.items() if k != "docker"} == {
        k: v for k, v in NOTHING.items() if k != "docker"
    }


def test_an_agent_restart_keeps_what_docker_holds_and_drops_what_it_left(driver):
    docker, ctx, host_ns, sandbox = driver
    pool_id = create_network(docker)
    live, live_address, _ = create_endpoint(docker, pool_id)
    sb = sandbox()
    answer = join(docker, live, sb)
    move_into(host_ns, answer["InterfaceName"]["SrcName"], sb, live_address, "100.65.0.1")
    _, unjoined_address, _ = create_endpoint(docker, pool_id)
    pending = docker.ok("IpamDriver.RequestAddress", {"PoolID": pool_id, "Address": ""})
    # The agent's start: its general reconcile, told what Docker holds, then Docker's own.
    now = time.time()
    with agent_netns.in_namespace(host_ns):
        removed = ctx.endpoints.reconcile(cleanup.keep(ctx, now))
        removed += cleanup.collect(ctx, now, activate=False)
    assert removed == []
    held = ctx.cluster.allocations("blue")
    for address in (live_address, unjoined_address, pending["Address"]):
        assert address.split("/")[0] in held
    # Past the grace period, what never came to be goes; the live container stays.
    with agent_netns.in_namespace(host_ns):
        cleanup.collect(ctx, now + UNBOUND_TTL, activate=False)
    assert set(ctx.cluster.allocations("blue")) == {live_address.split("/")[0]}
    assert [ep.docker_id for ep in docker_records.list_endpoints(ctx.cluster.kv, "h1")] == [live]


def test_a_broken_endpoint_record_stops_no_cleanup(driver):
    """A record that decodes as JSON but names no address (another writer, a later
    version) is skipped: the agent's start-up collect and Activate still remove the
    endpoint a dead dockerd left."""
    docker, ctx, host_ns, sandbox = driver
    pool_id = create_network(docker)
    stale, _, _ = create_endpoint(docker, pool_id)  # created, never joined
    broken = {
        "docker_network": NID,
        "network": "blue",
        "attachment": "docker:0bad/eth",
        "ip": "100.65.0.300",
        "mac": "0a:58:00:00:00:01",
        "joined": True,
    }
    ctx.cluster.kv.put("docker/h1/endpoints/0bad", json.dumps(broken))  # listed first
    with agent_netns.in_namespace(host_ns):
        assert cleanup.collect(ctx, time.time(), activate=False) == []  # the agent's start
    docker.ok("Plugin.Activate")
    left = leftovers(ctx, host_ns)
    assert left["docker"] == ["docker/h1/endpoints/0bad", f"docker/h1/networks/{NID}"]
    assert {k: v for k, v in left.items() if k != "docker"} == {
        k: v for k, v in NOTHING.items() if k != "docker"
    }
    assert stale not in str(left)


def waiting_for(ctx: Context, attachment: str, users: int) -> None:
    """Until ``users`` requests hold or wait for the attachment's lock."""
    deadline = time.monotonic() + 30
    while True:
        entry = ctx.endpoints.locks._locks.get(attachment)
        if entry is not None and entry[1][0] >= users:
            return
        assert time.monotonic() < deadline, "the request never reached the endpoint's lock"
        time.sleep(0.01)


def racing(docker: Docker, ctx: Context, host_ns: str, method: str, eid: str, body: dict):
    """Run ``method`` for endpoint ``eid`` on its own connection while this thread holds
    the endpoint's lock and, under it, does all of DeleteEndpoint's part; returns the
    answer the racing request got once the lock was let go."""
    attachment = endpoint_attachment(eid)
    answers = []
    other = Docker(docker.conn.sock.getpeername())
    thread = threading.Thread(target=lambda: answers.append(other.call(method, body)))
    try:
        with ctx.endpoints.locks.hold(attachment):
            thread.start()
            waiting_for(ctx, attachment, 2)
            ep = docker_records.get_endpoint(ctx.cluster.kv, "h1", eid)
            with agent_netns.in_namespace(host_ns):
                network.remove(ctx, ep)  # DeleteEndpoint and ReleaseAddress, under the lock
        thread.join()
    finally:
        other.conn.close()
    return answers[0]


def test_leave_racing_delete_endpoint_brings_back_nothing(driver):
    docker, ctx, host_ns, sandbox = driver
    pool_id = create_network(docker)
    eid, _, _ = create_endpoint(docker, pool_id)
    join(docker, eid, sandbox())
    leave = {"NetworkID": NID, "EndpointID": eid}
    assert racing(docker, ctx, host_ns, "NetworkDriver.Leave", eid, leave) == (200, {})
    left = leftovers(ctx, host_ns)
    assert left["docker"] == [f"docker/h1/networks/{NID}"]
    assert {k: v for k, v in left.items() if k != "docker"} == {
        k: v for k, v in NOTHING.items() if k != "docker"
    }


def test_join_racing_delete_endpoint_plugs_nothing(driver):
    docker, ctx, host_ns, sandbox = driver
    pool_id = create_network(docker)
    eid, _, _ = create_endpoint(docker, pool_id)
    body = {"NetworkID": NID, "EndpointID": eid, "SandboxKey": "/x", "Options": {}}
    status, answer = racing(docker, ctx, host_ns, "NetworkDriver.Join", eid, body)
    assert status == 500 and "does not exist on this host" in answer["Err"]
    left = leftovers(ctx, host_ns)
    assert left["docker"] == [f"docker/h1/networks/{NID}"]
    assert {k: v for k, v in left.items() if k != "docker"} == {
        k: v for k, v in NOTHING.items() if k != "docker"
    }


def test_a_failed_join_keeps_the_endpoints_address(driver, tmp_path, monkeypatch):
    """A Join whose flows fail just as the store goes away cannot unpublish its record;
    the endpoint still holds its address afterwards, also once the agent's store cleanup
    has run (a CNI ADD's rollback hands its records to it, which releases the whole
    attachment), until DeleteEndpoint and ReleaseAddress."""
    docker, ctx, host_ns, sandbox = driver
    pool_id = create_network(docker)
    eid, address, _ = create_endpoint(docker, pool_id)
    ip = address.split("/")[0]
    locker = sqlite3.connect(
        str(tmp_path / "cluster.db"), isolation_level=None, check_same_thread=False
    )

    def publish_fails_and_the_store_goes() -> None:
        locker.execute("BEGIN IMMEDIATE")  # the write lock, held until the Join answered
        raise KvError("the store went away")

    monkeypatch.setattr(ctx.endpoints, "publish", publish_fails_and_the_store_goes)
    try:
        status, answer = docker.call(
            "NetworkDriver.Join",
            {"NetworkID": NID, "EndpointID": eid, "SandboxKey": "/x", "Options": {}},
        )
    finally:
        if locker.in_transaction:
            locker.execute("ROLLBACK")
        locker.close()
    assert status == 500 and "store" in answer["Err"]
    with agent_netns.in_namespace(host_ns):
        ctx.endpoints.finish_store_cleanup()  # what the agent does once the store is back
    assert ctx.cluster.holder("blue", ip) == endpoint_attachment(eid)
    left = leftovers(ctx, host_ns)
    assert (left["veths"], left["ports"]) == ([], [])
    docker.ok("NetworkDriver.DeleteEndpoint", {"NetworkID": NID, "EndpointID": eid})
    docker.ok("IpamDriver.ReleaseAddress", {"PoolID": pool_id, "Address": ip})
    left = leftovers(ctx, host_ns)
    assert left["docker"] == [f"docker/h1/networks/{NID}"]
    assert {k: v for k, v in left.items() if k != "docker"} == {
        k: v for k, v in NOTHING.items() if k != "docker"
    }


def test_unjoin_of_a_record_deleted_since_writes_nothing_back(driver):
    """The unjoin every Leave ends in, given a record DeleteEndpoint removed after it
    was read: the record stays gone."""
    docker, ctx, host_ns, sandbox = driver
    pool_id = create_network(docker)
    eid, address, _ = create_endpoint(docker, pool_id)
    join(docker, eid, sandbox())
    read = docker_records.get_endpoint(ctx.cluster.kv, "h1", eid)
    docker.ok("NetworkDriver.DeleteEndpoint", {"NetworkID": NID, "EndpointID": eid})
    docker.ok("IpamDriver.ReleaseAddress", {"PoolID": pool_id, "Address": address.split("/")[0]})
    with agent_netns.in_namespace(host_ns), ctx.endpoints.locks.hold(read.attachment):
        network._unjoin(ctx, read)
    assert leftovers(ctx, host_ns)["docker"] == [f"docker/h1/networks/{NID}"]
