"""The cluster state: the only thing hosts share.  SQLite embedded, etcd (later) distributed.

``store.kv`` is the etcd-shaped key-value contract, ``store.sqlite`` its embedded backend,
``store.cluster`` the typed state (hosts, networks, blocks, endpoints) on top of any backend.
"""

from __future__ import annotations

from store.cluster import (
    AddressExhaustedError,
    Block,
    ClusterState,
    Endpoint,
    Host,
    Network,
    StoreError,
)
from store.kv import CompactedError, Event, KeyValue, KvError, KvStore, LeaseNotFoundError

SQLITE_PREFIX = "sqlite:///"

__all__ = [
    "AddressExhaustedError",
    "Block",
    "ClusterState",
    "CompactedError",
    "Endpoint",
    "Event",
    "Host",
    "KeyValue",
    "KvError",
    "KvStore",
    "LeaseNotFoundError",
    "Network",
    "StoreError",
    "open_cluster",
    "open_kv",
]


def open_kv(url: str) -> KvStore:
    """The key-value store at ``url``: ``sqlite:///ABSOLUTE/PATH`` (the file is created)."""
    if url.startswith(SQLITE_PREFIX):
        from store.sqlite import SqliteKvStore

        path = "/" + url[len(SQLITE_PREFIX) :].lstrip("/")
        try:
            return SqliteKvStore(path)
        except KvError as exc:
            raise StoreError(str(exc)) from exc
    raise StoreError(f"store URL {url!r} is not supported; use sqlite:///ABSOLUTE/PATH")


def open_cluster(url: str) -> ClusterState:
    """The cluster state at ``url`` (see ``open_kv``)."""
    return ClusterState(open_kv(url))
