"""The agent's cluster cache on a real (SQLite) store: records in, engine changes out, bad
and conflicting records skipped and logged once, compaction and host expiry handled."""

from __future__ import annotations

import gc
import json
import logging
import threading

import pytest

from controller import metrics
from controller.cluster_cache import ClusterCache
from openflow.incremental import Engine, Upsert
from openflow.state import LocalPort, NetworkSpec, RemoteEndpoint
from store import open_cluster

WAIT = 10.0
RELISTS = "ovs_overlay_store_relists_total"
ME, MY_IP = "h1", "198.18.0.1"


class Fed:
    """The cache's consumer: a real engine, fed as the reconciler would feed it."""

    def __init__(self):
        self.engine = Engine(tunnel_ofport=1, generation=1)
        self.cond = threading.Condition()

    def submit(self, changes) -> int:
        with self.cond:
            self.engine.apply(changes)
            self.cond.notify_all()
        return 0

    def wait(self, predicate) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: predicate(self.engine.state()), WAIT)


@pytest.fixture
def cluster(tmp_path):
    c = open_cluster(f"sqlite:///{tmp_path}/cluster.db")
    c.create_network("default", 5001, "100.64.0.0/16")
    yield c
    c.close()


def ep(cluster, host, att, mac, ip, network="default"):
    cluster.put_endpoint(network, host, att, mac=mac, ip=ip, container_id=att, ifname="eth0")


def watching(cache, stop):
    revisions = cache.load()
    threads = [
        threading.Thread(target=cache.watch, args=(p, r, stop), daemon=True)
        for p, r in revisions.items()
    ]
    for t in threads:
        t.start()
    return threads


def test_load_then_watch_serves_peers_and_their_endpoints(cluster):
    cluster.register_host("h2", "198.18.0.2", ttl=30)
    ep(cluster, "h2", "a/eth0", "0a:58:64:40:00:02", "100.64.0.2")
    ep(cluster, ME, "mine/eth0", "0a:58:64:40:00:09", "100.64.0.9")  # from OVSDB, not here
    fed, stop = Fed(), threading.Event()
    cache = ClusterCache(cluster, ME, MY_IP, fed.submit)
    threads = watching(cache, stop)
    try:
        state = fed.engine.state()
        assert state.networks == (NetworkSpec("default", 5001, 1),)
        assert state.peers == ("198.18.0.2",)
        assert state.remote == (
            RemoteEndpoint("default", "198.18.0.2", "0a:58:64:40:00:02", "100.64.0.2"),
        )
        cluster.register_host("h3", "198.18.0.3", ttl=30)
        ep(cluster, "h3", "b/eth0", "0a:58:64:40:00:03", "100.64.0.3")
        assert fed.wait(lambda s: len(s.remote) == 2 and s.peers == ("198.18.0.2", "198.18.0.3"))
        cluster.delete_endpoint("default", "h2", "a/eth0")
        assert fed.wait(lambda s: [r.host_ip for r in s.remote] == ["198.18.0.3"])
    finally:
        stop.set()
        for t in threads:
            t.join(WAIT)


