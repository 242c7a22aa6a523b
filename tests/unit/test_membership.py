"""The keepalive on a real (SQLite) store: a lease that expired behind the agent's back is
registered again and the host's endpoints re-published."""

from __future__ import annotations

import threading
import time

from controller.membership import Membership
from store import open_cluster

WAIT = 10.0


def test_an_expired_lease_is_registered_again_and_endpoints_republished(tmp_path):
    cluster = open_cluster(f"sqlite:///{tmp_path}/cluster.db")
    republished = threading.Event()
    member = Membership(
        cluster, "h1", "198.18.0.1", ttl=1, republish=lambda: republished.set() or 3
    )
    member.register()
    first = member.lease
    stop = threading.Event()
    thread = threading.Thread(target=member.run, args=(stop,), daemon=True)
    thread.start()
    try:
        cluster.unregister_host(first)  # the lease ends, as after a long store outage
        assert republished.wait(WAIT)
        deadline = time.monotonic() + WAIT
        while not cluster.list_hosts() and time.monotonic() < deadline:
            time.sleep(0.05)
        [host] = cluster.list_hosts()
        assert (host.name, host.tunnel_ip) == ("h1", "198.18.0.1")
        assert member.lease != first and host.lease == member.lease
    finally:
        stop.set()
        thread.join(WAIT)
        cluster.close()


def test_gateways_published_later_stay_on_the_lease_and_come_back_with_it(tmp_path):
    from store.cluster import HostGateway

    cluster = open_cluster(f"sqlite:///{tmp_path}/cluster.db")
    member = Membership(cluster, "h1", "198.18.0.1", ttl=30, republish=lambda: 0)
    member.register()
    assert cluster.list_hosts()[0].gateways == ()
    gw = HostGateway("default", "100.64.0.2", "0a:58:64:40:00:02")
    member.publish([gw])  # the default network appeared after the agent started
    [host] = cluster.list_hosts()
    assert (host.gateways, host.lease) == ((gw,), member.lease)
    cluster.unregister_host(member.lease)
    member.register()  # what run() does when the lease expired
    assert cluster.list_hosts()[0].gateways == (gw,)
    cluster.close()
