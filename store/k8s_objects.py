"""Kubernetes Namespaces, Pods and NetworkPolicies in the cluster state, in Kubernetes' own
JSON shape, on any KvStore.

Keys::

    k8s/namespaces/NAME                  a v1 Namespace
    k8s/pods/NAMESPACE/NAME              a v1 Pod
    k8s/networkpolicies/NAMESPACE/NAME   a networking.k8s.io/v1 NetworkPolicy

Two writers fill them: ``ovs-overlayctl apply`` (and ``lab pod add --k8s``) and the
Kubernetes source (controller/k8s_source.py), which mirrors an API server.  Both go
through :meth:`K8sObjects.put`, which parses the object with netpol.model first, so an
object the API server would refuse is never written, and keeps only what policy needs
(:func:`stored_form`): name, namespace and labels; a Pod's containers' ports (named
ports are resolved per destination pod); a NetworkPolicy's spec.  A Namespace always
carries the ``kubernetes.io/metadata.name`` label, as the API server sets it.  Values
are canonical JSON (sorted keys), so an unchanged object is recognised by comparing
strings and re-applying it writes nothing (no revision, no watch event).

Readers (the agents) list ``k8s/`` with :meth:`K8sObjects.snapshot` and follow it with
:meth:`K8sObjects.watch` from the snapshot's revision; :func:`decode` turns a record
into the netpol.model value (a record another writer left broken raises RecordError,
which the reader logs and skips).  A Pod or NetworkPolicy may be stored before its
Namespace (the source writes each kind as it comes); deleting a Namespace deletes its
Pods and NetworkPolicies with it, in one transaction, as the API server does.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

from netpol import model
from store.cluster import RecordError
from store.kv import Compare, Delete, Event, KeyValue, KvStore, Put

PREFIX = "k8s/"

PutOutcome = Literal["created", "configured", "unchanged"]


@dataclass(frozen=True)
class Kind:
    """One kind of object kept: its key prefix (the API's plural resource name), how
    kubectl names it, and its parser."""

    resource: str  # "networkpolicies": the key segment and kubectl's plural
    kind: str  # "NetworkPolicy"
    api_version: str
    group_name: str  # kubectl's "networkpolicy.networking.k8s.io"
    aliases: tuple[str, ...]
    namespaced: bool
    parse: Callable[[object], object]

    @property
    def prefix(self) -> str:
        return f"{PREFIX}{self.resource}/"


NAMESPACES = Kind(
    "namespaces", "Namespace", "v1", "namespace", ("namespace", "ns"), False, model.parse_namespace
)
PODS = Kind("pods", "Pod", "v1", "pod", ("pod", "po"), True, model.parse_pod)
NETWORK_POLICIES = Kind(
    "networkpolicies",
    "NetworkPolicy",
    "networking.k8s.io/v1",
    "networkpolicy.networking.k8s.io",
    ("networkpolicy", "netpol", "netpols"),
    True,
    model.parse_network_policy,
)
KINDS = (NAMESPACES, PODS, NETWORK_POLICIES)


def kind_named(name: str) -> Kind:
    """The kind a command line names: plural, singular or short (``netpol``), any case,
    optionally with its group (``networkpolicies.networking.k8s.io``)."""
    wanted = name.lower()
    for k in KINDS:
        names = {k.resource, k.kind.lower(), *k.aliases}
        group = k.api_version.rpartition("/")[0]
        if group:
            names |= {f"{n}.{group}" for n in (k.resource, k.kind.lower())}
        if wanted in names:
            return k
    raise ValueError(
        f"kind {name!r} is not kept; use namespaces (ns), pods (po) or networkpolicies (netpol)"
    )


def kind_of(obj: object) -> Kind:
    """The kind of a Kubernetes object by its ``kind`` and ``apiVersion``; ValueError names
    what is wrong."""
    if not isinstance(obj, dict):
        raise ValueError(f"an object must be a mapping, not {type(obj).__name__}")
    kind, version = obj.get("kind"), obj.get("apiVersion")
    for k in KINDS:
        if kind == k.kind:
            if version != k.api_version:
                raise ValueError(f"apiVersion {version!r} is not {k.api_version}, for a {kind}")
            return k
    raise ValueError(f"kind {kind!r} is not one of Namespace, Pod, NetworkPolicy")


def object_key(kind: Kind, namespace: str | None, name: str) -> str:
    """The store key of an object (``namespace`` is ignored for a Namespace)."""
    if kind.namespaced:
        if not namespace:
            raise ValueError(f"a {kind.kind} needs a namespace")
        return f"{kind.prefix}{namespace}/{name}"
    return f"{kind.prefix}{name}"


def stored_form(obj: object) -> tuple[Kind, dict]:
    """The object as it is stored: parsed (PolicyError if the API server would refuse it,
    ValueError for an unknown kind), then cut to what policy needs, in Kubernetes' shape."""
    kind = kind_of(obj)
    kind.parse(obj)
    meta = obj["metadata"]
    labels = dict(meta.get("labels") or {})
    out_meta: dict = {"name": meta["name"]}
    if kind.namespaced:
        out_meta["namespace"] = meta["namespace"]
    if kind is NAMESPACES:
        labels[model.NAME_LABEL] = meta["name"]
    if labels:
        out_meta["labels"] = labels
    out: dict = {"apiVersion": kind.api_version, "kind": kind.kind, "metadata": out_meta}
    if kind is PODS:
        out["spec"] = {
            "containers": [_container(c) for c in obj.get("spec", {}).get("containers", [])]
        }
    elif kind is NETWORK_POLICIES:
        out["spec"] = obj["spec"]
    return kind, out


def _container(c: dict) -> dict:
    out: dict = {}
    if "name" in c:
        out["name"] = c["name"]
    ports = [
        {
            **({"name": p["name"]} if "name" in p else {}),
            "containerPort": p["containerPort"],
            "protocol": p.get("protocol", "TCP"),  # the API server's default
        }
        for p in c.get("ports", [])
    ]
    if ports:
        out["ports"] = ports
    return out


def encode(obj: dict) -> str:
    """Canonical JSON: equal objects are equal strings."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def key_parts(key: str) -> tuple[Kind, str | None, str]:
    """(kind, namespace or None, name) of a ``k8s/`` key; RecordError if it is not one."""
    for k in KINDS:
        if key.startswith(k.prefix):
            rest = key[len(k.prefix) :].split("/")
            if k.namespaced and len(rest) == 2 and all(rest):
                return k, rest[0], rest[1]
            if not k.namespaced and len(rest) == 1 and rest[0]:
                return k, None, rest[0]
    raise RecordError(f"{key}: not k8s/namespaces/NAME or k8s/{{pods,networkpolicies}}/NS/NAME")


def decode(kv: KeyValue) -> model.Namespace | model.Pod | model.NetworkPolicy:
    """The netpol.model value of a ``k8s/`` record; RecordError names what is wrong (a
    record that is not JSON, does not parse, or sits under another object's key)."""
    kind, namespace, name = key_parts(kv.key)
    try:
        obj = json.loads(kv.value)
    except ValueError:
        raise RecordError(f"{kv.key}: value is not JSON: {kv.value[:60]!r}") from None
    try:
        if kind_of(obj) is not kind:
            raise RecordError(f"{kv.key}: holds a {obj.get('kind')}, not a {kind.kind}")
        value = kind.parse(obj)
    except ValueError as exc:
        raise RecordError(f"{kv.key}: {exc}") from None
    if value.name != name or (namespace is not None and value.namespace != namespace):
        raise RecordError(f"{kv.key}: holds {kind.kind} {getattr(value, 'key', value.name)}")
    return value


class K8sObjects:
    """The Kubernetes objects of the cluster state on ``kv``."""

    def __init__(self, kv: KvStore):
        self.kv = kv

    # -- writes ---------------------------------------------------------------------------

    def put(self, obj: object) -> PutOutcome:
        """Create or replace ``obj`` (a Kubernetes object as JSON-like dicts), after parsing
        it; says which, or ``unchanged`` (nothing written).  PolicyError/ValueError for an
        object that is not valid, and nothing is written."""
        kind, stored = stored_form(obj)
        meta = stored["metadata"]
        key = object_key(kind, meta.get("namespace"), meta["name"])
        value = encode(stored)
        while True:
            old = self.kv.get(key)
            if old is not None and old.value == value:
                return "unchanged"
            compare = Compare(key, old.mod_revision if old else 0)
            if self.kv.txn((compare,), (Put(key, value),)).succeeded:
                return "configured" if old else "created"
            # Another writer got there between the read and the write: look again.

    def delete(self, kind: Kind, namespace: str | None, name: str) -> bool:
        """Delete an object; False if there was none (not an error).  A Namespace takes its
        Pods and NetworkPolicies with it, at one revision."""
        key = object_key(kind, namespace, name)
        if kind is not NAMESPACES:
            return self.kv.delete(key)
        while True:
            old = self.kv.get(key)
            if old is None:
                return False
            ops = [
                Delete(key),
                Delete(f"{PODS.prefix}{name}/", prefix=True),
                Delete(f"{NETWORK_POLICIES.prefix}{name}/", prefix=True),
            ]
            if self.kv.txn((Compare(key, old.mod_revision),), ops).succeeded:
                return True

    def replace_kind(
        self, kind: Kind, objects: Iterable[object], keep: Iterable[str] = ()
    ) -> dict[str, int]:
        """Make the stored objects of ``kind`` exactly ``objects`` (a re-list from an API
        server): put each, delete the stored ones not among them nor under a key in
        ``keep``.  Returns counts by outcome, "deleted" included.  Objects are parsed
        before anything is written; an invalid one raises and nothing changes."""
        forms = [stored_form(o) for o in objects]
        for k, _ in forms:
            if k is not kind:
                raise ValueError(f"a {k.kind} is not a {kind.kind}")
        counts = {"created": 0, "configured": 0, "unchanged": 0, "deleted": 0}
        keep = set(keep)
        for _, form in forms:
            meta = form["metadata"]
            keep.add(object_key(kind, meta.get("namespace"), meta["name"]))
            counts[self.put(form)] += 1
        for kv in self.kv.range(kind.prefix)[0]:
            if kv.key not in keep and self.kv.delete(kv.key):
                counts["deleted"] += 1
        return counts

    # -- reads ----------------------------------------------------------------------------

    def get(self, kind: Kind, namespace: str | None, name: str) -> dict | None:
        """The stored object, or None."""
        kv = self.kv.get(object_key(kind, namespace, name))
        return None if kv is None else json.loads(kv.value)

    def list(self, kind: Kind, namespace: str | None = None) -> list[dict]:
        """The stored objects of ``kind`` (of one namespace if given), sorted by key."""
        prefix = kind.prefix + (f"{namespace}/" if namespace and kind.namespaced else "")
        return [json.loads(kv.value) for kv in self.kv.range(prefix)[0]]

    def snapshot(self) -> tuple[list[KeyValue], int]:
        """Every ``k8s/`` record and the revision to watch from (the list of list-watch)."""
        return self.kv.range(PREFIX)

    def watch(self, revision: int, stop: threading.Event) -> Iterator[list[Event]]:
        """Batches of changes to ``k8s/`` after ``revision`` until ``stop`` (KvStore.watch:
        CompactedError means take a new snapshot)."""
        yield from self.kv.watch(PREFIX, revision, stop)
