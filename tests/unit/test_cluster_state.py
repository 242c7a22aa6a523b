"""The typed cluster state (store/cluster.py) on the SQLite store: networks, hosts, blocks,
addresses and endpoints, including hosts in separate processes racing for blocks."""

from __future__ import annotations

import ipaddress
import itertools
import json
import threading
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from store import open_cluster
from store.cluster import (
    AddressExhaustedError,
    AddressInUseError,
    Block,
    ClusterState,
    Network,
    StoreError,
    reserved_addresses,
)
from store.sqlite import SqliteKvStore
from tests.unit.test_store_contract import WAIT, FakeClock, run_together


@pytest.fixture
def db(tmp_path) -> str:
    return str(tmp_path / "cluster.db")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def cluster(db, clock):
    c = ClusterState(SqliteKvStore(db, clock=clock))
    yield c
    c.close()


def endpoint(cluster: ClusterState, network: str, host: str, attachment: str) -> None:
    ip = cluster.allocate_ip(network, host, attachment)
    cid, ifname = attachment.split("/")
    mac = "0a:58:" + ":".join(f"{b:02x}" for b in ipaddress.IPv4Address(ip).packed)
    cluster.put_endpoint(network, host, attachment, mac=mac, ip=ip, container_id=cid, ifname=ifname)


# -- networks ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, vni, cidr, mtu, message",
    [
        ("blue", 5001, "10.0.0.0/24", None, "inside 100.64.0.0/10"),
        ("blue", 5001, "100.127.255.0/23", None, "not an IPv4 network"),  # host bits set
        ("blue", 5001, "100.0.0.0/8", None, "inside 100.64.0.0/10"),
        ("blue", 5001, "100.64.0.0/31", None, "/30 or larger"),
        ("blue", 5001, "fd00::/64", None, "not an IPv4 network"),
        ("blue", 0, "100.64.0.0/24", None, "outside 1..16777215"),
        ("blue", 2**24, "100.64.0.0/24", None, "outside 1..16777215"),
        ("blue", 5001, "100.64.0.0/24", 100, "MTU 100 is outside"),
        ("a/b", 5001, "100.64.0.0/24", None, "network name 'a/b' is invalid"),
        ("", 5001, "100.64.0.0/24", None, "network name '' is invalid"),
    ],
)
def test_invalid_networks_are_refused_naming_the_field(cluster, name, vni, cidr, mtu, message):
    with pytest.raises(StoreError, match=message):
        cluster.create_network(name, vni=vni, cidr=cidr, mtu=mtu)
    assert cluster.list_networks() == []
    assert cluster.kv.range("")[0] == []


def test_networks_round_trip(cluster):
    blue = cluster.create_network("blue", vni=5002, cidr="100.64.1.0/24", mtu=1400, gateway=False)
    cluster.create_network("default", vni=5001, cidr="100.64.0.0/24")
    assert blue == Network("blue", 5002, "100.64.1.0/24", 1400, False, index=1)
    assert cluster.get_network("blue") == blue
    assert cluster.get_network("nope") is None
    assert [n.name for n in cluster.list_networks()] == ["blue", "default"]


def test_network_indexes_are_dense_reused_and_back_filled(cluster):
    """The lowest free index from 1; a deleted network's index is reused; a record from
    before indexes gets the lowest free one by compare-and-swap, once."""
    a = cluster.create_network("a", vni=5001, cidr="100.64.0.0/24")
    b = cluster.create_network("b", vni=5002, cidr="100.64.1.0/24")
    assert (a.index, b.index) == (1, 2)
    cluster.delete_network("a")
    assert cluster.kv.get("netindex/1") is None
    cluster.kv.put("networks/old", json.dumps({"vni": 5003, "cidr": "100.64.2.0/24"}))
    assert cluster.get_network("old").index is None
    old = cluster.assign_network_index("old")
    assert old.index == 1 and cluster.get_network("old") == old
    assert cluster.kv.get("netindex/1").value == "old"
    assert cluster.assign_network_index("old") == old
    assert cluster.assign_network_index("gone") is None
    assert cluster.create_network("c", vni=5004, cidr="100.64.3.0/24").index == 3