def test_bad_and_conflicting_records_are_skipped_logged_once_and_the_rest_served(cluster, caplog):
    kv = cluster.kv
    cluster.register_host("h2", "198.18.0.2", ttl=30)
    cluster.register_host("h3", "198.18.0.3", ttl=30)
    ep(cluster, "h2", "good/eth0", "0a:58:64:40:00:02", "100.64.0.2")
    # h2's MAC, younger: written raw, as another writer would (put_endpoint refuses it)
    kv.put(
        "endpoints/default/h3/samemac/eth0",
        json.dumps(
            {"mac": "0a:58:64:40:00:02", "ip": "100.64.0.3", "container_id": "x", "ifname": "eth0"}
        ),
    )
    kv.put("endpoints/default/h2/junk", "{not json")
    kv.put(
        "endpoints/default/h2/badmac/eth0",
        json.dumps(
            {"mac": "ff:ff:ff:ff:ff:ff", "ip": "100.64.0.7", "container_id": "x", "ifname": "eth0"}
        ),
    )
    kv.put("hosts/h4", json.dumps({"tunnel_ip": "not-an-ip"}))
    kv.put("hosts/h5", json.dumps({"tunnel_ip": "198.18.0.2"}))  # h2's tunnel IP, younger
    ep(cluster, "h5", "h5pod/eth0", "0a:58:64:40:00:05", "100.64.0.5")
    kv.put("networks/dup", json.dumps({"vni": 5001, "cidr": "100.65.0.0/16"}))  # raw: VNI taken
    kv.put(
        "endpoints/nosuch/h2/x/eth0",
        json.dumps(
            {"mac": "0a:58:00:00:00:09", "ip": "100.64.9.9", "container_id": "x", "ifname": "eth0"}
        ),
    )
    fed = Fed()
    cache = ClusterCache(cluster, ME, MY_IP, fed.submit)
    with caplog.at_level(logging.WARNING):
        cache.load()
        cache.load()  # the same bad records again: not logged again
    state = fed.engine.state()
    assert state.networks == (NetworkSpec("default", 5001, 1),)
    assert state.peers == ("198.18.0.2", "198.18.0.3")
    assert state.remote == (
        RemoteEndpoint("default", "198.18.0.2", "0a:58:64:40:00:02", "100.64.0.2"),
    )
    text = caplog.text
    for what in ("endpoints/default/h2/junk", "badmac", "hosts/h4", "host h5", "nosuch/h2"):
        assert text.count(what) == 1, what
    # The engine reports (once) what it shadows; the reconciler logs those.
    assert not fed.engine.is_active("endpoints/default/h3/samemac/eth0")
    assert fed.engine.shadowed("networks/dup").claim == ("vni", 5001)
    # A local port wins over a remote endpoint with its MAC, whatever their ages.
    fed.engine.apply(
        [Upsert("port/p", LocalPort("default", 5, "0a:58:64:40:00:02", "100.64.0.8"), (0,))]
    )
    assert fed.engine.state().remote == ()
    # The older host goes: the younger one with its IP (and its endpoint) takes over.
    fed.engine.apply(cache._replace("hosts/", [kv.get("hosts/h3"), kv.get("hosts/h5")]))
    # (h3's endpoint still loses its MAC, now to the local port.)
    assert [r.ip for r in fed.engine.state().remote] == ["100.64.0.5"]


def test_a_compacted_history_is_listed_again_and_the_difference_applied(cluster):
    cluster.register_host("h2", "198.18.0.2", ttl=30)
    ep(cluster, "h2", "a/eth0", "0a:58:64:40:00:02", "100.64.0.2")
    fed, stop = Fed(), threading.Event()
    cache = ClusterCache(cluster, ME, MY_IP, fed.submit)
    revisions = cache.load()
    cluster.delete_endpoint("default", "h2", "a/eth0")
    ep(cluster, "h2", "b/eth0", "0a:58:64:40:00:04", "100.64.0.4")
    cluster.kv.compact(cluster.revision())
    t = threading.Thread(
        target=cache.watch, args=("endpoints/", revisions["endpoints/"], stop), daemon=True
    )
    relists = metrics.REGISTRY.get_sample_value(RELISTS, {"reason": "compacted"})
    t.start()
    try:
        assert fed.wait(lambda s: [r.ip for r in s.remote] == ["100.64.0.4"])
        assert metrics.REGISTRY.get_sample_value(RELISTS, {"reason": "compacted"}) == relists + 1
    finally:
        stop.set()
        t.join(WAIT)


def test_a_host_whose_lease_expires_loses_its_endpoints_until_it_returns(cluster):
    lease = cluster.register_host("h2", "198.18.0.2", ttl=1)
    ep(cluster, "h2", "a/eth0", "0a:58:64:40:00:02", "100.64.0.2")
    fed, stop = Fed(), threading.Event()
    cache = ClusterCache(cluster, ME, MY_IP, fed.submit)
    threads = watching(cache, stop)
    try:
        assert len(fed.engine.state().remote) == 1
        assert fed.wait(lambda s: s.peers == () and s.remote == ())  # no keepalive: it expires
        assert not cluster.kv.keepalive(lease)
        assert [e.ip for e in cluster.list_endpoints()] == ["100.64.0.2"]  # not on the lease
        cluster.register_host("h2", "198.18.0.2", ttl=30)
        assert fed.wait(lambda s: [r.ip for r in s.remote] == ["100.64.0.2"])
    finally:
        stop.set()
        for t in threads:
            t.join(WAIT)


