"""NetworkPolicy on this host: the Kubernetes objects and the pods' addresses watched
from the cluster state, compiled into the host's policy program (netpol/compile.py) and
handed to the engine, which sends br-int the flows that changed.

What it watches: ``k8s/`` (Namespaces, Pods, NetworkPolicies, as ``ovs-overlayctl
apply`` or the Kubernetes source writes them) and ``endpoints/NETWORK/`` of the
Kubernetes network (a pod's address: the endpoint record that names the pod,
``K8S_POD_NAMESPACE``/``K8S_POD_NAME`` from its CNI ADD).  A pod is subject to policy,
and selectable as a peer, once both its Pod object and its endpoint exist.  A record
that does not parse is logged once and skipped; the rest is served.

Every change recompiles the whole host: one program, diffed flow by flow in the engine
(so br-int gets only the flows that changed).  The compile is the cost; it is measured
in docs/benchmarks.md ("NetworkPolicy compile"), and a compile waits for changes that
arrive while the last one ran (one compile for a burst).  Conntrack runs for the
Kubernetes network from the agent's start (the program with no policy), so a first
policy finds every connection already tracked.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from netpol.compile import PolicyProgram, host_program
from netpol.model import Namespace, NetworkPolicy, Pod
from netpol.state import LOCAL_REVISION, PolicyState, from_records
from openflow.incremental import Change, SetPolicy
from store import k8s_objects
from store.cluster import ClusterState, RecordError
from store.kv import CompactedError, KeyValue, KvError
from store.policy_records import decode_record, endpoints_prefix

LOG = logging.getLogger(__name__)
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 10.0


class PolicyWatch:
    """The cluster's policy objects and Kubernetes pods' addresses, kept from the store,
    and this host's policy program, recompiled when they or the local ports change."""

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
        self._lock = threading.Lock()  # the objects and addresses
        # One compile and submit at a time, so programs reach the engine in the order
        # they were compiled; the local ports are the last the agent gave (submit_with).
        self._compile_lock = threading.Lock()
        # This host's endpoints in the network, from its OVSDB: IP -> (ofport, pod key or None).
        self._ports: dict[str, tuple[int, str | None]] = {}
        self._objects: dict[str, Namespace | Pod | NetworkPolicy] = {}  # by k8s/ key
        # endpoint key -> (pod key, IP, the record's revision)
        self._addresses: dict[str, tuple[str, str, int]] = {}
        self._bad: dict[str, int] = {}  # key -> mod_revision already logged as broken
        self._due = threading.Event()
        self._last: PolicyProgram | None = None

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
        """Make and submit the program whenever something changed, until ``stop``: one
        for whatever arrived meanwhile.  A failure here is logged and the next change
        retries; the compile itself runs in the reconciler's engine, which drops a program
        that does not compile (logged) and keeps the one it has."""
        while not stop.is_set():
            self._due.wait()
            self._due.clear()
            if stop.is_set():
                return
            try:
                self.compile_now()
            except Exception:
                LOG.exception("compiling NetworkPolicy failed; the next change retries")

    def changed(self) -> None:
        """Something policy depends on changed outside the store (a local port, the
        network's index): compile again."""
        self._due.set()

    def stop(self) -> None:
        self._due.set()

    def compile_now(self) -> None:
        self.submit_with([], None)

    def submit_with(
        self, changes: list[Change], ports: dict[str, tuple[int, str | None]] | None
    ) -> int:
        """Submit ``changes`` (the agent's local ports) with the policy program they make
        (``ports``: the local endpoints now, IP -> (ofport, pod key), from OVSDB; None:
        unchanged), in one batch: a new pod's port never has flows before its policy
        flows.  The pods here are known from OVSDB, not from the store's watch, which may
        not have brought the new pod's record yet.  Returns the reconciler's version."""
        with self._compile_lock:
            if ports is not None:
                self._ports = ports
            program = self.program()
            if program != self._last:
                changes = [*changes, SetPolicy(program)]
            version = self._submit(changes)
            self._last = program
            return version

    # -- reading ----------------------------------------------------------------------------

    def program(self) -> PolicyProgram | None:
        """This host's program from what is known now (None: the network is unknown)."""
        index = self._network_index(self._network)
        if index is None:
            return None
        ports = {ip: ofport for ip, (ofport, _) in self._ports.items()}
        return host_program(self.state(), index, ports, self._host_ip())

    def state(self) -> PolicyState:
        """Namespaces, pods with an address in the Kubernetes network (this host's own
        from its OVSDB, newer than any record), and policies."""
        with self._lock:
            objects = list(self._objects.values())
            addresses = list(self._addresses.values())
        local = [(pod, ip, LOCAL_REVISION) for ip, (_, pod) in self._ports.items() if pod]
        return from_records(objects, addresses + local)

    def policy_count(self) -> int:
        with self._lock:
            return sum(isinstance(o, NetworkPolicy) for o in self._objects.values())

    # -- records ----------------------------------------------------------------------------

    def _replace(self, prefix: str, kvs: list[KeyValue]) -> None:
        with self._lock:
            for key in [k for k in (*self._objects, *self._addresses) if k.startswith(prefix)]:
                self._forget(key)
            for kv in kvs:
                self._take(kv)

    def _take(self, kv: KeyValue) -> None:
        """One record into the view (the lock held); a broken one is skipped (and what the
        key held before goes: it is no longer what the store says) and a broken ``k8s/``
        record logged once per revision.  A broken endpoint record is not logged here: the
        cluster cache reports it, once."""
        self._objects.pop(kv.key, None)
        self._addresses.pop(kv.key, None)
        try:
            value = decode_record(kv)
        except RecordError as exc:
            if kv.key.startswith(k8s_objects.PREFIX) and self._bad.get(kv.key) != kv.mod_revision:
                LOG.warning("policy: skipping a broken record: %s", exc)
            self._bad[kv.key] = kv.mod_revision
            return
        self._bad.pop(kv.key, None)
        if isinstance(value, tuple):
            self._addresses[kv.key] = value
        elif value is not None:
            self._objects[kv.key] = value

    def _forget(self, key: str) -> None:
        self._objects.pop(key, None)
        self._addresses.pop(key, None)
        self._bad.pop(key, None)