def test_a_duplicate_name_or_vni_is_refused_and_leaves_nothing_behind(cluster):
    cluster.create_network("default", vni=5001, cidr="100.64.0.0/24")
    with pytest.raises(StoreError, match="network default already exists"):
        cluster.create_network("default", vni=5002, cidr="100.64.1.0/24")
    with pytest.raises(StoreError, match="VNI 5001 is already used by network default"):
        cluster.create_network("blue", vni=5001, cidr="100.64.1.0/24")
    assert [n.name for n in cluster.list_networks()] == ["default"]
    assert cluster.kv.get("vnis/5002") is None
    cluster.create_network("blue", vni=5002, cidr="100.64.1.0/24")


def test_delete_is_refused_while_endpoints_exist_and_then_frees_everything(cluster):
    cluster.create_network("blue", vni=5002, cidr="100.64.1.0/24")
    endpoint(cluster, "blue", "h1", "c1/eth0")
    with pytest.raises(StoreError, match="network blue still has 1 endpoint.*c1/eth0 on host h1"):
        cluster.delete_network("blue")
    assert cluster.get_network("blue") is not None
    cluster.delete_endpoint("blue", "h1", "c1/eth0")
    cluster.delete_network("blue")
    assert cluster.kv.range("")[0] == []  # blocks, addresses and the VNI went with it
    with pytest.raises(StoreError, match="network blue does not exist"):
        cluster.delete_network("blue")
    cluster.create_network("green", vni=5002, cidr="100.64.1.0/24")  # the VNI is free again


# -- hosts ---------------------------------------------------------------------------------


def test_a_host_lives_as_long_as_its_lease(cluster, clock):
    lease = cluster.register_host("h1", "198.18.0.1", ttl=10)
    cluster.register_host("h2", "198.18.0.2", ttl=10)
    assert [(h.name, h.tunnel_ip) for h in cluster.list_hosts()] == [
        ("h1", "198.18.0.1"),
        ("h2", "198.18.0.2"),
    ]
    clock.now += 7
    assert cluster.keepalive(lease)
    clock.now += 7  # h2 missed its keepalive
    assert cluster.keepalive(lease)
    assert [h.name for h in cluster.list_hosts()] == ["h1"]
    assert cluster.unregister_host(lease)
    assert cluster.list_hosts() == []
    with pytest.raises(StoreError, match="tunnel IP 'nowhere' is not an IP address"):
        cluster.register_host("h3", "nowhere", ttl=10)


# -- blocks and addresses ------------------------------------------------------------------


def test_blocks_are_claimed_in_order_per_host(cluster):
    cluster.create_network("default", vni=5001, cidr="100.64.0.0/24")
    assert cluster.claim_block("default", "h1") == Block("default", "100.64.0.0/26", "h1")
    assert cluster.claim_block("default", "h2").cidr == "100.64.0.64/26"
    assert cluster.claim_block("default", "h1").cidr == "100.64.0.128/26"
    assert [b.cidr for b in cluster.blocks_of("default", "h1")] == [
        "100.64.0.0/26",
        "100.64.0.128/26",
    ]
    assert cluster.kv.get("blocks/default/100.64.0.64/26") is not None  # key as documented


def test_allocate_and_release_by_attachment(cluster):
    cluster.create_network("default", vni=5001, cidr="100.64.0.0/24")
    a = cluster.allocate_ip("default", "h1", "c1/eth0")
    b = cluster.allocate_ip("default", "h1", "c2/eth0")
    assert (a, b) == ("100.64.0.2", "100.64.0.3")  # .0 network, .1 gateway
    assert cluster.allocate_ip("default", "h1", "c1/eth0") == a  # a retried ADD
    assert cluster.allocations("default") == {a: "c1/eth0", b: "c2/eth0"}
    assert cluster.release_ip("default", "c1/eth0") == a
    assert cluster.release_ip("default", "c1/eth0") is None  # a repeated DEL
    assert cluster.allocations("default") == {b: "c2/eth0"}
    assert cluster.allocate_ip("default", "h1", "c3/eth0") == a  # freed, so reused


