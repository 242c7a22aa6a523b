"""The Kubernetes source: Namespaces, Pods and NetworkPolicies from an API server into the
cluster state (store/k8s_objects.py), where every agent reads them.

One small process (``ovs-overlay-k8s-source``, one replica: docs/operations.md) rather
than a watch in every agent: the API server serves one list-watch per kind instead of one
per node, and an agent needs nothing but the store.  Per kind, a thread lists, writes
the difference (:meth:`KindMirror.relist`), then follows the watch from the list's
resourceVersion (:meth:`KindMirror.on_event`).  A watch whose resourceVersion the API
server no longer has ends in ``410 Gone``: the kind is listed again, which also repairs
anything missed.  Only what policy needs is written, in the Kubernetes shape
(:func:`translate`), and a write that changes nothing is not made, so the many Pod
status updates cost one store read each and no watch event for the agents.

The translation and the event handling are pure over a K8sObjects; the process around
them (:func:`main`) only wires the official client's list and watch calls to them.
No kube-apiserver runs in this repository's tests: they feed real API objects and
recorded watch streams through the client's own deserializer (docs/operations.md).
"""

from __future__ import annotations

import argparse
import configparser
import functools
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from store.k8s_objects import (
    NAMESPACES,
    NETWORK_POLICIES,
    PODS,
    K8sObjects,
    Kind,
    object_key,
    stored_form,
)

log = logging.getLogger("ovs-overlay-k8s-source")

HTTP_GONE = 410
WATCH_TIMEOUT = 300  # seconds the API server keeps one watch open (then watched again)
BACKOFF = 5.0  # seconds between attempts while the API server or the store fails


@dataclass(frozen=True)
class Resource:
    """Where a kind is listed: the client's API class and its all-namespaces list call
    (also what the ClusterRole must allow: deploy/kubernetes, tests/unit/test_deploy.py)."""

    kind: Kind
    api: str
    list_call: str
    group: str  # the RBAC apiGroup ("" for the core group)


RESOURCES = (
    Resource(NAMESPACES, "CoreV1Api", "list_namespace", ""),
    Resource(PODS, "CoreV1Api", "list_pod_for_all_namespaces", ""),
    Resource(
        NETWORK_POLICIES,
        "NetworkingV1Api",
        "list_network_policy_for_all_namespaces",
        "networking.k8s.io",
    ),
)


class Gone(Exception):
    """The watch's resourceVersion is too old (410 Gone): list the kind again."""


@functools.cache
def _serializer():
    from kubernetes.client import ApiClient

    return ApiClient()


def _to_json(obj: object) -> object:
    """The object as the API server sends it (camelCase keys, no unset fields), by the
    client's own serializer."""
    if isinstance(obj, dict):
        return obj
    return _serializer().sanitize_for_serialization(obj)


def translate(kind: Kind, obj: object) -> dict:
    """An API object (the client's model, e.g. V1Pod, or its JSON) as stored: what policy
    needs, in Kubernetes' shape.  List items carry no apiVersion/kind: the kind's are set.
    PolicyError if netpol.model refuses it."""
    data = dict(_to_json(obj))
    data["apiVersion"], data["kind"] = kind.api_version, kind.kind
    return stored_form(data)[1]


def _metadata(obj: object) -> dict:
    meta = _to_json(obj).get("metadata") or {}
    return meta if isinstance(meta, dict) else {}


class KindMirror:
    """One kind's objects in the store kept equal to the API server's, from a list and the
    watch events after it; ``resource_version`` is where the watch resumes."""

    def __init__(self, objects: K8sObjects, kind: Kind):
        self.objects = objects
        self.kind = kind
        self.resource_version: str | None = None

    def relist(self, items: Iterable[object], resource_version: str) -> dict[str, int]:
        """Make the stored objects of the kind exactly ``items`` (a list response) and
        resume watching at ``resource_version``.  An item netpol.model refuses is logged
        and its stored version, if any, kept (as a refused update is)."""
        good, refused = [], []
        for item in items:
            try:
                good.append(translate(self.kind, item))
            except ValueError as exc:
                log.error("%s refused, its stored version (if any) kept: %s", self.kind.kind, exc)
                meta = _metadata(item)
                refused.append(object_key(self.kind, meta.get("namespace"), meta.get("name", "")))
        counts = self.objects.replace_kind(self.kind, good, keep=refused)
        self.resource_version = resource_version
        log.info(
            "listed %s at resourceVersion %s: %s", self.kind.resource, resource_version, counts
        )
        return counts

    def on_event(self, event: dict) -> str | None:
        """Apply one watch event (as the client's Watch yields it: ``type``, ``object``,
        ``raw_object``); returns what the store did (created, configured, unchanged,
        deleted, gone) or None for a bookmark.  Raises Gone on ``410 Gone``."""
        kind, obj = event["type"], event.get("object")
        if kind == "ERROR":
            status = event.get("raw_object") or obj or {}
            if status.get("code") == HTTP_GONE:
                raise Gone(status.get("message", "resource version too old"))
            raise RuntimeError(
                f"the {self.kind.resource} watch failed: {status.get('reason')}: "
                f"{status.get('message')}"
            )
        meta = _metadata(obj)
        outcome = None
        if kind in ("ADDED", "MODIFIED"):
            try:
                outcome = self.objects.put(translate(self.kind, obj))
            except ValueError as exc:
                log.error("%s refused, its stored version (if any) kept: %s", self.kind.kind, exc)
                outcome = "refused"
        elif kind == "DELETED":
            found = self.objects.delete(self.kind, meta.get("namespace"), meta["name"])
            outcome = "deleted" if found else "gone"
        elif kind != "BOOKMARK":
            raise RuntimeError(f"the {self.kind.resource} watch sent an event of type {kind!r}")
        if meta.get("resourceVersion"):
            self.resource_version = meta["resourceVersion"]
        return outcome


