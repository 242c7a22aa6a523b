"""The agent's PolicyWatch on a real (SQLite) store: what it hands the engine is exactly
what changed, and the engine's compiler, fed only that, holds the store's policy state."""

from __future__ import annotations

import json
import threading
import time

import pytest

from controller.policy_watch import PolicyWatch
from netpol.incremental import PolicyCompiler, SetPod
from store import open_cluster
from store.k8s_objects import K8sObjects, kind_named
from tests.unit.netpol_e2e import ALL, ip_of, pod_object

NETWORK = "default"


@pytest.fixture
def cluster(tmp_path):
    """The e2e model's Namespaces and Pods, each pod's endpoint record on host h1."""
    cluster = open_cluster(f"sqlite:///{tmp_path}/cluster.db")
    objects = K8sObjects(cluster.kv)
    for ns in ("x", "y", "z"):
        objects.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    for i, key in enumerate(ALL):
        objects.put({"apiVersion": "v1", "kind": "Pod", **pod_object(key)})
        _endpoint(cluster, f"c{i}", key, ip_of(key))
    try:
        yield cluster
    finally:
        cluster.close()


def _endpoint(cluster, container: str, pod: str, ip: str) -> None:
    record = {"mac": "0a:58:00:00:00:01", "ip": ip, "container_id": container, "ifname": "eth0"}
    cluster.kv.put(f"endpoints/{NETWORK}/h1/{container}/eth0", json.dumps({**record, "pod": pod}))


class Engine:
    """What the reconciler does with the watch's batches: the policy inputs into a
    compiler (the rest is the engine's, tested elsewhere); ``fail`` makes the next
    submit raise, as a stopping reconciler does."""

    def __init__(self):
        self.compiler = PolicyCompiler(generation=1)
        self.batches: list[list] = []
        self.fail = False

    def submit(self, changes) -> int:
        if self.fail:
            self.fail = False
            raise RuntimeError("reconciler stopped")
        self.batches.append(list(changes))
        self.compiler.update(i for c in changes for i in c.inputs)
        return len(self.batches)

    def pods(self) -> dict[str, str]:
        return {p.key: p.ip for p in self.compiler.program().state.pods}

    def local(self) -> dict[str, int]:
        return {lp.key: lp.ofport for lp in self.compiler.program().view.local}


def _watching(cluster, engine: Engine):
    watch = PolicyWatch(cluster, NETWORK, lambda name: 1, engine.submit)
    revisions = watch.load()
    stop = threading.Event()
    threads = [
        threading.Thread(target=watch.watch, args=(p, r, stop), daemon=True)
        for p, r in revisions.items()
    ]
    for t in threads:
        t.start()
    return watch, stop, threads


def _until(condition, what: str) -> None:
    """The watch thread's events arrive when they arrive: wait for the state (bounded)."""
    deadline = time.monotonic() + 10
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"the watch never brought {what}")
        time.sleep(0.01)


def test_the_watch_hands_on_only_what_changed_and_the_compiler_follows_the_store(cluster):
    engine = Engine()
    watch, stop, threads = _watching(cluster, engine)
    try:
        watch.submit_with([], {ip_of("x/a"): (5, "x/a")})
        assert engine.pods() == {k: ip_of(k) for k in ALL}
        assert engine.local() == {"x/a": 5}
        # Nothing new: nothing handed on.
        watch.submit_with([], {ip_of("x/a"): (5, "x/a")})
        assert engine.batches[-1] == []

        # x/b's record now names x/c at another address (an IP reused by another pod);
        # the newest record of x/c wins, x/b has none left.
        _endpoint(cluster, "c1", "x/c", "100.64.9.9")
        _until(lambda: (watch.compile_now() or True) and "x/b" not in engine.pods(), "x/b gone")
        assert engine.pods()["x/c"] == "100.64.9.9"
        pods_touched = {i.key for c in engine.batches[-1] for i in c.inputs}
        assert pods_touched <= {"x/b", "x/c"}  # only the two pods the record concerned

        # This host's port for x/a moves to a new address: its own port wins over the
        # store's record (it is newer than any), at its new port number.
        watch.submit_with([], {"100.64.7.7": (6, "x/a")})
        assert engine.pods()["x/a"] == "100.64.7.7" and engine.local() == {"x/a": 6}

        # A submit that fails hands the same change on the next time.
        engine.fail = True
        with pytest.raises(RuntimeError):
            watch.submit_with([], {})
        watch.submit_with([], {})
        assert engine.pods()["x/a"] == ip_of("x/a") and engine.local() == {}

        # A Pod deleted: gone from the compiler, and from what the watch remembers.
        K8sObjects(cluster.kv).delete(kind_named("pods"), "y", "a")
        _until(lambda: (watch.compile_now() or True) and "y/a" not in engine.pods(), "y/a gone")
        assert [i for c in engine.batches[-1] for i in c.inputs] == [SetPod("y/a", None)]
        assert not any(name == "y/a" for _, name in watch._sent)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