def test_a_host_allocates_only_from_its_own_blocks(cluster):
    cluster.create_network("default", vni=5001, cidr="100.64.0.0/24")
    cluster.allocate_ip("default", "h1", "c1/eth0")  # h1 claims 100.64.0.0/26, most of it free
    ip = cluster.allocate_ip("default", "h2", "c2/eth0")
    assert ipaddress.IPv4Address(ip) in ipaddress.IPv4Network("100.64.0.64/26")
    assert [b.cidr for b in cluster.blocks_of("default", "h2")] == ["100.64.0.64/26"]


def test_an_allocation_survives_a_crash(db, cluster):
    cluster.create_network("default", vni=5001, cidr="100.64.0.0/24")
    ip = cluster.allocate_ip("default", "h1", "c1/eth0")
    # A new process (the agent after a crash) finds the allocation by attachment.
    again = open_cluster("sqlite:///" + db)
    try:
        assert again.allocate_ip("default", "h1", "c1/eth0") == ip
        assert again.allocate_ip("default", "h1", "c2/eth0") != ip
        assert again.release_ip("default", "c1/eth0") == ip
    finally:
        again.close()


def test_exhaustion_names_the_network_and_its_cidr(cluster):
    cluster.create_network("tiny", vni=7, cidr="100.64.9.0/29")  # 8 addresses, 3 reserved
    ips = [cluster.allocate_ip("tiny", "h1", f"c{i}/eth0") for i in range(5)]
    assert ips == [f"100.64.9.{i}" for i in range(2, 7)]
    with pytest.raises(AddressExhaustedError, match=r"network tiny \(100.64.9.0/29\)"):
        cluster.allocate_ip("tiny", "h1", "c5/eth0")
    with pytest.raises(AddressExhaustedError, match=r"network tiny \(100.64.9.0/29\)"):
        cluster.allocate_ip("tiny", "h2", "c6/eth0")


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    prefixlen=st.integers(25, 30),
    block_prefix=st.integers(26, 30),
    third_octet=st.integers(0, 255),
    hosts=st.integers(1, 3),
)
def test_every_address_but_the_reserved_ones_is_handed_out_exactly_once(
    db, prefixlen, block_prefix, third_octet, hosts
):
    cidr = ipaddress.IPv4Network(f"100.{64 + third_octet % 64}.{third_octet}.0/{prefixlen}")
    cluster = ClusterState(SqliteKvStore(db), block_prefix=block_prefix)
    net = f"n{uuid.uuid4().hex[:8]}"  # one file for all examples: a fresh network each
    try:
        cluster.create_network(net, vni=uuid.uuid4().int % 2**24 or 1, cidr=str(cidr))
        got: dict[str, str] = {}
        active = [f"h{j}" for j in range(hosts)]
        for i in itertools.count():  # hosts take turns; a refused host drops out
            if not active:
                break
            host = active[i % len(active)]
            try:
                ip = cluster.allocate_ip(net, host, f"c{i}/eth0")
            except AddressExhaustedError:
                active.remove(host)
                continue
            assert ip not in got
            got[ip] = host
        assert set(got) == {str(a) for a in cidr} - reserved_addresses(str(cidr))
        for ip, host in got.items():
            owned = [ipaddress.IPv4Network(b.cidr) for b in cluster.blocks_of(net, host)]
            assert any(ipaddress.IPv4Address(ip) in block for block in owned)
        assert len(cluster.allocations(net)) == len(got)
    finally:
        cluster.close()


