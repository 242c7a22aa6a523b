"""The agent's copy of the cluster state it builds flows from, kept by list-then-watch.

List ``hosts/``, ``networks/`` and ``endpoints/`` once, then watch only those three
prefixes (never ``ipam/``, ``attachments/``, ``blocks/``: address churn is none of the
pipeline's business), one thread per prefix, and turn every event into engine changes
(openflow/incremental.py) for the reconciler.  Cost follows the change: an event
touches its own record, and a host record touches that host's endpoints.

Records are decoded one at a time (store.cluster.decode_*); a bad one is logged once
per key and revision and skipped, and the rest is served.  Conflicts are resolved
deterministically, the older record (lower create_revision) winning: two hosts with one
tunnel IP here (so the loser's endpoints are never taken for the winner's), and the
rest (one MAC or IP per network, one VNI per network, local port over remote endpoint)
in the engine by rank.

Faults: a compacted history makes the watcher re-list its prefix and turn the
difference between cache and list into changes.  A store error leaves the installed
flows as they are, is logged once, and is retried with backoff, then the prefix is
re-listed as after a compaction.  The agent never exits for a store outage.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from controller import metrics
from openflow.incremental import Change, Peer, Remove, Upsert
from openflow.state import NetworkSpec, RemoteEndpoint
from store.cluster import (
    WATCHED_PREFIXES,
    ClusterState,
    Endpoint,
    Host,
    Network,
    RecordError,
    StoreError,
    decode_endpoint,
    decode_host,
    decode_network,
)
from store.kv import CompactedError, Event, KeyValue, KvError

LOG = logging.getLogger(__name__)

BACKOFF_FIRST = 0.2
BACKOFF_MAX = 5.0
REMOTE_RANK = 1  # remote endpoints lose to local ports (rank 0) whatever their age


@dataclass(frozen=True, slots=True)
class _Remote:
    """What the cache keeps of an endpoint record: its host, and the engine's object and
    rank for it, which the engine holds too while the host is a peer (one copy of each
    for both; the record's other fields are not the pipeline's business)."""

    host: str
    rank: tuple
    obj: RemoteEndpoint  # host_ip as last submitted; "" before its host had one


class ClusterCache:
    """Hosts, networks and endpoints of the cluster as this host's agent needs them.

    ``submit`` takes engine changes (the reconciler's); ``on_store_back`` is called (on the
    watch's thread: it must not block) when the store answers again after an outage."""

    def __init__(
        self,
        cluster: ClusterState,
        me: str,
        my_tunnel_ip: str,
        submit: Callable[[Sequence[Change]], int],
        on_store_back: Callable[[], None] | None = None,
        on_networks: Callable[[], None] | None = None,
    ):
        self._cluster = cluster
        self._on_store_back = on_store_back
        self._on_networks = on_networks  # after networks changed (the agent's egress rules)
        self._me = me
        self._my_ip = my_tunnel_ip
        self._submit = submit
        self._lock = threading.Lock()
        self._hosts: dict[str, tuple[Host, int]] = {}  # valid host records: (host, create_rev)
        self._networks: dict[str, Network] = {}
        self._endpoints: dict[str, _Remote] = {}  # by store key
        # host -> its endpoint keys (a dict to None: a fifth of a set's size at 20 keys)
        self._by_host: dict[str, dict[str, None]] = defaultdict(dict)
        self._peer_of: dict[str, str] = {}  # host -> tunnel IP, for hosts that won their IP
        self._bad: dict[str, int] = {}  # bad record key -> the mod_revision logged
        self._lost: dict[str, str] = {}  # host -> the tunnel IP it lost (logged)
        self._orphans: dict[str, int] = {}  # endpoint naming no network -> revision logged
        self._outage_logged = False
        self._unindexed: dict[str, int] = {}  # network without an index -> revision logged
        self._to_index: set[str] = set()  # networks to give an index (assign_network_index)
        self._gateway_keys: dict[str, set[str]] = {}  # host -> keys of its gateways' changes

    # -- reading ------------------------------------------------------------------------

    def network(self, name: str) -> Network | None:
        with self._lock:
            return self._networks.get(name)

    def peer_ips(self) -> list[str]:
        with self._lock:
            return sorted(self._peer_of.values())

    def peer_count(self) -> int:
        with self._lock:
            return len(self._peer_of)

    def store_reachable(self) -> bool:
        """False from a watch's first store error until the store answers again."""
        with self._lock:
            return not self._outage_logged

    # -- running ------------------------------------------------------------------------

    def load(self) -> dict[str, int]:
        """List every watched prefix into the cache and submit the result; returns the
        revision to watch each prefix from.  Raises KvError if the store is away (the
        agent's start needs it)."""
        revisions = {}
        changes: list[Change] = []
        for prefix in WATCHED_PREFIXES:
            kvs, revisions[prefix] = self._cluster.kv.range(prefix)
            changes += self._replace(prefix, kvs)
        self._submit(changes)
        self._index_networks()
        return revisions

    def watch(self, prefix: str, revision: int, stop: threading.Event) -> None:
        """Keep ``prefix`` in the cache until ``stop``: apply watch events, re-list after a
        compaction or a store outage.  Returns only when stopped."""
        backoff = 0.0
        while not stop.is_set():
            try:
                for batch in self._cluster.watch_changes(prefix, stop, revision):
                    revision = max(revision, batch[-1].revision)
                    self._submit_if_any(self._apply_events(batch))
                    self._networks_changed(prefix)
                    self._index_networks()
                    self._store_back()
                    backoff = 0.0
                if stop.is_set():
                    return
                LOG.warning("the watch of %s ended by itself; watching again", prefix)
                if stop.wait(BACKOFF_FIRST):
                    return
                continue  # from the last revision seen: nothing is missed
            except CompactedError as exc:
                LOG.info("watching %s: %s; listing it again", prefix, exc)
                metrics.STORE_RELISTS.labels("compacted").inc()
            except KvError as exc:
                self._store_away(prefix, exc)
                metrics.STORE_RELISTS.labels("outage").inc()
                backoff = min(BACKOFF_MAX, max(BACKOFF_FIRST, backoff * 2))
                if stop.wait(backoff):
                    return
            except Exception:  # a bug: say what we were doing, then list again
                LOG.exception("watching %s failed; listing it again", prefix)
                metrics.STORE_RELISTS.labels("error").inc()
                backoff = min(BACKOFF_MAX, max(BACKOFF_FIRST, backoff * 2))
                if stop.wait(backoff):
                    return
            revision = self._relist(prefix, stop)

    def _relist(self, prefix: str, stop: threading.Event) -> int:
        """List ``prefix`` again until it works; the difference becomes changes."""
        backoff = BACKOFF_FIRST
        while not stop.is_set():
            try:
                kvs, revision = self._cluster.kv.range(prefix)
            except KvError as exc:
                self._store_away(prefix, exc)
                stop.wait(backoff)
                backoff = min(BACKOFF_MAX, backoff * 2)
                continue
            self._submit_if_any(self._replace(prefix, kvs))
            self._networks_changed(prefix)
            self._store_back()
            try:
                self._index_networks()
            except KvError as exc:  # the next event or re-list tries again
                self._store_away(prefix, exc)
            return revision
        return 0

    def _networks_changed(self, prefix: str) -> None:
        if prefix == "networks/" and self._on_networks is not None:
            self._on_networks()

    def _store_away(self, prefix: str, exc: Exception) -> None:
        with self._lock:
            first, self._outage_logged = not self._outage_logged, True
        if first:
            metrics.STORE_OUTAGES.inc()
            LOG.warning(
                "the cluster state is unreachable (%s); br-int keeps its flows, retrying", exc
            )
        else:
            LOG.debug("watching %s: store still unreachable: %s", prefix, exc)

    def _store_back(self) -> None:
        with self._lock:
            was, self._outage_logged = self._outage_logged, False
        if was:
            metrics.STORE_RECONNECTS.inc()
            LOG.warning("the cluster state is reachable again")
            if self._on_store_back is not None:
                self._on_store_back()

    def _submit_if_any(self, changes: list[Change]) -> None:
        if changes:
            self._submit(changes)

    # -- records to changes -----------------------------------------------------------------

    def _apply_events(self, events: list[Event]) -> list[Change]:
        with self._lock:
            changes: list[Change] = []
            for event in events:
                kv = event.kv if event.type == "put" else None
                changes += self._set(event.key, kv)
            return changes

    def _replace(self, prefix: str, kvs: list[KeyValue]) -> list[Change]:
        """The cache's ``prefix`` becomes exactly ``kvs`` (a fresh list)."""
        with self._lock:
            fresh = {kv.key: kv for kv in kvs}
            changes: list[Change] = []
            for key in self._keys(prefix) - fresh.keys():
                changes += self._set(key, None)
            for kv in kvs:
                changes += self._set(kv.key, kv)
            return changes

    def _keys(self, prefix: str) -> set[str]:
        """Every key of ``prefix`` the cache knows, bad records included."""
        bad = {key for key in self._bad if key.startswith(prefix)}
        if prefix == "hosts/":
            return bad | {f"hosts/{name}" for name in self._hosts}
        if prefix == "networks/":
            return bad | {f"networks/{name}" for name in self._networks}
        return bad | set(self._endpoints)

    def _set(self, key: str, kv: KeyValue | None) -> list[Change]:
        """(Holding the lock.)  ``key`` now holds ``kv`` (None: deleted); the changes."""
        record = None
        if kv is not None:
            try:
                record = self._decode(kv)
            except RecordError as exc:
                if self._bad.get(key) != kv.mod_revision:
                    LOG.warning("skipped a bad record in the cluster state: %s", exc)
                    self._bad[key] = kv.mod_revision
        if record is not None or kv is None:
            self._bad.pop(key, None)
        if key.startswith("hosts/"):
            return self._set_host(key[len("hosts/") :], record, kv)
        if key.startswith("networks/"):
            return self._set_network(key[len("networks/") :], record, kv)
        return self._set_endpoint(key, record, kv)

    @staticmethod
    def _decode(kv: KeyValue):
        if kv.key.startswith("hosts/"):
            return decode_host(kv)
        if kv.key.startswith("networks/"):
            return decode_network(kv)
        return decode_endpoint(kv)

    def _set_network(self, name: str, net: Network | None, kv: KeyValue | None) -> list[Change]:
        key = f"networks/{name}"
        if net is None:
            self._unindexed.pop(name, None)
            return [Remove(key)] if self._networks.pop(name, None) is not None else []
        if net.index is None:
            # From before network indexes: no flows until it has one (the pipeline keeps
            # the index in a register).  This agent gives it one after this batch.
            # Not a bad record (an upgrade), so said once at INFO, by the network's name.
            if self._unindexed.get(name) != kv.mod_revision:
                LOG.info("network %s has no index yet (made before indexes); assigning one", name)
                self._unindexed[name] = kv.mod_revision
            self._to_index.add(name)
            return [Remove(key)] if self._networks.pop(name, None) is not None else []
        self._unindexed.pop(name, None)
        self._networks[name] = net
        return [Upsert(key, NetworkSpec(net.name, net.vni, net.index), (kv.create_revision,))]

    def _index_networks(self) -> None:
        """Give the networks seen without an index one (store.cluster.assign_network_index,
        a compare-and-swap any agent may race); the record's watch event then brings the
        network's flows.  A KvError goes to the caller, whose retry lists the networks
        again and so finds them again."""
        with self._lock:
            names, self._to_index = self._to_index, set()
        for name in sorted(names):
            try:
                self._cluster.assign_network_index(name)
            except StoreError as exc:
                LOG.warning("network %s has no index and gets none: %s", name, exc)

    def _set_host(self, name: str, host: Host | None, kv: KeyValue | None) -> list[Change]:
        if name == self._me:
            return []  # this host: its tunnel is the source, never a peer
        if host is not None and host.tunnel_ip == self._my_ip:
            LOG.warning(
                "skipped host %s: its tunnel IP %s is this host's (%s)",
                name,
                host.tunnel_ip,
                self._me,
            )
            host = None
        old = self._hosts.get(name)
        if host is None:
            if old is None:
                return []
            del self._hosts[name]
            self._lost.pop(name, None)
            contested = {old[0].tunnel_ip}
        else:
            self._hosts[name] = (host, kv.create_revision)
            contested = {host.tunnel_ip} | ({old[0].tunnel_ip} if old else set())
        return self._settle_peers(contested)

    def _settle_peers(self, ips: set[str]) -> list[Change]:
        """Who holds each of ``ips`` now (the oldest host record claiming it), and the
        changes for every host whose peer IP changed: its peer and its endpoints."""
        changes: list[Change] = []
        holders = {ip: None for ip in ips}
        for name, (host, rev) in self._hosts.items():
            if host.tunnel_ip in holders:
                best = holders[host.tunnel_ip]
                if best is None or (rev, name) < best:
                    holders[host.tunnel_ip] = (rev, name)
        winners = {ip: h[1] for ip, h in holders.items() if h is not None}
        claimants = {name for name, (host, _) in self._hosts.items() if host.tunnel_ip in ips}
        for name in sorted(claimants | {n for n, ip in self._peer_of.items() if ip in ips}):
            entry = self._hosts.get(name)
            ip = entry[0].tunnel_ip if entry else None
            wins = ip is not None and winners.get(ip) == name
            new = ip if wins else None
            if entry is not None and not wins and self._lost.get(name) != ip:
                LOG.warning(
                    "skipped host %s: its tunnel IP %s is held by host %s, which came first",
                    name,
                    ip,
                    winners.get(ip),
                )
            if entry is not None and not wins:
                self._lost[name] = ip
            else:
                self._lost.pop(name, None)
            gateways = self._gateway_changes(name, new)
            if self._peer_of.get(name) == new:
                changes += gateways
                continue
            if new is None:
                self._peer_of.pop(name, None)
                changes.append(Remove(f"hosts/{name}"))
            else:
                self._peer_of[name] = new
                changes.append(Upsert(f"hosts/{name}", Peer(new), (entry[1],)))
            for ep_key in sorted(self._by_host.get(name, ())):
                changes += self._endpoint_change(ep_key)
            changes += gateways
        return changes

    def _gateway_changes(self, name: str, peer_ip: str | None) -> list[Change]:
        """(Holding the lock.)  Host ``name``'s gateways as remote endpoints behind its
        tunnel IP ``peer_ip`` (None: it has no live peer, so its gateways go): every other
        host then sends the gateway's MAC to it and answers ARP for its unique address.
        Unchanged ones come again as equal upserts, which the engine ignores."""
        entry = self._hosts.get(name)
        want: dict[str, Change] = {}
        if entry is not None and peer_ip is not None:
            host, rev = entry
            for gw in host.gateways:
                key = f"gateways/{name}/{gw.network}"
                want[key] = Upsert(
                    key, RemoteEndpoint(gw.network, peer_ip, gw.mac, gw.ip), (REMOTE_RANK, rev)
                )
        old = self._gateway_keys.pop(name, set())
        if want:
            self._gateway_keys[name] = set(want)
        return [Remove(k) for k in sorted(old - want.keys())] + list(want.values())

    def _set_endpoint(self, key: str, ep: Endpoint | None, kv: KeyValue | None) -> list[Change]:
        old = self._endpoints.pop(key, None)
        if old is not None:
            hosted = self._by_host[old.host]
            hosted.pop(key, None)
            if not hosted:
                del self._by_host[old.host]
        if ep is not None and ep.host != self._me:  # ours come from OVSDB
            obj = RemoteEndpoint(ep.network, self._peer_of.get(ep.host, ""), ep.mac, ep.ip)
            rank = (REMOTE_RANK, kv.create_revision)
            if old is not None and (old.obj, old.rank) == (obj, rank):
                obj, rank = old.obj, old.rank  # what the engine holds (a re-list): one copy
            self._endpoints[key] = _Remote(ep.host, rank, obj)
            self._by_host[ep.host][key] = None
            if ep.network not in self._networks and self._orphans.get(key) != kv.mod_revision:
                LOG.warning(
                    "endpoint %s names network %s, which does not exist; it has no flows "
                    "until the network does",
                    key,
                    ep.network,
                )
                self._orphans[key] = kv.mod_revision
        else:
            self._orphans.pop(key, None)
        if old is None and key not in self._endpoints:
            return []
        return self._endpoint_change(key)

    def _endpoint_change(self, key: str) -> list[Change]:
        entry = self._endpoints.get(key)
        if entry is None:
            return [Remove(key)]
        ip = self._peer_of.get(entry.host)
        if ip is None:  # its host is gone (or lost its IP): it counts only with a live host
            return [Remove(key)]
        if entry.obj.host_ip != ip:
            entry = _Remote(entry.host, entry.rank, dataclasses.replace(entry.obj, host_ip=ip))
            self._endpoints[key] = entry
        return [Upsert(key, entry.obj, entry.rank)]

    def held(self) -> int:
        """How many entries the cache holds in all: bounded by the records alive in the
        store (a deleted record, good or bad, leaves nothing behind)."""
        with self._lock:
            return sum(
                len(d)
                for d in (
                    self._hosts,
                    self._networks,
                    self._endpoints,
                    self._by_host,
                    self._peer_of,
                    self._bad,
                    self._lost,
                    self._orphans,
                    self._gateway_keys,
                )
            )
