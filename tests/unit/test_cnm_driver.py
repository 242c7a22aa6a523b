"""Docker's remote drivers (controller/cnm/) on a real SQLite cluster state, through the
same entry the socket uses (server.serve: method and raw body in, status and JSON out),
with request bodies shaped as libnetwork's api.go sends them.  What needs OVSDB and
namespaces (Join, Leave, DeleteEndpoint, cleanup of endpoints) is in
tests/integration/test_cnm_driver.py."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import stat
import tempfile

import pytest

from controller import metrics
from controller.cnm import cleanup, ipam
from controller.cnm.common import UNBOUND_TTL, Context, endpoint_attachment, unbound_owner
from controller.cnm.network import DOCKER_VNI_BASE
from controller.cnm.server import MAX_BODY, CnmServer, serve
from controller.endpoints import EndpointManager, mac_for
from store import docker_records, open_cluster

NID = "a" * 64
NID2 = "b" * 64
EID = "e" * 64


@pytest.fixture
def cluster(tmp_path):
    c = open_cluster(f"sqlite:///{tmp_path}/cluster.db")
    c.create_network("blue", vni=5002, cidr="100.65.0.0/16")
    yield c
    c.close()


@pytest.fixture
def ctx(cluster):
    def publish() -> None:
        raise AssertionError("nothing here may reach br-int")

    manager = EndpointManager(
        "h1", "br-int", None, cluster, lambda n: 1450, lambda n: None, publish, lambda p: []
    )
    return Context("h1", cluster, manager)


def call(ctx, method: str, body=None, raw: bytes | None = None) -> tuple[int, dict]:
    return serve(ctx, method, raw if raw is not None else json.dumps(body).encode())


def ok(ctx, method: str, body=None) -> dict:
    status, answer = call(ctx, method, body)
    assert status == 200, answer
    assert "Err" not in answer
    return answer


def refused(ctx, method: str, body=None, raw: bytes | None = None) -> str:
    status, answer = call(ctx, method, body, raw)
    assert status == 500, answer
    return answer["Err"]


def everything(cluster) -> list[tuple[str, str]]:
    return [(kv.key, kv.value) for kv in cluster.kv.range("")[0]]


def pool_request(pool: str = "100.65.0.0/16", **options) -> dict:
    return {
        "AddressSpace": "ovs-overlay",
        "Pool": pool,
        "SubPool": "",
        "Options": options,
        "V6": False,
    }


def gateway_request(pool_id: str) -> dict:
    return {
        "PoolID": pool_id,
        "Address": "",
        "Options": {"RequestAddressType": "com.docker.network.gateway"},
    }


def create_network_request(nid: str = NID, pool: str = "100.65.0.0/16", **generic) -> dict:
    gateway = pool.split("/")[0][:-1] + "1/" + pool.split("/")[1]
    return {
        "NetworkID": nid,
        "Options": {
            "com.docker.network.enable_ipv6": False,
            "com.docker.network.generic": generic,
        },
        "IPv4Data": [
            {"AddressSpace": "ovs-overlay", "Pool": pool, "Gateway": gateway, "AuxAddresses": None}
        ],
        "IPv6Data": [],
    }


def endpoint_request(address: str, mac: str = "", eid: str = EID) -> dict:
    return {
        "NetworkID": NID,
        "EndpointID": eid,
        "Interface": {"Address": address, "AddressIPv6": "", "MacAddress": mac},
        "Options": {"com.docker.network.endpoint.exposedports": []},
    }


def test_activate_and_capabilities_declare_both_drivers_local_scope_global_reach(ctx):
    assert ok(ctx, "Plugin.Activate", None) == {"Implements": ["NetworkDriver", "IpamDriver"]}
    assert ok(ctx, "NetworkDriver.GetCapabilities", {}) == {
        "Scope": "local",
        "ConnectivityScope": "global",
    }
    assert ok(ctx, "IpamDriver.GetCapabilities", {})["RequiresMACAddress"] is False
    spaces = ok(ctx, "IpamDriver.GetDefaultAddressSpaces", {})
    assert spaces["LocalDefaultAddressSpace"] == "ovs-overlay"


def test_a_pool_is_the_named_network_or_the_one_with_that_subnet(ctx, cluster):
    answer = ok(ctx, "IpamDriver.RequestPool", pool_request(network="blue"))
    assert (answer["PoolID"], answer["Pool"]) == ("blue", "100.65.0.0/16")
    by_subnet = pool_request()
    assert ok(ctx, "IpamDriver.RequestPool", by_subnet)["PoolID"] == "blue"
    cluster.create_network("green", vni=5003, cidr="100.65.0.0/16")
    err = refused(ctx, "IpamDriver.RequestPool", by_subnet)
    assert "blue, green" in err and "--ipam-opt network=NAME" in err
    assert "--ipam-opt network=NAME" in refused(ctx, "IpamDriver.RequestPool", pool_request(""))
    # Without the subnet libnetwork would re-ask forever (a pool overlapping a host route).
    assert "--subnet 100.65.0.0/16" in refused(
        ctx, "IpamDriver.RequestPool", pool_request("", network="blue")
    )
    assert "no such ovs-overlay network" in refused(
        ctx, "IpamDriver.RequestPool", pool_request(network="red")
    )
    v6 = pool_request(network="blue")
    v6["V6"] = True
    assert "IPv4 only" in refused(ctx, "IpamDriver.RequestPool", v6)
    wrong = pool_request(network="blue")
    wrong["Pool"] = "100.66.0.0/16"
    assert "--subnet 100.65.0.0/16" in refused(ctx, "IpamDriver.RequestPool", wrong)


def test_the_gateway_is_answered_not_claimed_and_addresses_come_from_this_hosts_block(ctx, cluster):
    assert ok(ctx, "IpamDriver.RequestAddress", gateway_request("blue"))["Address"] == (
        "100.65.0.1/16"
    )
    assert cluster.allocations("blue") == {}
    answer = ok(ctx, "IpamDriver.RequestAddress", {"PoolID": "blue", "Address": "", "Options": {}})
    ip = answer["Address"].split("/")[0]
    assert answer["Address"].endswith("/16")
    [block] = cluster.blocks_of("blue", "h1")
    assert cluster.holder("blue", ip) is not None
    assert unbound_owner(cluster.holder("blue", ip))[0] == "h1"
    assert block.cidr.split("/")[0].rsplit(".", 1)[0] == ip.rsplit(".", 1)[0]
    assert cluster.mac_holder("blue", mac_for(ip))[0] == cluster.holder("blue", ip)


def test_a_static_address_is_claimed_and_one_in_use_is_refused(ctx, cluster):
    wanted = {"PoolID": "blue", "Address": "100.65.3.7", "Options": {}}
    assert ok(ctx, "IpamDriver.RequestAddress", wanted)["Address"] == "100.65.3.7/16"
    assert "100.65.3.7 in network blue is already used" in refused(
        ctx, "IpamDriver.RequestAddress", wanted
    )


def test_release_address_releases_an_unbound_claim_once(ctx, cluster):
    ip = ok(ctx, "IpamDriver.RequestAddress", {"PoolID": "blue", "Address": ""})["Address"]
    release = {"PoolID": "blue", "Address": ip.split("/")[0]}
    assert ok(ctx, "IpamDriver.ReleaseAddress", release) == {}
    assert cluster.allocations("blue") == {} and cluster.mac_claims_of("h1") == []
    assert ok(ctx, "IpamDriver.ReleaseAddress", release) == {}  # again: nothing to do
    gateway = {"PoolID": "blue", "Address": "100.65.0.1"}
    assert ok(ctx, "IpamDriver.ReleaseAddress", gateway) == {}


def test_default_ipam_is_refused_naming_the_driver_and_subnet_and_changes_nothing(ctx, cluster):
    before = everything(cluster)
    request = create_network_request(network="blue")
    request["IPv4Data"][0].update(AddressSpace="LocalDefault", Pool="172.18.0.0/16")
    err = refused(ctx, "NetworkDriver.CreateNetwork", request)
    assert "--ipam-driver ovs-overlay --subnet 100.65.0.0/16 --ipam-opt network=blue" in err
    assert everything(cluster) == before


def test_create_network_maps_an_existing_network_and_delete_keeps_it(ctx, cluster):
    ok(ctx, "NetworkDriver.CreateNetwork", create_network_request(network="blue"))
    assert docker_records.get_network(cluster.kv, "h1", NID).network == "blue"
    ok(ctx, "NetworkDriver.CreateNetwork", create_network_request(network="blue"))  # repeat
    mismatch = create_network_request(NID2, pool="100.66.0.0/16", network="blue")
    assert "--subnet 100.65.0.0/16" in refused(ctx, "NetworkDriver.CreateNetwork", mismatch)
    ok(ctx, "NetworkDriver.DeleteNetwork", {"NetworkID": NID})
    assert docker_records.list_networks(cluster.kv, "h1") == []
    assert cluster.get_network("blue") is not None
    assert ok(ctx, "NetworkDriver.DeleteNetwork", {"NetworkID": NID}) == {}


def test_a_new_subnet_makes_a_network_with_a_vni_and_delete_removes_it(ctx, cluster):
    pool = pool_request("100.70.0.0/24")
    pool_id = ok(ctx, "IpamDriver.RequestPool", pool)["PoolID"]
    assert pool_id == "new:100.70.0.0/24"
    assert ok(ctx, "IpamDriver.RequestAddress", gateway_request(pool_id))["Address"] == (
        "100.70.0.1/24"
    )
    ok(ctx, "NetworkDriver.CreateNetwork", create_network_request(pool="100.70.0.0/24"))
    net = cluster.get_network("docker-" + NID[:12])
    assert net.cidr == "100.70.0.0/24" and net.vni >= DOCKER_VNI_BASE
    address = ok(ctx, "IpamDriver.RequestAddress", {"PoolID": pool_id, "Address": ""})["Address"]
    assert address.startswith("100.70.0.")
    ok(ctx, "IpamDriver.ReleaseAddress", {"PoolID": pool_id, "Address": address})
    ok(ctx, "NetworkDriver.DeleteNetwork", {"NetworkID": NID})
    assert cluster.get_network("docker-" + NID[:12]) is None


def test_create_endpoint_binds_the_claim_and_answers_the_derived_mac(ctx, cluster):
    ok(ctx, "NetworkDriver.CreateNetwork", create_network_request(network="blue"))
    address = ok(ctx, "IpamDriver.RequestAddress", {"PoolID": "blue", "Address": ""})["Address"]
    ip = address.split("/")[0]
    answer = ok(ctx, "NetworkDriver.CreateEndpoint", endpoint_request(address))
    assert answer == {"Interface": {"MacAddress": mac_for(ip)}}
    attachment = endpoint_attachment(EID)
    assert cluster.holder("blue", ip) == attachment
    assert cluster.mac_holder("blue", mac_for(ip)) == (attachment, "h1")
    assert ok(ctx, "NetworkDriver.CreateEndpoint", endpoint_request(address)) == answer  # repeat
    # The endpoint holds it now: a late ReleaseAddress of the same address leaves it.
    ok(ctx, "IpamDriver.ReleaseAddress", {"PoolID": "blue", "Address": ip})
    assert cluster.holder("blue", ip) == attachment
    info = ok(ctx, "NetworkDriver.EndpointOperInfo", {"NetworkID": NID, "EndpointID": EID})
    assert info["Value"]["ovs-overlay.ip"] == ip


def test_a_requested_mac_replaces_the_derived_claim_and_is_not_answered(ctx, cluster):
    ok(ctx, "NetworkDriver.CreateNetwork", create_network_request(network="blue"))
    address = ok(ctx, "IpamDriver.RequestAddress", {"PoolID": "blue", "Address": ""})["Address"]
    answer = ok(ctx, "NetworkDriver.CreateEndpoint", endpoint_request(address, "02:00:00:00:00:07"))
    assert answer == {}
    attachment = endpoint_attachment(EID)
    assert cluster.mac_holder("blue", "02:00:00:00:00:07") == (attachment, "h1")
    assert cluster.mac_holder("blue", mac_for(address.split("/")[0])) is None


def test_an_address_not_from_this_ipam_is_refused_and_nothing_changes(ctx, cluster):
    ok(ctx, "NetworkDriver.CreateNetwork", create_network_request(network="blue"))
    cluster.claim_address("blue", "h1", "pod1/eth0", derive_mac=mac_for)
    pod_ip = cluster.allocations("blue").popitem()[0]
    before = everything(cluster)
    err = refused(ctx, "NetworkDriver.CreateEndpoint", endpoint_request(f"{pod_ip}/16"))
    assert "held by pod1/eth0" in err and "--ipam-driver ovs-overlay" in err
    err = refused(ctx, "NetworkDriver.CreateEndpoint", endpoint_request("100.65.9.9/16"))
    assert "not claimed" in err
    err = refused(ctx, "NetworkDriver.CreateEndpoint", endpoint_request("100.99.0.2/16"))
    assert "not in network blue" in err
    assert "Interface.Address is empty" in refused(
        ctx, "NetworkDriver.CreateEndpoint", endpoint_request("")
    )
    assert everything(cluster) == before


@pytest.mark.parametrize(
    ("method", "raw", "says"),
    [
        ("NetworkDriver.CreateNetwork", b"{not json", "not JSON"),
        ("NetworkDriver.CreateNetwork", b"[1, 2]", "must be a JSON object"),
        ("NetworkDriver.CreateNetwork", b'{"NetworkID": "../x"}', "NetworkID '../x'"),
        ("NetworkDriver.CreateEndpoint", b'{"NetworkID": 7}', "NetworkID 7"),
        (
            "NetworkDriver.CreateEndpoint",
            json.dumps(endpoint_request("100.65.0.5/16")).encode(),
            "no CreateNetwork reached this agent",
        ),
        (
            "NetworkDriver.Join",
            b'{"NetworkID": "' + NID.encode() + b'", "EndpointID": ""}',
            "EndpointID",
        ),
        ("IpamDriver.RequestAddress", b'{"PoolID": "red"}', "red does not exist"),
        ("IpamDriver.RequestAddress", b'{"PoolID": "blue", "Address": "x"}', "'x' is not an IPv4"),
        ("IpamDriver.RequestPool", b'{"Options": "network=blue"}', "Options must be a JSON object"),
        ("NetworkDriver.AllocateNetwork", b"{}", "is not a method"),
    ],
)
def test_malformed_requests_are_refused_naming_the_field_and_change_nothing(
    ctx, cluster, method, raw, says
):
    before = everything(cluster)
    refusals = metrics.REFUSED.labels("CNM", "500", "bad_request")._value.get()
    status, answer = call(ctx, method, raw=raw)
    assert status in (404, 500) and says in answer["Err"], answer
    assert everything(cluster) == before
    if status == 500 and "no CreateNetwork" not in says and "does not exist" not in says:
        assert metrics.REFUSED.labels("CNM", "500", "bad_request")._value.get() == refusals + 1


def test_unbound_claims_are_kept_while_young_and_released_when_old_or_at_activate(ctx, cluster):
    now = 1_000_000.0
    # Claims carry their time in their id: one made now, one UNBOUND_TTL ago.
    young = ipam.request_address(ctx, {"PoolID": "blue", "Address": ""}, now=now)["Address"]
    stale = ipam.request_address(ctx, {"PoolID": "blue", "Address": ""}, now=now - UNBOUND_TTL)
    kept = {att for _, att in cleanup.keep(ctx, now)}
    assert cluster.holder("blue", young.split("/")[0]) in kept
    assert cluster.holder("blue", stale["Address"].split("/")[0]) not in kept
    cleanup.collect(ctx, now, activate=False)
    assert cluster.holder("blue", stale["Address"].split("/")[0]) is None
    assert cluster.holder("blue", young.split("/")[0]) is not None
    ok(ctx, "Plugin.Activate", None)  # a dockerd (re)started: nothing of it is in flight
    assert cluster.allocations("blue") == {} and cluster.mac_claims_of("h1") == []


def test_broken_docker_records_are_skipped_not_fatal(ctx, cluster):
    cluster.kv.put("docker/h1/networks/" + NID, "not json")
    cluster.kv.put("docker/h1/endpoints/" + EID, json.dumps({"network": "blue"}))
    assert docker_records.list_networks(cluster.kv, "h1") == []
    assert docker_records.list_endpoints(cluster.kv, "h1") == []
    assert "no CreateNetwork" in refused(
        ctx, "NetworkDriver.CreateEndpoint", endpoint_request("100.65.0.5/16")
    )
    assert ok(ctx, "Plugin.Activate", None)["Implements"]


def test_the_socket_is_root_only_and_a_stuck_client_blocks_no_other(ctx):
    plugins = tempfile.mkdtemp(prefix="cnm")  # short: a unix socket path has 108 bytes
    server = CnmServer(os.path.join(plugins, "d"), ctx)
    server.start()
    stuck = socket.socket(socket.AF_UNIX)
    try:
        assert stat.S_IMODE(os.stat(server.path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(os.path.dirname(server.path)).st_mode) == 0o700
        stuck.connect(server.path)
        stuck.sendall(b"POST /Plugin.Activate HTTP/1.1\r\nContent-Le")  # and nothing more
        conn = http.client.HTTPConnection("plugin")
        conn.sock = socket.socket(socket.AF_UNIX)
        conn.sock.connect(server.path)
        conn.request("POST", "/NetworkDriver.GetCapabilities", b"{}")
        answer = conn.getresponse()
        assert answer.status == 200 and json.loads(answer.read())["Scope"] == "local"
        conn.close()
        big = socket.socket(socket.AF_UNIX)
        big.connect(server.path)
        big.sendall(
            b"POST /IpamDriver.RequestPool HTTP/1.1\r\n"
            + f"Content-Length: {MAX_BODY + 1}\r\n\r\n".encode()
        )
        with big, big.makefile("rb") as reply:
            assert reply.readline().split()[1] == b"413"  # refused before a byte of body
    finally:
        stuck.close()
        server.stop()
        shutil.rmtree(plugins)


def host_ctx(cluster, host: str) -> Context:
    """Another host's agent on the same cluster state."""

    def publish() -> None:
        raise AssertionError("nothing here may reach br-int")

    manager = EndpointManager(
        host, "br-int", None, cluster, lambda n: 1450, lambda n: None, publish, lambda p: []
    )
    return Context(host, cluster, manager)


