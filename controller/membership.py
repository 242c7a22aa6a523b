"""This host in the cluster state: its record on a lease, kept alive.

Other hosts count this host's endpoints only while ``hosts/NAME`` exists, so the lease
is what cuts a dead host off: ``host_ttl`` seconds (default 40, as long as Kubernetes
waits for a silent node) after the keepalives stop.  A clean agent stop or restart
keeps the lease (it is never revoked): an agent upgrade must not cut its pods off, and
only a host silent past the TTL goes.  Endpoints are not on the lease, so a host that
comes back finds its addresses still its own.

The keepalive outlives store outages: it logs once, retries, and when the lease expired
meanwhile registers again and re-publishes this host's endpoints from what OVSDB holds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from store.cluster import ClusterState
from store.kv import KvError, LeaseNotFoundError

LOG = logging.getLogger(__name__)

RETRY_MIN = 1.0


class Membership:
    def __init__(
        self,
        cluster: ClusterState,
        host: str,
        tunnel_ip: str,
        ttl: int,
        republish: Callable[[], int],
    ):
        self._cluster = cluster
        self._host = host
        self._tunnel_ip = tunnel_ip
        self._ttl = ttl
        self._republish = republish  # puts this host's endpoints again; returns how many
        self.lease: int | None = None
        # The store's health as the keepalive last found it, and since when (wall clock):
        # what ``ovs-overlayctl status`` shows.
        self.store_reachable = False
        self.store_since = time.time()

    def register(self) -> None:
        """Put this host on a new lease (raises KvError while the store is away)."""
        self.lease = self._cluster.register_host(self._host, self._tunnel_ip, self._ttl)
        self._reached(True)

    def _reached(self, ok: bool) -> None:
        if ok != self.store_reachable:
            self.store_reachable, self.store_since = ok, time.time()

    def run(self, stop: threading.Event) -> None:
        """Keep the lease alive until ``stop``; never returns for a store error."""
        interval = max(RETRY_MIN, self._ttl / 3)
        failing = False
        while not stop.wait(RETRY_MIN if failing else interval):
            try:
                alive = self.lease is not None and self._cluster.keepalive(self.lease)
            except LeaseNotFoundError:
                alive = False
            except KvError as exc:
                if not failing:
                    LOG.warning("cannot renew host %s's lease (%s); retrying", self._host, exc)
                failing = True
                self._reached(False)
                continue
            self._reached(True)
            try:
                if not alive:
                    LOG.warning("host %s's lease expired; registering it again", self._host)
                    self.register()
                    LOG.warning(
                        "host %s registered again; re-published %d endpoint(s) from OVSDB",
                        self._host,
                        self._republish(),
                    )
            except KvError as exc:
                if not failing:
                    LOG.warning("cannot register host %s again (%s); retrying", self._host, exc)
                failing = True
                self._reached(False)
                continue
            if failing:
                LOG.warning("host %s's lease is renewed again", self._host)
            failing = False
