"""The cluster state: the only thing hosts share.  SQLite embedded, etcd distributed.

``store.kv`` is the etcd-shaped key-value contract, ``store.sqlite`` its embedded backend
(one machine), ``store.etcd`` its etcd v3 backend (a real cluster), ``store.cluster`` the
typed state (hosts, networks, blocks, endpoints) on top of any backend, and
``store.k8s_objects`` the Kubernetes Namespaces, Pods and NetworkPolicies beside it.
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
from store.kv import (
    CompactedError,
    Event,
    KeyValue,
    KvError,
    KvStore,
    LeaseNotFoundError,
    StoreUnavailableError,
)

SQLITE_PREFIX = "sqlite:///"
ETCD_PREFIX = "etcd://"
URL_FORMS = (
    "sqlite:///ABSOLUTE/PATH or etcd://HOST:PORT[,HOST:PORT...][?cacert=&cert=&key=&timeout=]"
)

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
    "StoreUnavailableError",
    "open_cluster",
    "open_kv",
]


def open_kv(url: str) -> KvStore:
    """The key-value store at ``url``: ``sqlite:///ABSOLUTE/PATH`` (the file is created), or
    ``etcd://HOST:PORT[,HOST:PORT...][?cacert=PATH&cert=PATH&key=PATH&timeout=SECONDS]``
    (no I/O until the first call; see store/etcd.py).  StoreError for a bad URL."""
    if url.startswith(ETCD_PREFIX):
        from store.etcd import EtcdKvStore

        try:
            return EtcdKvStore.from_url(url)
        except ValueError as exc:
            raise StoreError(str(exc)) from exc
    if url.startswith(SQLITE_PREFIX):
        from store.sqlite import SqliteKvStore

        path = "/" + url[len(SQLITE_PREFIX) :].lstrip("/")
        try:
            return SqliteKvStore(path)
        except KvError as exc:
            raise StoreError(str(exc)) from exc
    raise StoreError(f"store URL {url!r} is not supported; use {URL_FORMS}")


def open_cluster(url: str) -> ClusterState:
    """The cluster state at ``url`` (see ``open_kv``)."""
    return ClusterState(open_kv(url))