CLAIMER = """
import json, sys
from store import open_cluster
from store.cluster import ClusterState
url, host, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
cluster = ClusterState(open_cluster(url).kv, block_prefix=28)
print("ready", flush=True)
sys.stdin.readline()
blocks = [cluster.claim_block("default", host).cidr for _ in range(count)]
ips = [cluster.allocate_ip("default", host, f"{host}-{i}/eth0") for i in range(count)]
print(json.dumps({"blocks": blocks, "ips": ips}))
cluster.close()
"""


def test_hosts_in_separate_processes_never_share_a_block_or_an_address(db, cluster):
    cluster.create_network("default", vni=5001, cidr="100.64.0.0/24")  # 16 blocks of /28
    url = "sqlite:///" + db
    outs = run_together(CLAIMER, [[url, "h1", "6"], [url, "h2", "6"]])
    h1, h2 = (json.loads(o) for o in outs)
    assert len(set(h1["blocks"]) | set(h2["blocks"])) == 12
    stored = {b.cidr: b.host for b in cluster.list_blocks("default")}
    assert {c: "h1" for c in h1["blocks"]}.items() <= stored.items()
    assert {c: "h2" for c in h2["blocks"]}.items() <= stored.items()
    assert not set(h1["ips"]) & set(h2["ips"])
    assert len(cluster.allocations("default")) == 12


# -- endpoints and changes -----------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["endpoints/", "hosts/"])
def test_endpoints_are_listed_per_network_and_changes_are_watched(cluster, prefix):
    cluster.create_network("default", vni=5001, cidr="100.64.0.0/24")
    cluster.create_network("blue", vni=5002, cidr="100.64.1.0/24")
    since = cluster.revision()
    stop = threading.Event()
    seen: list[str] = []
    done = threading.Event()

    def watch() -> None:
        for batch in cluster.watch_changes(prefix, stop, since):
            seen.extend(f"{e.type} {e.key}" for e in batch)
            if any(e.key.startswith("hosts/") or e.type == "delete" for e in batch):
                done.set()

    thread = threading.Thread(target=watch)
    thread.start()
    try:
        endpoint(cluster, "default", "h1", "c1/eth0")
        endpoint(cluster, "blue", "h2", "c2/eth0")
        cluster.delete_endpoint("default", "h1", "c1/eth0")
        cluster.register_host("h1", "198.18.0.1", ttl=10)
        assert done.wait(WAIT)
    finally:
        stop.set()
        thread.join(WAIT)
    assert [e.attachment for e in cluster.list_endpoints()] == ["c2/eth0"]
    assert cluster.list_endpoints("default") == []
    (ep,) = cluster.list_endpoints("blue")
    assert (ep.host, ep.ip, ep.container_id, ep.ifname) == ("h2", "100.64.1.2", "c2", "eth0")
    # Only what the pipeline is built from: no block, address or VNI bookkeeping.
    everything = [
        "put endpoints/default/h1/c1/eth0",
        "put endpoints/blue/h2/c2/eth0",
        "delete endpoints/default/h1/c1/eth0",
        "put hosts/h1",
    ]
    # One prefix each (the agent watches hosts/, networks/ and endpoints/ only).
    assert seen == [e for e in everything if e.split()[1].startswith(prefix)]