def new_network(ctx, nid: str, subnet: str = "100.70.0.0/24") -> str:
    """docker network create --subnet SUBNET without --opt network, as libnetwork calls
    it: RequestPool, the gateway's RequestAddress, CreateNetwork; returns the PoolID."""
    pool_id = ok(ctx, "IpamDriver.RequestPool", pool_request(subnet))["PoolID"]
    ok(ctx, "IpamDriver.RequestAddress", gateway_request(pool_id))
    ok(ctx, "NetworkDriver.CreateNetwork", create_network_request(nid, pool=subnet))
    return pool_id


def made_networks(cluster) -> list[str]:
    return sorted(n.name for n in cluster.list_networks() if n.name != "blue")


def test_each_docker_network_without_opt_network_has_a_network_of_its_own(ctx, cluster):
    h2 = host_ctx(cluster, "h2")
    p1 = new_network(ctx, NID)
    p2 = new_network(h2, NID2)  # the same subnet on another host: not found by it
    assert made_networks(cluster) == ["docker-" + NID[:12], "docker-" + NID2[:12]]
    vnis = {cluster.get_network(n).vni for n in made_networks(cluster)}
    assert len(vnis) == 2
    address = ok(h2, "IpamDriver.RequestAddress", {"PoolID": p2, "Address": ""})["Address"]
    assert cluster.holder("docker-" + NID2[:12], address.split("/")[0]) is not None
    # h1's docker network rm deletes h1's network only; h2's goes with h2's.
    ok(ctx, "IpamDriver.ReleasePool", {"PoolID": p1})
    ok(ctx, "NetworkDriver.DeleteNetwork", {"NetworkID": NID})
    assert made_networks(cluster) == ["docker-" + NID2[:12]]
    ok(h2, "IpamDriver.ReleaseAddress", {"PoolID": p2, "Address": address})
    ok(h2, "NetworkDriver.DeleteNetwork", {"NetworkID": NID2})
    assert made_networks(cluster) == [] and list(cluster.kv.range("docker/")[0]) == []


