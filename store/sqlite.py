"""The embedded store: the KV contract (store/kv.py) on one SQLite file.

Every agent of a lab opens the same file, from its own process, so everything that
etcd does in its server happens here inside SQLite transactions:

- Writes run in ``BEGIN IMMEDIATE`` transactions: the write lock is taken up front, so
  compare-and-create is atomic across processes, and revisions are allocated and
  committed strictly in order (one writer at a time).  A deferred ``BEGIN`` that later
  writes can fail at once with SQLITE_BUSY instead of waiting, if another connection
  committed in between; IMMEDIATE waits for the lock (up to ``busy_timeout``) instead.
- WAL mode lets readers (watch polls, snapshots) go on while someone writes, and gives
  each read transaction a consistent snapshot of the file.
- Each change is also appended to ``events`` under its revision; a watcher reads from
  there, so it can resume from any revision still in the history.
- SQLite cannot tell another process that something changed, so every write, once
  committed, touches a sidecar file, and :meth:`watch` reads the revision (one indexed
  read) when inotify reports that (store/inotify.py), and at the latest every
  ``poll_interval`` (50 ms), which also serves lease expiry.  That is the only waiting
  loop here.
- The history is a window: every ``TRIM_EVERY``-th revision, the write that takes it also
  deletes the events older than the last ``history`` revisions (one range delete on the
  primary key) and records them as compacted, so the file does not grow with every change
  ever made, and a watcher that fell further behind gets CompactedError and re-lists.
- Leases expire by wall clock (``clock``, ``time.time`` by default: deadlines must mean
  the same in every process; injectable so tests control time).  Nothing runs in the
  background: the start of every write, and every watch poll, deletes the keys of expired
  leases first, which produces ordinary delete events.  A store nobody writes to and
  nobody watches keeps an expired lease's keys until someone does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence

from store.inotify import FileChanges, notify_change
from store.kv import (
    CompactedError,
    Compare,
    Delete,
    Event,
    KeyValue,
    KvError,
    KvStore,
    LeaseNotFoundError,
    Op,
    Put,
    TxnResult,
    check_ops,
    check_ttl,
    prefix_end,
)

LOG = logging.getLogger(__name__)

STOP_CHECK = 0.1  # how soon a watch blocked on inotify notices its stop event
POLL_INTERVAL = 0.05
BUSY_TIMEOUT = 30.0
SCHEMA_VERSION = 1
HISTORY = 5000  # revisions of history kept for watchers that fall behind
TRIM_EVERY = 100  # trim the history once per this many revisions

_SCHEMA = (
    "CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
    "INSERT INTO meta VALUES ('revision', 0), ('compacted', 0)",
    """CREATE TABLE kv (
        key TEXT PRIMARY KEY, value TEXT NOT NULL,
        create_rev INTEGER NOT NULL, mod_rev INTEGER NOT NULL, lease INTEGER
    ) WITHOUT ROWID""",
    "CREATE INDEX kv_by_lease ON kv (lease) WHERE lease IS NOT NULL",
    """CREATE TABLE events (
        revision INTEGER NOT NULL, seq INTEGER NOT NULL,
        type TEXT NOT NULL CHECK (type IN ('put', 'delete')),
        key TEXT NOT NULL, value TEXT NOT NULL, create_rev INTEGER NOT NULL, lease INTEGER,
        PRIMARY KEY (revision, seq)
    ) WITHOUT ROWID""",
    # AUTOINCREMENT: a lease id is never reused, so a stale id can never renew a new lease.
    """CREATE TABLE leases (
        id INTEGER PRIMARY KEY AUTOINCREMENT, ttl REAL NOT NULL, expires_at REAL NOT NULL
    )""",
    "CREATE INDEX leases_by_expiry ON leases (expires_at)",
    f"PRAGMA user_version = {SCHEMA_VERSION}",
)

_KV_COLUMNS = "key, value, create_rev, mod_rev, lease"


def _prefix_clause(column: str, prefix: str) -> tuple[str, tuple[str, ...]]:
    """An index-friendly SQL condition for ``column`` starting with ``prefix``."""
    end = prefix_end(prefix)
    if end is None:
        return f"{column} >= ?", (prefix,)
    return f"{column} >= ? AND {column} < ?", (prefix, end)


def _create_file(path: str) -> None:
    """Create the store file, complete and in WAL mode, if it does not exist yet.

    Switching a file to WAL takes an exclusive lock, and SQLite answers "database is locked"
    at once, without waiting out the busy timeout, when two connections try it together
    (each holds a shared lock the other's upgrade would wait for: a deadlock it refuses).
    Agents starting together on a fresh file did exactly that.  So the file is built under
    a private name and hard-linked into place, which succeeds for one process only; the
    others (and every later open) find it already in WAL mode."""
    if path == ":memory:" or os.path.exists(path):
        return
    scratch = f"{path}.{os.getpid()}.{threading.get_ident()}.new"
    db = sqlite3.connect(scratch, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("BEGIN IMMEDIATE")
        for statement in _SCHEMA:
            db.execute(statement)
        db.execute("COMMIT")
    finally:
        db.close()  # the last connection to close folds the WAL into the file
    try:
        os.link(scratch, path)
    except FileExistsError:
        pass  # another process created it first: use theirs
    finally:
        for leftover in (scratch, scratch + "-wal", scratch + "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)


def _forget(db: sqlite3.Connection, revision: int) -> None:
    """Delete the history up to and including ``revision`` (inside a write)."""
    db.execute("DELETE FROM events WHERE revision <= ?", (revision,))
    db.execute("UPDATE meta SET value = max(value, ?) WHERE name='compacted'", (revision,))


class _Revision:
    """The changes of one revision inside a write transaction; the revision number is taken
    on the first change, so a transaction that changes nothing takes none."""

    def __init__(self, db: sqlite3.Connection, history: int):
        self._db = db
        self._history = history
        self.number: int | None = None
        self._seq = 0

    def _event(self, type_: str, key: str, value: str, create_rev: int | None, lease) -> int:
        if self.number is None:
            (current,) = self._db.execute("SELECT value FROM meta WHERE name='revision'").fetchone()
            self.number = current + 1
            self._db.execute("UPDATE meta SET value=? WHERE name='revision'", (self.number,))
            if self.number % TRIM_EVERY == 0 and self.number > self._history:
                _forget(self._db, self.number - self._history)
        self._db.execute(
            "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?)",
            (self.number, self._seq, type_, key, value, create_rev or self.number, lease),
        )
        self._seq += 1
        return self.number

    def put(self, key: str, value: str, lease: int | None) -> None:
        row = self._db.execute("SELECT create_rev FROM kv WHERE key=?", (key,)).fetchone()
        rev = self._event("put", key, value, row[0] if row else None, lease)
        self._db.execute(
            "INSERT OR REPLACE INTO kv VALUES (?, ?, ?, ?, ?)",
            (key, value, row[0] if row else rev, rev, lease),
        )

    def delete(self, where: str, params: tuple) -> int:
        rows = self._db.execute(
            f"SELECT key, value, create_rev, lease FROM kv WHERE {where} ORDER BY key", params
        ).fetchall()
        for key, value, create_rev, lease in rows:
            self._event("delete", key, value, create_rev, lease)
        self._db.execute(f"DELETE FROM kv WHERE {where}", params)
        return len(rows)


class SqliteKvStore(KvStore):
    """The KV contract on the SQLite file at ``path``, shared by any number of processes."""

    def __init__(
        self,
        path: str,
        clock: Callable[[], float] = time.time,
        *,
        busy_timeout: float = BUSY_TIMEOUT,
        poll_interval: float = POLL_INTERVAL,
        history: int = HISTORY,
    ):
        if history < 1:
            raise ValueError(f"history {history} must keep at least one revision")
        self.path = path
        self.history = history
        self.clock = clock
        self.busy_timeout = busy_timeout
        self.poll_interval = poll_interval
        # One connection per store object, shared by its threads under this lock.
        self._lock = threading.RLock()
        try:
            _create_file(path)  # before connecting: connect() would create an empty file
            self._db = sqlite3.connect(
                path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
        except (sqlite3.Error, OSError) as exc:
            raise KvError(f"cannot open the store {path}: {exc}; check the directory") from exc
        try:
            self._setup()
        except BaseException:
            self._db.close()
            raise

    def _setup(self) -> None:
        with self._guard():
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal" and self.path != ":memory:":
                raise KvError(
                    f"the store {self.path} cannot use write-ahead logging (journal mode "
                    f"{mode!r}); put it on a local file system"
                )
            # Durable on power loss too: an address handed to a pod must stay allocated.
            self._db.execute("PRAGMA synchronous=FULL")
        with self._writing():
            (version,) = self._db.execute("PRAGMA user_version").fetchone()
            if version == SCHEMA_VERSION:
                return
            (tables,) = self._db.execute("SELECT count(*) FROM sqlite_master").fetchone()
            if version != 0 or tables:
                raise KvError(
                    f"{self.path} is not an ovs-overlay store of schema {SCHEMA_VERSION} "
                    f"(found schema {version} with {tables} tables); move it away or point "
                    "the store at another file"
                )
            for statement in _SCHEMA:
                self._db.execute(statement)

    # -- transactions -----------------------------------------------------------------

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """SQLite's errors as KvError naming the file (a stuck writer shows as "locked")."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            raise KvError(
                f"the store {self.path} failed: {exc} (a lock is given up after "
                f"{self.busy_timeout:.0f}s; look for a process stuck holding it)"
            ) from exc

    @contextlib.contextmanager
    def _transaction(self, begin: str) -> Iterator[None]:
        with self._lock, self._guard():
            self._db.execute(begin)
            try:
                yield
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def _reading(self):
        """A read transaction: one consistent snapshot for every statement in it."""
        return self._transaction("BEGIN")

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """A write transaction holding the file's write lock from its first statement;
        once it has committed, watchers in every process are woken (store/inotify.py)."""
        with self._transaction("BEGIN IMMEDIATE"):
            yield
        if self.path != ":memory:":
            notify_change(self.path)

    def _current(self) -> int:
        return self._db.execute("SELECT value FROM meta WHERE name='revision'").fetchone()[0]

    def _sweep(self) -> None:
        """Revoke every expired lease, each at its own revision (inside a write)."""
        expired = self._db.execute(
            "SELECT id FROM leases WHERE expires_at <= ? ORDER BY expires_at, id", (self.clock(),)
        ).fetchall()
        for (lease,) in expired:
            self._drop_lease(lease)

    def _drop_lease(self, lease: int) -> None:
        _Revision(self._db, self.history).delete("lease = ?", (lease,))
        self._db.execute("DELETE FROM leases WHERE id=?", (lease,))

    # -- reads ------------------------------------------------------------------------

    def get(self, key: str) -> KeyValue | None:
        with self._lock, self._guard():
            row = self._db.execute(f"SELECT {_KV_COLUMNS} FROM kv WHERE key=?", (key,)).fetchone()
        return KeyValue(*row) if row else None

    def range(self, prefix: str) -> tuple[list[KeyValue], int]:
        where, params = _prefix_clause("key", prefix)
        with self._reading():
            rows = self._db.execute(
                f"SELECT {_KV_COLUMNS} FROM kv WHERE {where} ORDER BY key", params
            ).fetchall()
            revision = self._current()
        return [KeyValue(*row) for row in rows], revision

    def revision(self) -> int:
        with self._lock, self._guard():
            return self._current()

    # -- writes -----------------------------------------------------------------------

    def txn(self, compares: Sequence[Compare], ops: Sequence[Op]) -> TxnResult:
        check_ops(ops)
        with self._writing():
            self._sweep()
            for compare in compares:
                row = self._db.execute(
                    "SELECT mod_rev FROM kv WHERE key=?", (compare.key,)
                ).fetchone()
                if (row[0] if row else 0) != compare.mod_revision:
                    return TxnResult(False, self._current())
            for op in ops:
                if isinstance(op, Put) and op.lease is not None and not self._lease_alive(op.lease):
                    raise LeaseNotFoundError(
                        f"lease {op.lease} for key {op.key!r} has expired or never existed; "
                        "grant a new lease and write the key again"
                    )
            change = _Revision(self._db, self.history)
            deleted = 0
            for op in ops:
                if isinstance(op, Put):
                    change.put(op.key, op.value, op.lease)
                elif isinstance(op, Delete) and op.prefix:
                    deleted += change.delete(*_prefix_clause("key", op.key))
                else:
                    deleted += change.delete("key = ?", (op.key,))
            return TxnResult(True, self._current(), deleted)

    def _lease_alive(self, lease: int) -> bool:
        return self._db.execute("SELECT 1 FROM leases WHERE id=?", (lease,)).fetchone() is not None

    # -- leases -----------------------------------------------------------------------

    def grant_lease(self, ttl_seconds: int) -> int:
        check_ttl(ttl_seconds)
        with self._writing():
            self._sweep()
            cursor = self._db.execute(
                "INSERT INTO leases (ttl, expires_at) VALUES (?, ?)",
                (ttl_seconds, self.clock() + ttl_seconds),
            )
            return cursor.lastrowid

    def keepalive(self, lease: int) -> bool:
        with self._writing():
            self._sweep()
            cursor = self._db.execute(
                "UPDATE leases SET expires_at = ? + ttl WHERE id=?", (self.clock(), lease)
            )
            return cursor.rowcount == 1

    def revoke(self, lease: int) -> bool:
        with self._writing():
            self._sweep()
            if not self._lease_alive(lease):
                return False
            self._drop_lease(lease)
            return True

    def lease_time_left(self, lease: int) -> int | None:
        with self._reading():
            row = self._db.execute("SELECT expires_at FROM leases WHERE id=?", (lease,)).fetchone()
        left = row[0] - self.clock() if row else 0.0
        # Expired but not swept yet (no write since) is expired: its keys go at the next write.
        return int(left) if left > 0 else None

    # -- history ----------------------------------------------------------------------

    def events_since(self, prefix: str, revision: int) -> list[Event]:
        with self._reading():
            return self._events(prefix, revision, self._current())

    def _events(self, prefix: str, after: int, upto: int) -> list[Event]:
        """Events under ``prefix`` in (after, upto]; inside a read transaction."""
        if after < 0:
            raise ValueError(f"revision {after} is negative; revisions start at 0")
        (compacted,) = self._db.execute("SELECT value FROM meta WHERE name='compacted'").fetchone()
        if after < compacted:
            raise CompactedError(
                f"the history of {self.path} before revision {compacted + 1} was compacted "
                f"(asked for the changes after {after}); read the state again with range() "
                "and watch from the revision it returns"
            )
        where, params = _prefix_clause("key", prefix)
        rows = self._db.execute(
            "SELECT type, key, value, create_rev, revision, lease FROM events "
            f"WHERE revision > ? AND revision <= ? AND {where} ORDER BY revision, seq",
            (after, upto, *params),
        ).fetchall()
        return [
            Event(type_, KeyValue(key, value, create_rev, rev, lease), rev)
            for type_, key, value, create_rev, rev, lease in rows
        ]

    def watch(self, prefix: str, revision: int, stop: threading.Event) -> Iterator[list[Event]]:
        changes = None
        if self.path != ":memory:":
            try:
                changes = FileChanges(self.path)
            except OSError as exc:  # e.g. out of inotify instances: polling still works
                LOG.warning("watching %s by polling only: %s", self.path, exc)
        try:
            yield from self._watch(prefix, revision, stop, changes)
        finally:
            if changes is not None:
                changes.close()

    def _watch(self, prefix, revision, stop, changes) -> Iterator[list[Event]]:
        seen = revision
        while not stop.is_set():
            self._sweep_if_due()
            with self._reading():
                current = self._current()
                events = self._events(prefix, seen, current) if current > seen else []
            # Every event up to `current` was in this snapshot: nothing at or below it can
            # appear later, since revisions are committed in order under the write lock.
            seen = max(seen, current)
            if events:
                yield events
            elif changes is not None:
                self._wait_for_change(changes, stop)
            elif stop.wait(self.poll_interval):
                return

    def _wait_for_change(self, changes: FileChanges, stop: threading.Event) -> None:
        """Until a write, ``poll_interval``, or ``stop`` (seen within STOP_CHECK)."""
        deadline = time.monotonic() + self.poll_interval
        while not stop.is_set() and (left := deadline - time.monotonic()) > 0:
            if changes.wait(min(left, STOP_CHECK)):
                return

    def _sweep_if_due(self) -> None:
        """Take the write lock only when some lease has actually expired."""
        with self._lock, self._guard():
            due = self._db.execute(
                "SELECT 1 FROM leases WHERE expires_at <= ? LIMIT 1", (self.clock(),)
            ).fetchone()
        if due:
            with self._writing():
                self._sweep()

    def compact(self, revision: int) -> None:
        with self._writing():
            current = self._current()
            if not 0 <= revision <= current:
                raise ValueError(
                    f"cannot compact {self.path} to revision {revision}; it is at {current}"
                )
            _forget(self._db, revision)

    def close(self) -> None:
        with self._lock:
            self._db.close()