def test_a_static_address_is_reserved_once(tmp_path):
    from store import open_cluster
    from store.cluster import StoreError

    c = open_cluster(f"sqlite:///{tmp_path}/s.db")
    c.create_network("default", 5001, "100.64.0.0/16")
    assert c.reserve_ip("default", "100.64.9.9", "a/eth0") == "100.64.9.9"
    assert c.reserve_ip("default", "100.64.9.9", "a/eth0") == "100.64.9.9"  # retried ADD
    with pytest.raises(AddressInUseError, match="already used by attachment a/eth0 "):
        c.reserve_ip("default", "100.64.9.9", "b/eth0")
    c.put_endpoint(
        "default",
        "h1",
        "a/eth0",
        mac="02:00:00:00:00:01",
        ip="100.64.9.9",
        container_id="a",
        ifname="eth0",
    )
    with pytest.raises(StoreError, match="100.64.9.9 .* used by attachment a/eth0 on host h1;"):
        c.reserve_ip("default", "100.64.9.9", "b/eth0")
    c.delete_endpoint("default", "h1", "a/eth0")
    for bad in ("100.64.0.1", "100.65.0.1", "nope"):  # gateway, outside, not an IP
        with pytest.raises(StoreError):
            c.reserve_ip("default", bad, "c/eth0")
    c.release_ip("default", "a/eth0")
    assert c.reserve_ip("default", "100.64.9.9", "b/eth0") == "100.64.9.9"
    c.close()


class CountingKv:
    """The real store, with its calls counted: what one ADD costs in store round trips."""

    def __init__(self, kv):
        self.kv = kv
        self.calls: list[str] = []

    def __getattr__(self, name):
        attr = getattr(self.kv, name)
        if name in ("get", "range", "txn"):

            def counted(*args, **kwargs):
                self.calls.append(name)
                return attr(*args, **kwargs)

            return counted
        return attr


def derived(ip: str) -> str:
    return "0a:58:" + ":".join(f"{b:02x}" for b in ipaddress.IPv4Address(ip).packed)


def test_an_add_is_two_writes_and_no_read_once_the_hosts_blocks_are_known(db, clock):
    counting = CountingKv(SqliteKvStore(db, clock=clock))
    cluster = ClusterState(counting)
    net = cluster.create_network("default", 5001, "100.64.0.0/16")
    cluster.claim_address("default", "h1", "warm/eth0", known=net)  # reads the blocks once
    counting.calls.clear()
    claim = cluster.claim_address("default", "h1", "a/eth0", derive_mac=derived, known=net)
    assert counting.calls == ["txn"]
    assert (claim.ip, claim.mac) == ("100.64.0.3", "0a:58:64:40:00:03")
    assert cluster.mac_holder("default", claim.mac) == ("a/eth0", "h1")
    counting.calls.clear()
    cluster.put_endpoint(
        "default", "h1", "a/eth0", mac=claim.mac, ip=claim.ip, container_id="a",
        ifname="eth0", known=net, claimed=claim.revision,
    )  # fmt: skip
    assert counting.calls == ["txn"]
    assert [e.ip for e in cluster.list_endpoints("default")] == ["100.64.0.3"]
    cluster.close()


def test_a_held_mac_refuses_the_claim_and_writes_nothing(cluster):
    net = cluster.create_network("default", 5001, "100.64.0.0/16")
    cluster.claim_mac("default", "02:00:00:00:00:09", "c9/eth0", "h2")
    before = cluster.revision()
    with pytest.raises(AddressInUseError, match="attachment c9/eth0 on host h2") as err:
        cluster.claim_address("default", "h1", "a/eth0", mac="02:00:00:00:00:09", known=net)
    assert (err.value.kind, err.value.holder) == ("MAC", "attachment c9/eth0 on host h2")
    assert cluster.revision() == before
    # The address the refused claim had picked is handed out next, not lost.
    assert cluster.allocate_ip("default", "h1", "b/eth0") == "100.64.0.2"


def test_a_stale_memory_of_the_hosts_blocks_costs_a_retry_never_a_duplicate(db, cluster):
    net = cluster.create_network("default", 5001, "100.64.0.0/24")
    assert cluster.allocate_ip("default", "h1", "a/eth0") == "100.64.0.2"
    other = open_cluster(f"sqlite:///{db}")  # another writer: a static IP in h1's block
    assert other.reserve_ip("default", "100.64.0.3", "s/eth0") == "100.64.0.3"
    assert cluster.allocate_ip("default", "h1", "b/eth0", known=net) == "100.64.0.4"
    # The block's record deleted behind h1's back (another writer): the next claim sees the
    # block changed and claims it again instead of trusting what it remembers.
    other.kv.delete("blocks/default/100.64.0.0/26")
    assert cluster.allocate_ip("default", "h1", "c/eth0", known=net) == "100.64.0.5"
    assert [b.cidr for b in cluster.blocks_of("default", "h1")] == ["100.64.0.0/26"]
    other.close()


