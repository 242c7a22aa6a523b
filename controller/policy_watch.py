"""NetworkPolicy on this host: the Kubernetes objects and the pods' addresses watched
from the cluster state, compiled into the host's policy program (netpol/compile.py) and
handed to the engine, which sends br-int the flows that changed.

What it watches: ``k8s/`` (Namespaces, Pods, NetworkPolicies, as ``ovs-overlayctl
apply`` or the Kubernetes source writes them) and ``endpoints/NETWORK/`` of the
Kubernetes network (a pod's address: the endpoint record that names the pod,
``K8S_POD_NAMESPACE``/``K8S_POD_NAME`` from its CNI ADD).  A pod is subject to policy,
and selectable as a peer, once both its Pod object and its endpoint exist.  A record
that does not parse is logged once and skipped; the rest is served.

A change is handed on as what it changed (netpol/incremental.py's inputs: a pod with
its address and port here, a namespace, a policy, the network's index), worked out for
the keys the change touched only and compared with what was last handed on; the
engine's policy compiler recomputes the flows those touch (docs/pipeline.md).  A burst
of changes is one batch.  Conntrack runs for the Kubernetes network from the agent's
start (the network's index with no policy), so a first policy finds every connection
already tracked.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence

from netpol.incremental import (
    PolicyInput,
    SetHost,
    SetLocalPod,
    SetNamespace,
    SetNetworkPolicy,
    SetPod,
)
from netpol.model import Namespace, NetworkPolicy, Pod
from netpol.state import LOCAL_REVISION, PodAddress
from openflow.incremental import Change, PolicyUpdate
from store import k8s_objects
from store.cluster import ClusterState, RecordError
from store.kv import CompactedError, KeyValue, KvError
from store.policy_records import decode_record, endpoints_prefix

LOG = logging.getLogger(__name__)
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 10.0


class PolicyWatch:
    """The cluster's policy objects and Kubernetes pods' addresses, kept from the store,
    and handed to the engine as the policy inputs they change (with the local ports)."""

    def __init__(
        self,
        cluster: ClusterState,
        network: str,
        network_index: Callable[[str], int | None],
        submit: Callable[[Sequence[Change]], int],
        host_ip: Callable[[], str | None] = lambda: None,
    ):
        self._cluster = cluster
        self._network = network  # the Kubernetes network: its pods are policy's
        self._network_index = network_index  # its dense index (conntrack zone), once known
        self._submit = submit
        self._host_ip = host_ip  # this host's own address in the network (its probes pass)
        self._lock = threading.Lock()  # the records and the dirty sets
        # One submit at a time, so inputs reach the engine in the order they were made;
        # the local ports are the last the agent gave (submit_with).
        self._compile_lock = threading.Lock()
        # This host's endpoints in the network, from its OVSDB: IP -> (ofport, pod key or None).
        self._ports: dict[str, tuple[int, str | None]] = {}
        self._local_ips: dict[str, set[str]] = defaultdict(set)  # pod key -> its ports' IPs
        self._objects: dict[str, Namespace | Pod | NetworkPolicy] = {}  # by k8s/ key
        self._named: dict[tuple[type, str], str] = {}  # (kind, name or NS/NAME) -> k8s/ key
        # endpoint key -> (pod key, IP, the record's revision), and indexes of them
        self._addresses: dict[str, tuple[str, str, int]] = {}
        self._by_pod: dict[str, set[str]] = defaultdict(set)  # pod key -> endpoint keys
        self._by_ip: dict[str, set[str]] = defaultdict(set)  # IP -> pod keys (records)
        self._bad: dict[str, int] = {}  # key -> mod_revision already logged as broken
        # What changed since the last submit, by identity, and what was last handed on.
        self._dirty: set[tuple[type, str]] = set()
        self._sent: dict[tuple[type, str], object] = {}
        self._due = threading.Event()

    @property
    def _endpoints_prefix(self) -> str:
        return endpoints_prefix(self._network)

    # -- running ----------------------------------------------------------------------------

    def load(self) -> dict[str, int]:
        """List both prefixes; returns the revision to watch each from.  KvError if the
        store is away (the agent's start needs it)."""
        revisions = {}
        for prefix in (k8s_objects.PREFIX, self._endpoints_prefix):
            kvs, revisions[prefix] = self._cluster.kv.range(prefix)
            self._replace(prefix, kvs)
        self._due.set()
        return revisions

    def watch(self, prefix: str, revision: int, stop: threading.Event) -> None:
        """Keep ``prefix`` until ``stop``: apply events, list again after a compaction, an
        outage or a bug (logged).  Returns only when stopped."""
        backoff = BACKOFF_FIRST
        while not stop.is_set():
            try:
                for batch in self._cluster.kv.watch(prefix, revision, stop):
                    revision = max(revision, batch[-1].revision)
                    with self._lock:
                        for event in batch:
                            if event.type == "delete":
                                self._forget(event.kv.key)
                            else:
                                self._take(event.kv)
                    self._due.set()
                    backoff = BACKOFF_FIRST
                if stop.is_set():
                    return
            except CompactedError:
                LOG.info("policy watch of %s: history compacted; listing it again", prefix)
            except KvError as exc:
                LOG.debug("policy watch of %s: store unreachable (%s)", prefix, exc)
            except Exception:
                LOG.exception("policy watch of %s failed; listing it again", prefix)
            if stop.wait(backoff):
                return
            backoff = min(BACKOFF_MAX, backoff * 2)
            try:
                kvs, revision = self._cluster.kv.range(prefix)
            except KvError:
                continue  # the watch fails again at once and backs off further
            self._replace(prefix, kvs)
            self._due.set()

    def run(self, stop: threading.Event) -> None:
        """Hand on what changed whenever something did, until ``stop``: one batch for
        whatever arrived meanwhile.  A failure here is logged and the next change retries;
        the compile itself runs in the reconciler's engine, whose compiler skips (and
        logs) an input it cannot compile."""
        while not stop.is_set():
            self._due.wait()
            self._due.clear()
            if stop.is_set():
                return
            try:
                self.compile_now()
            except Exception:
                LOG.exception("handing NetworkPolicy changes on failed; the next change retries")

    def changed(self) -> None:
        """Something policy depends on changed outside the store (the network's index, the
        host's address): look again."""
        self._due.set()

    def stop(self) -> None:
        self._due.set()

    def compile_now(self) -> None:
        self.submit_with([], None)

    def submit_with(
        self, changes: list[Change], ports: dict[str, tuple[int, str | None]] | None
    ) -> int:
        """Submit ``changes`` (the agent's local ports) with the policy inputs that changed
        (``ports``: the local endpoints now, IP -> (ofport, pod key), from OVSDB; None:
        unchanged), in one batch: a new pod's port never has flows before its policy
        flows.  The pods here are known from OVSDB, not from the store's watch, which may
        not have brought the new pod's record yet.  Returns the reconciler's version."""
        with self._compile_lock:
            with self._lock:
                if ports is not None:
                    self._set_ports(ports)
                inputs, sent = self._inputs()
            if inputs:
                changes = [*changes, PolicyUpdate(tuple(inputs))]
            try:
                version = self._submit(changes)
            except BaseException:
                with self._lock:  # not handed on: the next submit tries them again
                    self._dirty.update(k for k in sent if k != _HOST)
                raise
            for ident, value in sent.items():  # handed on: what the engine holds now
                if value in (None, (None, None)):
                    self._sent.pop(ident, None)  # absent is what was never sent
                else:
                    self._sent[ident] = value
            return version

    def policy_count(self) -> int:
        with self._lock:
            return sum(isinstance(o, NetworkPolicy) for o in self._objects.values())

    # -- what changed -------------------------------------------------------------------------

    def _inputs(self) -> tuple[list[PolicyInput], dict]:
        """The inputs for what changed since the last submit (the lock held), and the
        values they hand on, by identity (recorded once submitted)."""
        inputs: list[PolicyInput] = []
        sent: dict[tuple[type, str], object] = {}
        index = self._network_index(self._network)
        host = (index, self._host_ip() if index is not None else None)
        if host != self._sent.get(_HOST):
            inputs.append(SetHost(*host))
            sent[_HOST] = host
        for ident in sorted(self._dirty, key=lambda i: (i[0].__name__, i[1])):
            kind, name = ident
            if kind is Pod:
                value = self._resolve(name)
            else:
                key = self._named.get(ident)
                value = None if key is None else self._objects[key]
            if self._sent.get(ident) == value:
                continue
            sent[ident] = value
            if kind is Namespace:
                inputs.append(SetNamespace(name, value))
            elif kind is NetworkPolicy:
                inputs.append(SetNetworkPolicy(name, value))
            else:
                old = self._sent.get(ident) or (None, None)
                if old[0] != value[0]:
                    inputs.append(SetPod(name, value[0]))
                if old[1] != value[1]:
                    inputs.append(SetLocalPod(name, value[1]))
        self._dirty = set()
        return inputs, sent

    def _resolve(self, pod_key: str) -> tuple[PodAddress | None, int | None]:
        """A pod's address and its port here: its newest endpoint record's address, this
        host's own port first (netpol.state.from_records says why); none without both its
        Pod object and an address."""
        key = self._named.get((Pod, pod_key))
        if key is None:
            return (None, None)
        best: tuple[int, str] | None = None
        candidates = [self._addresses[e][1:] for e in self._by_pod.get(pod_key, ())]
        candidates += [(ip, LOCAL_REVISION) for ip in self._local_ips.get(pod_key, ())]
        for ip, revision in candidates:
            if best is None or (-revision, ip) < (-best[0], best[1]):
                best = (revision, ip)
        if best is None:
            return (None, None)
        port = self._ports.get(best[1])
        return (PodAddress(self._objects[key], best[1]), None if port is None else port[0])

    def _set_ports(self, ports: dict[str, tuple[int, str | None]]) -> None:
        """This host's ports now: the pods they name, or whose address they have, are to
        be looked at again."""
        for ip in self._ports.keys() | ports.keys():
            old, new = self._ports.get(ip), ports.get(ip)
            if old == new:
                continue
            for entry in (old, new):
                if entry is not None and entry[1] is not None:
                    self._dirty.add((Pod, entry[1]))
            self._dirty.update((Pod, k) for k in self._by_ip.get(ip, ()))
        self._ports = dict(ports)
        self._local_ips = defaultdict(set)
        for ip, (_, pod) in ports.items():
            if pod is not None:
                self._local_ips[pod].add(ip)

    # -- records ----------------------------------------------------------------------------

    def _replace(self, prefix: str, kvs: list[KeyValue]) -> None:
        with self._lock:
            for key in [k for k in (*self._objects, *self._addresses) if k.startswith(prefix)]:
                self._forget(key)
            listed = {kv.key for kv in kvs}
            for key in [k for k in self._bad if k.startswith(prefix) and k not in listed]:
                del self._bad[key]
            for kv in kvs:
                self._take(kv)

    def _take(self, kv: KeyValue) -> None:
        """One record into the view (the lock held); a broken one is skipped (and what the
        key held before goes: it is no longer what the store says) and a broken ``k8s/``
        record logged once per revision.  A broken endpoint record is not logged here: the
        cluster cache reports it, once."""
        self._forget(kv.key, keep_bad=True)
        try:
            value = decode_record(kv)
        except RecordError as exc:
            if kv.key.startswith(k8s_objects.PREFIX) and self._bad.get(kv.key) != kv.mod_revision:
                LOG.warning("policy: skipping a broken record: %s", exc)
            self._bad[kv.key] = kv.mod_revision
            return
        self._bad.pop(kv.key, None)
        if isinstance(value, tuple):
            pod, ip, _ = self._addresses[kv.key] = value
            self._by_pod[pod].add(kv.key)
            self._by_ip[ip].add(pod)
            self._dirty.add((Pod, pod))
        elif value is not None:
            self._objects[kv.key] = value
            ident = _identity(value)
            self._named[ident] = kv.key
            self._dirty.add(ident)

    def _forget(self, key: str, keep_bad: bool = False) -> None:
        obj = self._objects.pop(key, None)
        if obj is not None:
            ident = _identity(obj)
            if self._named.get(ident) == key:
                del self._named[ident]
            self._dirty.add(ident)
        address = self._addresses.pop(key, None)
        if address is not None:
            pod, ip, _ = address
            _discard(self._by_pod, pod, key)
            if not any(self._addresses[e][1] == ip for e in self._by_pod.get(pod, ())):
                _discard(self._by_ip, ip, pod)
            self._dirty.add((Pod, pod))
        if not keep_bad:
            self._bad.pop(key, None)


_HOST = (SetHost, "")  # the network's index and the host's address, as last handed on


def _identity(obj: Namespace | Pod | NetworkPolicy) -> tuple[type, str]:
    if isinstance(obj, Namespace):
        return (Namespace, obj.name)
    return (type(obj), obj.key)


def _discard(index: dict, name, key) -> None:
    keys = index.get(name)
    if keys is not None:
        keys.discard(key)
        if not keys:
            del index[name]