def test_a_new_subnet_created_twice_at_once_leaves_no_docker_network_unusable(ctx, cluster):
    """RequestPool, RequestPool, CreateNetwork, CreateNetwork, then RequestAddress on
    both: on two hosts, both work, each in its own network; on one host the second
    CreateNetwork is refused (the IPAM driver could not tell the two pools apart), so
    dockerd drops that network and the first works."""
    h2 = host_ctx(cluster, "h2")
    subnet = "100.70.0.0/24"
    p1 = ok(ctx, "IpamDriver.RequestPool", pool_request(subnet))["PoolID"]
    p2 = ok(h2, "IpamDriver.RequestPool", pool_request(subnet))["PoolID"]
    ok(ctx, "NetworkDriver.CreateNetwork", create_network_request(NID, pool=subnet))
    ok(h2, "NetworkDriver.CreateNetwork", create_network_request(NID2, pool=subnet))
    for host, pool_id, nid in ((ctx, p1, NID), (h2, p2, NID2)):
        ip = ok(host, "IpamDriver.RequestAddress", {"PoolID": pool_id, "Address": ""})["Address"]
        assert cluster.holder("docker-" + nid[:12], ip.split("/")[0]) is not None
    third = "c" * 64
    p3 = ok(ctx, "IpamDriver.RequestPool", pool_request(subnet))["PoolID"]
    before = everything(cluster)
    err = refused(ctx, "NetworkDriver.CreateNetwork", create_network_request(third, pool=subnet))
    assert "docker-" + NID[:12] in err and "--opt network=NAME --ipam-opt network=NAME" in err
    assert everything(cluster) == before
    ip = ok(ctx, "IpamDriver.RequestAddress", {"PoolID": p3, "Address": ""})["Address"]
    assert cluster.holder("docker-" + NID[:12], ip.split("/")[0]) is not None