def test_a_released_address_is_handed_out_again_from_memory(cluster):
    cluster.create_network("default", 5001, "100.64.0.0/24")
    first = cluster.allocate_ip("default", "h1", "a/eth0")
    cluster.allocate_ip("default", "h1", "b/eth0")
    assert cluster.release_ip("default", "a/eth0") == first
    assert cluster.allocate_ip("default", "h1", "c/eth0") == first


def test_threads_of_one_agent_claim_distinct_addresses(cluster):
    cluster.create_network("default", 5001, "100.64.0.0/24")
    got: list[str] = []

    def claim(i: int) -> None:
        for k in range(20):
            got.append(cluster.allocate_ip("default", "h1", f"t{i}-{k}/eth0"))

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert len(got) == len(set(got)) == 80


def test_a_del_releases_record_address_and_claims_in_one_write_and_again_changes_nothing(db, clock):
    counting = CountingKv(SqliteKvStore(db, clock=clock))
    cluster = ClusterState(counting)
    net = cluster.create_network("default", 5001, "100.64.0.0/16")
    claim = cluster.claim_address("default", "h1", "a/eth0", derive_mac=derived, known=net)
    cluster.put_endpoint(
        "default", "h1", "a/eth0", mac=claim.mac, ip=claim.ip, container_id="a",
        ifname="eth0", claimed=claim.revision,
    )  # fmt: skip
    cluster.claim_mac("default", "02:00:00:00:00:07", "a/eth0", "h1")  # an interrupted ADD's
    cluster.claim_mac("default", "02:00:00:00:00:08", "b/eth0", "h2")  # someone else's
    counting.calls.clear()
    assert (
        cluster.release_attachment(
            "default", "h1", "a/eth0", ["02:00:00:00:00:07", "02:00:00:00:00:08"], derived
        )
        == claim.ip
    )
    assert counting.calls.count("txn") == 1
    assert cluster.list_endpoints() == [] and cluster.allocations("default") == {}
    assert cluster.kv.get("attachments/default/a/eth0") is None
    assert cluster.mac_claims_of("h1") == []
    assert cluster.mac_holder("default", "02:00:00:00:00:08") == ("b/eth0", "h2")
    before = cluster.revision()
    assert cluster.release_attachment("default", "h1", "a/eth0", [], derived) is None
    assert cluster.revision() == before
    cluster.close()


# -- MAC claims ----------------------------------------------------------------------------


def put(cluster, host, attachment, mac, ip, network="default"):
    cid, ifname = attachment.split("/")
    return cluster.put_endpoint(
        network, host, attachment, mac=mac, ip=ip, container_id=cid, ifname=ifname
    )


def test_a_mac_is_held_by_one_attachment_per_network_until_it_is_deleted(cluster):
    cluster.create_network("default", vni=5001, cidr="100.64.0.0/24")
    cluster.create_network("blue", vni=5002, cidr="100.64.0.0/24")
    put(cluster, "h1", "a/eth0", "02:00:00:00:00:0A", "100.64.0.10")
    assert cluster.mac_holder("default", "02:00:00:00:00:0a") == ("a/eth0", "h1")
    put(cluster, "h1", "a/eth0", "02:00:00:00:00:0a", "100.64.0.10")  # republished: same holder
    before = cluster.list_endpoints()
    with pytest.raises(
        AddressInUseError,
        match="MAC 02:00:00:00:00:0a in network default is already used by attachment a/eth0 "
        "on host h1; pick another MAC",
    ):
        put(cluster, "h2", "b/eth0", "02:00:00:00:00:0a", "100.64.0.11")
    assert cluster.list_endpoints() == before  # the refusal wrote nothing
    put(cluster, "h2", "b/eth0", "02:00:00:00:00:0a", "100.64.0.11", network="blue")  # apart
    assert cluster.delete_endpoint("default", "h1", "a/eth0")
    assert cluster.mac_holder("default", "02:00:00:00:00:0a") is None
    assert not cluster.delete_endpoint("default", "h1", "a/eth0")  # a second DEL
    put(cluster, "h2", "b/eth0", "02:00:00:00:00:0a", "100.64.0.11")


