"""The KV contract every store backend must meet (store/kv.py), run against each backend:
SQLite, and a real etcd (tests/etcd_server.py, one member shared by the session).

A backend is a factory for clients on one store, a URL a child process can open, and a way
to move lease time forward: SQLite's clock is injected, so the tests that control time
run on SQLite only (``clock_backend``); etcd has its own real-time lease test in
test_store_etcd.py.  On the shared etcd every test starts by deleting every key and
compares revisions relative to its start.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from store import open_kv
from store import sqlite as sqlite_module
from store.kv import (
    CompactedError,
    Compare,
    Delete,
    Event,
    KvStore,
    LeaseNotFoundError,
    Put,
    prefix_end,
)
from store.sqlite import SqliteKvStore

REPO = Path(__file__).resolve().parents[2]
WAIT = 5.0  # seconds a test waits for a watch event before failing


class FakeClock:
    """Wall-clock time that only moves when a test says so (shared by a test's clients)."""

    def __init__(self, now: float = 1_700_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Backend:
    """One store under test: ``open()`` gives another client on the same store."""

    name: str
    open: Callable[[], KvStore]
    url: str  # for child processes (store.open_kv)
    advance: Callable[[float], None]  # move lease time forward
    clients: list[KvStore] = field(default_factory=list)

    def client(self) -> KvStore:
        kv = self.open()
        self.clients.append(kv)
        return kv


def _sqlite_backend(tmp_path: Path) -> Backend:
    path = str(tmp_path / "cluster.db")
    clock = FakeClock()

    def advance(seconds: float) -> None:
        clock.now += seconds

    return Backend("sqlite", lambda: SqliteKvStore(path, clock=clock), "sqlite:///" + path, advance)


def _etcd_backend(server) -> Backend:
    def advance(seconds: float) -> None:
        raise NotImplementedError("etcd leases run on real time")

    b = Backend("etcd", lambda: open_kv(server.url()), server.url(), advance)
    b.client().delete_prefix("")  # a clean keyspace; the revision goes on
    return b


@pytest.fixture(params=["sqlite", "etcd"])
def backend(request, tmp_path) -> Backend:
    if request.param == "sqlite":
        b = _sqlite_backend(tmp_path)
    else:
        b = _etcd_backend(request.getfixturevalue("etcd_server"))
    yield b
    for kv in b.clients:
        kv.close()


@pytest.fixture
def clock_backend(tmp_path) -> Backend:
    """A backend whose lease time the test moves (SQLite only)."""
    b = _sqlite_backend(tmp_path)
    yield b
    for kv in b.clients:
        kv.close()


@pytest.fixture
def kv(backend) -> KvStore:
    return backend.client()


# -- helpers shared with test_cluster_state ----------------------------------------------


def run_together(script: str, argvs: list[list[str]], timeout: float = 20.0) -> list[str]:
    """Run ``script`` in one Python process per argv, all started before any proceeds: each
    prints "ready" once set up and then waits for a line on stdin, which they all get at
    once.  Returns each process's remaining stdout."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env=env,
        )
        for argv in argvs
    ]
    try:
        for p in procs:
            line = p.stdout.readline()
            if line != "ready\n":
                raise RuntimeError(f"child failed to start: {line}{p.stderr.read()}")
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        outs = []
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            if p.returncode != 0:
                raise RuntimeError(f"child failed ({p.returncode}): {err}")
            outs.append(out)
        return outs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


KV_CHILD = """
import sys
from store import open_kv
kv = open_kv(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
op, key, value = sys.argv[2:5]
if op == "create":
    print(kv.create(key, value))
elif op == "put":
    print(kv.put(key, value))
kv.close()
"""


class Watcher:
    """A watch running in its own thread, collecting what it delivers."""

    def __init__(self, kv: KvStore, prefix: str, revision: int):
        self.stop = threading.Event()
        self.events: list[Event] = []
        self.error: BaseException | None = None
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, args=(kv, prefix, revision))
        self._thread.start()

    def _run(self, kv: KvStore, prefix: str, revision: int) -> None:
        try:
            for batch in kv.watch(prefix, revision, self.stop):
                with self._cond:
                    self.events.extend(batch)
                    self._cond.notify_all()
        except BaseException as exc:
            self.error = exc
            with self._cond:
                self._cond.notify_all()

    def wait_for(self, key: str, wait: float = WAIT) -> list[Event]:
        """Every event delivered up to and including the first one for ``key``, which must
        arrive within ``wait`` seconds."""

        def arrived() -> bool:
            return self.error is not None or any(e.key == key for e in self.events)

        with self._cond:
            if not self._cond.wait_for(arrived, wait):
                raise AssertionError(f"no event for {key} within {wait}s: {self.events}")
        if self.error is not None:
            raise self.error
        return self.events[: next(i for i, e in enumerate(self.events) if e.key == key) + 1]

    def close(self) -> None:
        self.stop.set()
        self._thread.join(WAIT)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()


def summary(events: list[Event]) -> list[tuple[str, str, str, int]]:
    return [(e.type, e.key, e.kv.value, e.revision) for e in events]


# -- revisions and writes ----------------------------------------------------------------


def test_every_change_takes_the_next_revision_and_no_change_takes_none(kv):
    start = kv.revision()
    assert kv.put("a", "1") == start + 1
    assert kv.put("a", "2") == start + 2
    assert kv.put("b", "1") == start + 3
    a = kv.get("a")
    assert (a.value, a.create_revision, a.mod_revision, a.lease) == (
        "2",
        start + 1,
        start + 2,
        None,
    )
    assert kv.delete("a")
    assert kv.revision() == start + 4
    # Nothing changes: no revision.
    assert not kv.delete("a")
    assert not kv.create("b", "x")
    assert not kv.compare_and_put("b", "x", mod_revision=start + 1)
    assert kv.delete_prefix("nothing/") == 0
    assert kv.revision() == start + 4
    # A key created again starts a new life.
    kv.put("a", "3")
    assert kv.get("a").create_revision == start + 5


def test_create_is_compare_and_create(kv):
    assert kv.create("k", "first")
    assert not kv.create("k", "second")
    assert kv.get("k").value == "first"
    kv.delete("k")
    assert kv.create("k", "third")


def test_compare_and_put_compares_the_mod_revision(kv):
    assert kv.compare_and_put("k", "v1", mod_revision=0)  # 0: must not exist
    assert not kv.compare_and_put("k", "v1b", mod_revision=0)
    rev = kv.get("k").mod_revision
    kv.put("k", "v2")  # someone else writes in between
    assert not kv.compare_and_put("k", "v3", mod_revision=rev)
    assert kv.compare_and_put("k", "v3", mod_revision=kv.get("k").mod_revision)
    assert kv.get("k").value == "v3"


def test_a_transaction_writes_several_keys_at_one_revision_or_nothing(kv):
    kv.put("x/gone", "old")
    result = kv.txn(
        [Compare("x/a", 0), Compare("x/b", 0)],
        [Put("x/a", "1"), Put("x/b", "2"), Delete("x/gone")],
    )
    assert result.succeeded and result.deleted == 1
    assert kv.get("x/a").mod_revision == kv.get("x/b").mod_revision == result.revision
    events = kv.events_since("x/", result.revision - 1)
    assert {e.revision for e in events} == {result.revision}
    assert [(e.type, e.key) for e in events] == [
        ("put", "x/a"),
        ("put", "x/b"),
        ("delete", "x/gone"),
    ]
    failed = kv.txn([Compare("x/a", 0)], [Put("x/c", "3")])
    assert not failed.succeeded and failed.revision == result.revision
    assert kv.get("x/c") is None
    with pytest.raises(ValueError, match="appears twice"):
        kv.txn([], [Put("x/d", "1"), Delete("x/d")])


def test_delete_events_carry_the_last_value_and_a_prefix_delete_is_one_revision(kv):
    kv.put("p/a", "A")
    kv.put("p/b", "B")
    kv.put("pq", "not under p/")
    before = kv.revision()
    assert kv.delete_prefix("p/") == 2
    events = kv.events_since("", before)
    assert summary(events) == [
        ("delete", "p/a", "A", before + 1),
        ("delete", "p/b", "B", before + 1),
    ]
    assert kv.get("pq").value == "not under p/"


def test_range_is_a_sorted_snapshot_with_its_revision(kv):
    for key in ("r/b", "r/a", "r/c", "rx"):
        kv.put(key, key.upper())
    kvs, rev = kv.range("r/")
    assert [k.key for k in kvs] == ["r/a", "r/b", "r/c"]
    assert rev == kv.revision()
    kv.put("r/d", "D")
    assert summary(kv.events_since("r/", rev)) == [("put", "r/d", "D", rev + 1)]


def test_events_since_filters_by_prefix_and_revision_and_knows_compaction(kv):
    r1 = kv.put("e/1", "a")
    kv.put("other", "x")
    r3 = kv.put("e/2", "b")
    kv.delete("e/1")
    assert summary(kv.events_since("e/", r1 - 1)) == [
        ("put", "e/1", "a", r1),
        ("put", "e/2", "b", r3),
        ("delete", "e/1", "a", r3 + 1),
    ]
    assert [e.key for e in kv.events_since("e/", r3)] == ["e/1"]
    kv.compact(r3)
    assert [e.revision for e in kv.events_since("e/", r3)] == [r3 + 1]
    with pytest.raises(CompactedError, match="compacted"):
        kv.events_since("e/", r1)


@pytest.mark.parametrize("prefix", ["", "a", "a/", "\U0010ffff", "a\U0010ffff"])
def test_prefix_end_bounds_exactly_the_keys_with_the_prefix(prefix):
    end = prefix_end(prefix)
    for key in (prefix, prefix + "x", prefix + "\U0010ffff"):
        assert key >= prefix and (end is None or key < end)
    if end is not None:
        assert not end.startswith(prefix)


# -- watching ------------------------------------------------------------------------------


def test_a_watch_from_an_old_revision_replays_history_then_live_events_once_in_order(
    backend, kv, watchers
):
    start = kv.revision()
    kv.put("w/a", "1")
    kv.put("elsewhere", "x")
    kv.put("w/b", "2")
    kv.delete("w/a")
    watcher = watchers(backend.client(), "w/", start)
    assert [e.key for e in watcher.wait_for("w/b")] == ["w/a", "w/b"]
    kv.put("w/c", "3")
    kv.txn([], [Put("w/d", "4"), Put("w/e", "5")])
    kv.put("w/end", "")
    events = watcher.wait_for("w/end")
    assert summary(events) == summary(kv.events_since("w/", start))
    assert [e.type for e in events] == ["put", "put", "delete", "put", "put", "put", "put"]
    assert [e.revision for e in events] == sorted(e.revision for e in events)


def test_a_watch_sees_writes_from_another_process(backend, kv, watchers):
    watcher = watchers(kv, "proc/", kv.revision())
    (out,) = run_together(KV_CHILD, [[backend.url, "put", "proc/k", "from-child"]])
    events = watcher.wait_for("proc/k")
    assert summary(events) == [("put", "proc/k", "from-child", int(out))]


def test_a_sqlite_watch_wakes_on_another_process_write_without_polling(tmp_path, watchers):
    """inotify on the store's directory wakes the watcher: with a poll interval of an
    hour, only that can deliver the other process's write before the wait gives up."""
    path = str(tmp_path / "cluster.db")
    kv = SqliteKvStore(path, poll_interval=3600)
    try:
        watcher = watchers(kv, "wake/", kv.revision())
        (out,) = run_together(KV_CHILD, [["sqlite:///" + path, "put", "wake/k", "v"]])
        events = watcher.wait_for("wake/k")
        assert summary(events) == [("put", "wake/k", "v", int(out))]
    finally:
        kv.close()


def test_a_watch_from_a_compacted_revision_raises(kv):
    kv.put("c/1", "a")
    kv.put("c/2", "b")
    kv.compact(kv.revision())
    with pytest.raises(CompactedError):
        next(kv.watch("c/", 0, threading.Event()))


# -- leases --------------------------------------------------------------------------------


def test_an_expired_lease_deletes_its_keys_with_delete_events(clock_backend):
    backend = clock_backend
    kv = backend.client()
    lease = kv.grant_lease(10)
    kv.put("l/a", "A", lease=lease)
    kv.put("l/b", "B", lease=lease)
    kv.put("l/keep", "K")
    assert kv.get("l/a").lease == lease
    before = kv.revision()
    backend.advance(11)
    assert not kv.keepalive(lease)  # a write: sweeps first
    assert kv.get("l/a") is None and kv.get("l/b") is None
    assert kv.get("l/keep").value == "K"
    assert summary(kv.events_since("l/", before)) == [
        ("delete", "l/a", "A", before + 1),
        ("delete", "l/b", "B", before + 1),
    ]
    with pytest.raises(LeaseNotFoundError, match="grant a new lease"):
        kv.put("l/c", "C", lease=lease)


def test_keepalive_extends_a_lease_by_its_ttl(clock_backend):
    backend = clock_backend
    kv = backend.client()
    lease = kv.grant_lease(10)
    kv.put("ka", "v", lease=lease)
    backend.advance(8)
    assert kv.keepalive(lease)
    backend.advance(8)  # 16s after the grant, 8s after the keepalive
    kv.put("other", "x")
    assert kv.get("ka") is not None
    backend.advance(3)
    kv.put("other", "y")
    assert kv.get("ka") is None


def test_lease_time_left_is_whole_seconds_until_expiry_and_none_once_gone(kv):
    lease = kv.grant_lease(60)
    assert 0 < kv.lease_time_left(lease) <= 60  # etcd's clock runs meanwhile: 59 or 60
    assert kv.revoke(lease)
    assert kv.lease_time_left(lease) is None
    assert kv.lease_time_left(7) is None  # never granted (etcd's ids are large)


def test_lease_time_left_counts_down_and_keepalive_restores_it(clock_backend):
    backend = clock_backend
    kv = backend.client()
    lease = kv.grant_lease(10)
    assert kv.lease_time_left(lease) == 10
    backend.advance(3.5)
    assert kv.lease_time_left(lease) == 6  # rounded down, as etcd answers
    assert kv.keepalive(lease)
    assert kv.lease_time_left(lease) == 10
    backend.advance(9.5)
    assert kv.lease_time_left(lease) == 0  # under a second, still alive
    backend.advance(0.5)
    assert kv.lease_time_left(lease) is None  # expired, though not swept: nothing wrote yet


def test_revoke_deletes_the_keys_now_and_a_put_without_lease_detaches(kv):
    lease = kv.grant_lease(60)
    kv.put("rv/a", "A", lease=lease)
    kv.put("rv/b", "B", lease=lease)
    kv.put("rv/b", "B2")  # detached from the lease, as in etcd
    assert kv.revoke(lease)
    assert kv.get("rv/a") is None and kv.get("rv/b").value == "B2"
    assert not kv.revoke(lease)
    assert not kv.keepalive(lease)


def test_a_watcher_alone_notices_an_expired_lease(clock_backend, watchers):
    backend = clock_backend
    kv = backend.client()
    lease = kv.grant_lease(5)
    kv.put("hosts/h1", "x", lease=lease)
    watcher = watchers(backend.client(), "hosts/", kv.revision())
    backend.advance(6)  # nobody writes: the watcher's poll sweeps
    assert [(e.type, e.key) for e in watcher.wait_for("hosts/h1")] == [("delete", "hosts/h1")]


# -- processes -----------------------------------------------------------------------------


def test_racing_creates_from_several_processes_have_exactly_one_winner(backend, kv):
    start = kv.revision()
    outs = run_together(KV_CHILD, [[backend.url, "create", "race", f"p{i}"] for i in range(6)])
    assert sorted(o.strip() for o in outs) == ["False"] * 5 + ["True"]
    winner = outs.index("True\n")
    assert kv.get("race").value == f"p{winner}"
    assert len(kv.events_since("race", start)) == 1


# -- the contract against a model ----------------------------------------------------------

ops = st.lists(
    st.tuples(
        st.sampled_from(["put", "create", "cas", "delete", "delete_prefix"]),
        st.sampled_from(["a", "a/b", "a/c", "b", "ab"]),
        st.text(max_size=3),
    ),
    max_size=25,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops)
def test_the_store_behaves_like_a_dict_with_a_revision_counter(kv, script):
    ns = f"m{uuid.uuid4().hex}/"  # one store for all examples: each works in its own prefix
    start = kv.revision()
    model: dict[str, str] = {}
    changes = 0
    for op, key, value in script:
        key = ns + key
        if op == "put":
            kv.put(key, value)
            model[key] = value
            changes += 1
        elif op == "create":
            assert kv.create(key, value) == (key not in model)
            if key not in model:
                model[key] = value
                changes += 1
        elif op == "cas":
            current = kv.get(key)
            assert kv.compare_and_put(key, value, current.mod_revision if current else 0)
            model[key] = value
            changes += 1
        elif op == "delete":
            assert kv.delete(key) == (key in model)
            changes += key in model
            model.pop(key, None)
        else:
            gone = [k for k in model if k.startswith(key)]
            assert kv.delete_prefix(key) == len(gone)
            changes += bool(gone)
            for k in gone:
                del model[k]
        assert kv.revision() == start + changes
    kvs, rev = kv.range(ns)
    assert {k.key: k.value for k in kvs} == model
    assert rev == start + changes
    replayed: dict[str, str] = {}
    for event in kv.events_since(ns, start):
        if event.type == "put":
            replayed[event.key] = event.kv.value
        else:
            del replayed[event.key]
    assert replayed == model


def test_open_kv_refuses_an_unknown_url_and_a_foreign_file(tmp_path):
    with pytest.raises(ValueError, match="sqlite:///ABSOLUTE/PATH or etcd://HOST:PORT"):
        open_kv("redis://localhost:6379")
    foreign = tmp_path / "foreign.db"
    sqlite3.connect(foreign).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(ValueError, match="not an ovs-overlay store"):
        open_kv(f"sqlite:///{foreign}")


def test_lease_ttls_are_whole_seconds(kv):
    for ttl in (0, -1, 1.5, True, "10"):
        with pytest.raises(ValueError, match="whole number of seconds"):
            kv.grant_lease(ttl)


def test_a_watch_returns_promptly_once_stopped(kv, watchers):
    watcher = watchers(kv, "quiet/", kv.revision())
    watcher.close()  # sets stop and joins for at most WAIT seconds
    assert not watcher.alive and watcher.error is None


def test_sqlite_keeps_a_window_of_history_and_a_watcher_behind_it_must_relist(tmp_path):
    kv = SqliteKvStore(str(tmp_path / "cluster.db"), history=50)
    try:
        for i in range(250):
            kv.put(f"h/{i % 7}", str(i))
        current = kv.revision()
        assert [e.revision for e in kv.events_since("h/", current - 50)] == list(
            range(current - 49, current + 1)
        )
        with pytest.raises(CompactedError):
            kv.events_since("h/", 0)
        with pytest.raises(CompactedError):
            next(kv.watch("h/", 10, threading.Event()))
        (kept,) = kv._db.execute("SELECT count(*) FROM events").fetchone()
        assert kept < 50 + sqlite_module.TRIM_EVERY
    finally:
        kv.close()