def test_sharing_a_network_is_by_name_only(ctx, cluster):
    """Without --opt network a subnet that is an operator's network's is refused (the
    pool is that network: sharing it must be asked for); a network the driver made is
    never found by its subnet."""
    before = everything(cluster)
    err = refused(ctx, "NetworkDriver.CreateNetwork", create_network_request())
    assert "--opt network=blue --ipam-opt network=blue" in err
    assert everything(cluster) == before
    new_network(ctx, NID)
    made = "docker-" + NID[:12]
    assert ok(ctx, "IpamDriver.RequestPool", pool_request("100.70.0.0/24"))["PoolID"] == (
        "new:100.70.0.0/24"
    )
    named = pool_request("100.70.0.0/24", network=made)  # by name it is shared
    assert ok(ctx, "IpamDriver.RequestPool", named)["PoolID"] == made


def test_a_made_network_something_holds_an_address_in_goes_once_it_is_released(ctx, cluster):
    now = 1_000_000.0
    pool_id = new_network(ctx, NID)
    made = "docker-" + NID[:12]
    ipam.request_address(ctx, {"PoolID": pool_id, "Address": ""}, now=now)
    ok(ctx, "NetworkDriver.DeleteNetwork", {"NetworkID": NID})
    assert cluster.get_network(made) is not None  # the claim still holds an address
    assert docker_records.get_network(cluster.kv, "h1", NID).deleted
    assert "no CreateNetwork reached" in refused(
        ctx, "NetworkDriver.CreateEndpoint", endpoint_request("100.70.0.5/24")
    )
    assert ok(ctx, "NetworkDriver.DeleteNetwork", {"NetworkID": NID}) == {}  # a repeat
    cleanup.collect(ctx, now, activate=False)  # the claim is young: both stay
    assert cluster.get_network(made) is not None
    cleanup.collect(ctx, now + UNBOUND_TTL, activate=False)  # the claim goes, the network too
    assert made_networks(cluster) == [] and list(cluster.kv.range("docker/")[0]) == []