def test_the_same_attachment_on_another_host_is_another_holder(cluster):
    cluster.create_network("default", vni=5001, cidr="100.64.0.0/24")
    put(cluster, "h1", "a/eth0", "02:00:00:00:00:0a", "100.64.0.10")
    with pytest.raises(AddressInUseError, match="a/eth0 on host h1"):
        put(cluster, "h2", "a/eth0", "02:00:00:00:00:0a", "100.64.0.10")


def test_changing_an_endpoints_mac_releases_the_old_one(cluster):
    cluster.create_network("default", vni=5001, cidr="100.64.0.0/24")
    put(cluster, "h1", "a/eth0", "02:00:00:00:00:0a", "100.64.0.10")
    put(cluster, "h1", "a/eth0", "02:00:00:00:00:0b", "100.64.0.10")
    assert cluster.mac_holder("default", "02:00:00:00:00:0a") is None
    assert cluster.mac_holder("default", "02:00:00:00:00:0b") == ("a/eth0", "h1")
    cluster.delete_endpoint("default", "h1", "a/eth0")
    assert cluster.kv.range("macs/")[0] == []


def test_deleting_a_network_releases_its_macs(cluster):
    cluster.create_network("blue", vni=5002, cidr="100.64.0.0/24")
    put(cluster, "h1", "a/eth0", "02:00:00:00:00:0a", "100.64.0.10", network="blue")
    cluster.delete_endpoint("blue", "h1", "a/eth0")
    put(cluster, "h1", "a/eth0", "02:00:00:00:00:0a", "100.64.0.10", network="blue")
    cluster.kv.delete("endpoints/blue/h1/a/eth0")  # a record gone without its claim
    cluster.delete_network("blue")
    assert cluster.kv.range("macs/")[0] == []


def test_a_mac_claimed_before_the_record_is_kept_by_it_and_released_with_it(cluster):
    cluster.create_network("default", vni=5001, cidr="100.64.0.0/24")
    cluster.claim_mac("default", "02:00:00:00:00:0A", "a/eth0", "h1")
    cluster.claim_mac("default", "02:00:00:00:00:0a", "a/eth0", "h1")  # again: a retried ADD
    with pytest.raises(AddressInUseError, match="used by attachment a/eth0 on host h1;"):
        cluster.claim_mac("default", "02:00:00:00:00:0a", "b/eth0", "h2")
    assert cluster.mac_claims_of("h1") == [("default", "02:00:00:00:00:0a", "a/eth0")]
    assert cluster.mac_claims_of("h2") == []
    assert not cluster.release_mac("default", "02:00:00:00:00:0a", "b/eth0", "h2")  # not b's
    put(cluster, "h1", "a/eth0", "02:00:00:00:00:0a", "100.64.0.10")  # the record keeps it
    assert cluster.mac_holder("default", "02:00:00:00:00:0a") == ("a/eth0", "h1")
    cluster.delete_endpoint("default", "h1", "a/eth0")
    assert cluster.mac_claims_of("h1") == []
    cluster.claim_mac("default", "02:00:00:00:00:0a", "b/eth0", "h2")
    assert cluster.release_mac("default", "02:00:00:00:00:0a", "b/eth0", "h2")
    assert cluster.kv.range("macs/")[0] == []