def test_nothing_is_left_of_records_that_went(cluster):
    """Caches are bounded by what is live: after every record goes, neither the cache nor
    the engine holds anything of them."""
    kv = cluster.kv
    for i in range(20):
        cluster.register_host(f"p{i}", f"198.18.1.{i + 2}", ttl=30)
        ep(cluster, f"p{i}", f"c{i}/eth0", f"0a:58:64:40:01:{i:02x}", f"100.64.1.{i + 2}")
    kv.put("endpoints/default/p1/junk", "{")
    kv.put("hosts/twin", json.dumps({"tunnel_ip": "198.18.1.2"}))
    kv.put("endpoints/gone/p1/x/eth0", kv.get("endpoints/default/p1/c1/eth0").value)
    fed = Fed()
    cache = ClusterCache(cluster, ME, MY_IP, fed.submit)
    cache.load()
    assert cache.held() > 0 and fed.engine.state().remote
    kv.delete_prefix("hosts/")
    kv.delete_prefix("endpoints/")
    kv.delete_prefix("networks/")
    cache.load()
    assert cache.held() == 0
    assert fed.engine.state() == Engine(tunnel_ofport=1, generation=1).state()
    assert set(fed.engine.flows()) == set(Engine(tunnel_ofport=1, generation=1).flows())


def test_endpoints_follow_their_host_to_a_new_tunnel_ip_as_one_object(cluster):
    """The cache and the engine share each endpoint's object (one copy of 10,000)."""
    mac = "0a:58:64:40:00:77"  # no other test's: objects are counted
    cluster.register_host("h2", "198.18.0.2", ttl=30)
    ep(cluster, "h2", "a/eth0", mac, "100.64.0.2")
    fed = Fed()
    cache = ClusterCache(cluster, ME, MY_IP, fed.submit)
    cache.load()
    cluster.register_host("h2", "198.18.0.4", ttl=30)
    cache.load()
    moved = RemoteEndpoint("default", "198.18.0.4", mac, "100.64.0.2")
    assert fed.engine.state().remote == (moved,)
    gc.collect()
    mine = [o for o in gc.get_objects() if isinstance(o, RemoteEndpoint) and o.mac == mac]
    assert len(mine) == 2  # ``moved``, and the one the cache and the engine hold


def test_a_network_from_before_indexes_gets_one_then_flows(cluster, caplog):
    """A record without an index is no network for the pipeline (logged once, never an
    error); the agent gives it the lowest free index, and its watch brings it in."""
    cluster.kv.put("networks/old", json.dumps({"vni": 5009, "cidr": "100.66.0.0/16"}))
    fed, stop = Fed(), threading.Event()
    cache = ClusterCache(cluster, ME, MY_IP, fed.submit)
    with caplog.at_level(logging.INFO):
        threads = watching(cache, stop)
    try:
        assert "network old has no index yet" in caplog.text
        assert cluster.get_network("old").index == 2
        assert fed.wait(lambda s: NetworkSpec("old", 5009, 2) in s.networks)
    finally:
        stop.set()
        for t in threads:
            t.join()


def test_a_peers_gateway_is_a_remote_endpoint_while_its_host_lives(cluster):
    from store.cluster import HostGateway

    gw2 = HostGateway("default", "100.64.0.64", "0a:58:64:40:00:40")
    lease = cluster.register_host("h2", "198.18.0.2", ttl=30, gateways=[gw2])
    fed, stop = Fed(), threading.Event()
    cache = ClusterCache(cluster, ME, MY_IP, fed.submit)
    threads = watching(cache, stop)
    try:
        assert fed.engine.state().remote == (
            RemoteEndpoint("default", "198.18.0.2", gw2.mac, gw2.ip),
        )
        moved = HostGateway("default", "100.64.0.65", "0a:58:64:40:00:41")
        cluster.register_host("h2", "198.18.0.2", ttl=30, gateways=[moved])  # a new record
        assert fed.wait(lambda s: [r.ip for r in s.remote] == ["100.64.0.65"])
        cluster.register_host("h3", "198.18.0.3", ttl=30)  # no gateway: nothing of it
        assert fed.wait(lambda s: s.peers == ("198.18.0.2", "198.18.0.3"))
        assert [r.ip for r in fed.engine.state().remote] == ["100.64.0.65"]
        cluster.unregister_host(lease)
        cluster.kv.delete("hosts/h2")
        assert fed.wait(lambda s: s.remote == () and s.peers == ("198.18.0.3",))
        assert cache.held() == 3  # the network, h3 and its peer IP: nothing of h2 left
    finally:
        stop.set()
        for t in threads:
            t.join(WAIT)