ListCall = Callable[[], tuple[list, str]]
WatchCall = Callable[[str], Iterator[dict]]


def follow(mirror: KindMirror, list_call: ListCall, watch: WatchCall, stop: threading.Event):
    """List, then watch from where the list (or the last event) left off, again and again
    (a watch ends after WATCH_TIMEOUT); on Gone, list again.  Returns when ``stop`` is set;
    any other failure propagates (the caller's fault boundary)."""
    while not stop.is_set():
        items, resource_version = list_call()
        mirror.relist(items, resource_version)
        try:
            while not stop.is_set():
                for event in watch(mirror.resource_version):
                    mirror.on_event(event)
                    if stop.is_set():
                        return
        except Gone as exc:
            log.info("%s watch expired (%s); listing again", mirror.kind.resource, exc)


# -- the process ----------------------------------------------------------------------------


def _client_calls(resource: Resource) -> tuple[ListCall, WatchCall]:
    """The official client's list and watch for ``resource`` (configured beforehand)."""
    from kubernetes import client, watch

    list_fn = getattr(getattr(client, resource.api)(), resource.list_call)

    def list_call() -> tuple[list, str]:
        response = list_fn()
        return response.items, response.metadata.resource_version

    def watch_call(resource_version: str) -> Iterator[dict]:
        try:
            yield from watch.Watch().stream(
                list_fn,
                resource_version=resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=WATCH_TIMEOUT,
            )
        except client.ApiException as exc:
            if exc.status == HTTP_GONE:
                raise Gone(exc.reason) from None
            raise

    return list_call, watch_call


def _run_kind(objects: K8sObjects, resource: Resource, stop: threading.Event) -> None:
    """The fault boundary of one kind: a failure (API server or store unreachable, a bad
    answer) is logged with the kind, and after BACKOFF the kind is listed again."""
    mirror = KindMirror(objects, resource.kind)
    list_call, watch_call = _client_calls(resource)
    while not stop.is_set():
        try:
            follow(mirror, list_call, watch_call, stop)
        except Exception:
            log.exception(
                "following %s failed; listing again in %.0fs", resource.kind.resource, BACKOFF
            )
            stop.wait(BACKOFF)


def store_url_from(args: argparse.Namespace) -> str:
    """``--store`` or the ``store`` of ``--agent-config``'s ``[agent]`` section (the agents'
    ConfigMap: one place for the etcd endpoints)."""
    if bool(args.store) == bool(args.agent_config):
        raise ValueError("give exactly one of --store URL and --agent-config FILE")
    if args.store:
        return args.store
    conf = configparser.ConfigParser(interpolation=None)  # a URL may hold '%'
    if not conf.read(args.agent_config) or not conf.has_option("agent", "store"):
        raise ValueError(f"{args.agent_config} has no [agent] store; give --store URL instead")
    return conf.get("agent", "store")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ovs-overlay-k8s-source", description=__doc__.split("\n")[0])
    p.add_argument("--store", help="sqlite:///PATH or etcd://HOST:PORT,...?cacert=&cert=&key=")
    p.add_argument("--agent-config", help="an agent.conf whose [agent] store to use")
    p.add_argument("--kubeconfig", help="a kubeconfig (default: the pod's service account)")
    p.add_argument("-v", "--verbose", action="store_true", help="log every listing and event")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from kubernetes import config as kube_config

    from store import open_kv

    try:
        url = store_url_from(args)
        if args.kubeconfig:
            kube_config.load_kube_config(config_file=args.kubeconfig)
        else:
            kube_config.load_incluster_config()
        kv = open_kv(url)
    except (ValueError, kube_config.ConfigException) as exc:
        print(f"ovs-overlay-k8s-source: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    objects = K8sObjects(kv)
    for resource in RESOURCES:
        threading.Thread(
            target=_run_kind,
            args=(objects, resource, stop),
            name=resource.kind.resource,
            daemon=True,
        ).start()
    stop.wait()
    log.info("stopping")  # the watch threads are daemons: a blocked read ends with the process
    return 0


if __name__ == "__main__":
    sys.exit(main())