MAC_CLAIMER = """
import sys
from store import open_cluster
from store.cluster import AddressInUseError
url, how, host, attachment, ip = sys.argv[1:]
cluster = open_cluster(url)
print("ready", flush=True)
sys.stdin.readline()
try:
    if how == "claim":
        cluster.claim_mac("default", "02:00:00:00:00:0a", attachment, host)
    else:
        cluster.put_endpoint("default", host, attachment, mac="02:00:00:00:00:0a", ip=ip,
                             container_id=attachment.split("/")[0], ifname="eth0")
    print("won")
except AddressInUseError as exc:
    print("lost:", exc)
cluster.close()
"""


@pytest.mark.parametrize("how", ["claim", "record"])
def test_of_two_hosts_racing_for_one_mac_exactly_one_wins(db, cluster, how):
    cluster.create_network("default", vni=5001, cidr="100.64.0.0/24")
    url = "sqlite:///" + db
    for round_ in range(3):
        outs = run_together(
            MAC_CLAIMER,
            [
                [url, how, "h1", f"a{round_}/eth0", "100.64.0.10"],
                [url, how, "h2", f"b{round_}/eth0", "100.64.0.11"],
            ],
        )
        assert sorted(o.split()[0] for o in outs) == ["lost:", "won"], outs
        winner = "h1" if outs[0].startswith("won") else "h2"
        [(_, _, holder)] = cluster.mac_claims_of(winner)
        loser_out = outs[1] if winner == "h1" else outs[0]
        assert f"on host {winner}" in loser_out
        if how == "record":
            assert [e.host for e in cluster.list_endpoints("default")] == [winner]
            cluster.delete_endpoint("default", winner, holder)
        else:
            cluster.release_mac("default", "02:00:00:00:00:0a", holder, winner)
        assert cluster.kv.range("macs/")[0] == []


def test_an_endpoint_keeps_its_pod_and_a_bad_pod_reads_as_none(cluster):
    from store.cluster import decode_endpoint
    from store.kv import KeyValue

    cluster.create_network("net", vni=5001, cidr="100.64.0.0/16")
    ip = cluster.allocate_ip("net", "h1", "c1/eth0")
    ep = cluster.put_endpoint(
        "net", "h1", "c1/eth0", mac="02:00:00:00:00:01", ip=ip, container_id="c1",
        ifname="eth0", pod="web/api-0",
    )  # fmt: skip
    assert ep.pod == "web/api-0"
    assert [e.pod for e in cluster.list_endpoints("net")] == ["web/api-0"]
    (kv,) = cluster.kv.range("endpoints/")[0]
    assert decode_endpoint(kv) == ep
    base = {"mac": "02:00:00:00:00:02", "ip": "100.64.0.9", "container_id": "c", "ifname": "e"}
    for bad in (None, 7, "", "no-slash", "/name", "ns/", "a/b/c", ["web", "api"]):
        value = json.dumps(base | {"pod": bad})
        decoded = decode_endpoint(KeyValue("endpoints/net/h2/c/e", value, 5, 5))
        assert decoded.pod is None and decoded.ip == "100.64.0.9"


def test_decoded_endpoints_share_the_names_many_records_repeat():
    """An agent holds every remote endpoint: their network, host and ifname are one string
    each, not one per record (the cluster cache's memory at 10,000 endpoints)."""
    from store.cluster import decode_endpoint
    from store.kv import KeyValue

    def record(i: int):
        value = json.dumps(
            {"mac": f"0a:58:00:00:00:{i:02x}", "ip": f"100.64.0.{i}", "container_id": f"c{i}"}
            | {"ifname": "".join(["et", "h0"])}
        )
        return decode_endpoint(KeyValue("/".join(["endpoints", "net", "h2", f"a{i}"]), value, i, i))

    a, b = record(1), record(2)
    assert a.network is b.network and a.host is b.host and a.ifname is b.ifname