def test_delete_network_keeps_its_record_until_the_network_is_gone(ctx, cluster):
    new_network(ctx, NID)
    made = "docker-" + NID[:12]
    cluster.put_endpoint(  # a pod someone attached to the made network
        made,
        "h2",
        "pod1/eth0",
        mac="0a:58:64:46:00:09",
        ip="100.70.0.9",
        container_id="pod1",
        ifname="eth0",
    )
    ok(ctx, "NetworkDriver.DeleteNetwork", {"NetworkID": NID})
    assert cluster.get_network(made) is not None
    assert docker_records.get_network(cluster.kv, "h1", NID).deleted
    cluster.delete_endpoint(made, "h2", "pod1/eth0")
    cleanup.collect(ctx, 0.0, activate=False)
    assert (
        cluster.get_network(made) is None and docker_records.list_networks(cluster.kv, "h1") == []
    )


def test_only_this_hosts_unbound_claims_are_bound_or_released(ctx, cluster):
    h2 = host_ctx(cluster, "h2")
    ok(ctx, "NetworkDriver.CreateNetwork", create_network_request(network="blue"))
    theirs = ok(h2, "IpamDriver.RequestAddress", {"PoolID": "blue", "Address": ""})["Address"]
    ip = theirs.split("/")[0]
    holder = cluster.holder("blue", ip)
    before = everything(cluster)
    err = refused(ctx, "NetworkDriver.CreateEndpoint", endpoint_request(theirs))
    assert f"held by {holder}" in err
    ok(ctx, "IpamDriver.ReleaseAddress", {"PoolID": "blue", "Address": ip})
    assert everything(cluster) == before and cluster.holder("blue", ip) == holder


def test_endpoint_records_with_bad_names_are_skipped(cluster):
    good = {
        "docker_network": NID,
        "network": "blue",
        "attachment": f"docker:{EID}/eth",
        "ip": "100.65.0.5",
        "mac": "0a:58:64:41:00:05",
    }
    broken = [
        {"ip": "100.65.0.300"},
        {"mac": "zz"},
        {"attachment": "docker:other/eth"},
        {"attachment": "pod/eth0"},
    ]
    for n, change in enumerate(broken):
        cluster.kv.put(f"docker/h1/endpoints/{n}", json.dumps({**good, **change}))
    cluster.kv.put(f"docker/h1/endpoints/{EID}", json.dumps(good))
    assert [ep.docker_id for ep in docker_records.list_endpoints(cluster.kv, "h1")] == [EID]
    assert docker_records.get_endpoint(cluster.kv, "h1", "0") is None
