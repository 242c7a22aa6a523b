"""The key-value contract the cluster state is built on, shaped on etcd v3.

etcd's model, so that an etcd backend drops in under the cluster code unchanged:

- One revision counts every change in the whole store.  Each write that changes
  something takes the next revision; several keys written by one transaction share it.
  A write that changes nothing (a failed comparison, deleting a missing key) takes none.
- Each key remembers the revision that created it and the one that last changed it;
  ``mod_revision`` is what compare-and-swap compares (0: the key must not exist).
- Every change is kept as an :class:`Event` under its revision, so a reader can take a
  snapshot with :meth:`KvStore.range`, then watch from that snapshot's revision and miss
  nothing: the list-then-watch pattern.
- A lease makes keys vanish when its holder stops renewing it (host liveness); its keys'
  disappearance is an ordinary delete event.  TTLs are whole seconds.
- History is bounded: old changes are compacted away (SQLite keeps a window of revisions,
  etcd is run with auto-compaction), and a watcher that fell behind gets CompactedError,
  re-lists and watches again.
- Every failure of the backend is a KvError; StoreUnavailableError means no endpoint
  answered (try again later).

Every write primitive is a :meth:`KvStore.txn` (etcd's Txn: compares, then operations,
all at one revision); ``put``, ``create``, ``compare_and_put``, ``delete`` and
``delete_prefix`` are its common shapes, defined once here.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

EventType = Literal["put", "delete"]


class KvError(RuntimeError):
    """The store could not do what was asked; the message says why and what to do."""


class CompactedError(KvError):
    """The history asked for was compacted away: re-read the state with ``range`` and watch
    from the revision it returns."""


class LeaseNotFoundError(KvError):
    """A write named a lease that expired or never existed: grant a new one."""


class StoreUnavailableError(KvError):
    """No endpoint of the store answered in time (or a write's outcome is unknown because
    its endpoint vanished mid-request): the store is down or has lost its quorum.  Callers
    report "try again later"; nothing was changed unless the message says the outcome is
    unknown."""


@dataclass(frozen=True, slots=True)
class KeyValue:
    """A key as stored at one revision.  (Slots: an agent lists 10,000 and more at once.)"""

    key: str
    value: str
    create_revision: int
    mod_revision: int
    lease: int | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """One change.  For a delete, ``kv`` holds the key's last value and ``kv.mod_revision``
    is the revision of the delete (as etcd reports it with ``prev_kv``)."""

    type: EventType
    kv: KeyValue
    revision: int

    @property
    def key(self) -> str:
        return self.kv.key


@dataclass(frozen=True)
class Compare:
    """A transaction's guard: ``key``'s mod_revision equals ``mod_revision`` (0: absent)."""

    key: str
    mod_revision: int


@dataclass(frozen=True)
class Put:
    """Write ``key``; without a lease the key is detached from any lease it had (as in etcd)."""

    key: str
    value: str
    lease: int | None = None


@dataclass(frozen=True)
class Delete:
    """Delete ``key``, or every key starting with it when ``prefix`` is set."""

    key: str
    prefix: bool = False


Op = Put | Delete


@dataclass(frozen=True)
class TxnResult:
    """Whether the compares held, the store revision after the transaction (the new one if it
    changed anything), and how many keys its deletes removed."""

    succeeded: bool
    revision: int
    deleted: int = 0


def prefix_end(prefix: str) -> str | None:
    """The first key after every key starting with ``prefix`` (etcd's range_end), or None
    when no such key exists (an empty prefix, or one ending in the highest code point).

    Strings compare by code point in Python and UTF-8 bytes compare the same way in SQLite
    and etcd, so ``prefix <= key < prefix_end(prefix)`` is a prefix match on an index."""
    while prefix and ord(prefix[-1]) == 0x10FFFF:
        prefix = prefix[:-1]
    if not prefix:
        return None
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def check_ops(ops: Sequence[Op]) -> None:
    """Refuse a transaction that names one key twice, or puts a key that one of its prefix
    deletes covers: etcd refuses both ("duplicate key given in txn request"), so no backend
    may accept them.  Deletes may overlap each other."""
    seen: set[str] = set()
    deleted_prefixes = [op.key for op in ops if isinstance(op, Delete) and op.prefix]
    for op in ops:
        if isinstance(op, Delete) and op.prefix:
            continue
        if op.key in seen:
            raise ValueError(f"key {op.key!r} appears twice in one transaction; write it once")
        if isinstance(op, Put) and any(op.key.startswith(p) for p in deleted_prefixes):
            raise ValueError(
                f"key {op.key!r} is both put and deleted (by a prefix delete) in one "
                "transaction; write it in a transaction of its own"
            )
        seen.add(op.key)


def check_ttl(ttl_seconds: int) -> None:
    """Leases take whole seconds (>= 1), as etcd's do, so a TTL means the same on every
    backend."""
    if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int) or ttl_seconds < 1:
        raise ValueError(f"lease TTL {ttl_seconds!r} must be a whole number of seconds, >= 1")


class KvStore(abc.ABC):
    """A revisioned key-value store with leases, transactions and watches (etcd v3's model).

    Implementations are safe to share between threads of one process, and any number of
    processes may use the same store at once."""

    # -- reads ------------------------------------------------------------------------

    @abc.abstractmethod
    def get(self, key: str) -> KeyValue | None:
        """``key`` as it is now, or None."""

    @abc.abstractmethod
    def range(self, prefix: str) -> tuple[list[KeyValue], int]:
        """Every key starting with ``prefix`` (sorted), and the store revision of this
        consistent snapshot: watch from that revision to see every later change."""

    @abc.abstractmethod
    def revision(self) -> int:
        """The store's current revision (a new SQLite store is at 0, a new etcd at 1)."""

    # -- writes -----------------------------------------------------------------------

    @abc.abstractmethod
    def txn(self, compares: Sequence[Compare], ops: Sequence[Op]) -> TxnResult:
        """If every compare holds, apply ``ops`` atomically at one new revision.

        Raises LeaseNotFoundError (and applies nothing) when a Put names a dead lease."""

    def put(self, key: str, value: str, lease: int | None = None) -> int:
        """Write ``key``; returns the new store revision."""
        return self.txn((), (Put(key, value, lease),)).revision

    def create(self, key: str, value: str, lease: int | None = None) -> bool:
        """Write ``key`` only if it does not exist (compare-and-create); False if it does.
        Atomic across processes: of several racing creators exactly one gets True."""
        return self.txn((Compare(key, 0),), (Put(key, value, lease),)).succeeded

    def compare_and_put(
        self, key: str, value: str, mod_revision: int, lease: int | None = None
    ) -> bool:
        """Write ``key`` only if its mod_revision is still ``mod_revision`` (0: only if it
        does not exist); False if someone changed it since it was read."""
        return self.txn((Compare(key, mod_revision),), (Put(key, value, lease),)).succeeded

    def delete(self, key: str) -> bool:
        """Delete ``key``; False if it did not exist (which is not an error)."""
        return self.txn((), (Delete(key),)).deleted == 1

    def delete_prefix(self, prefix: str) -> int:
        """Delete every key starting with ``prefix`` at one revision; returns how many."""
        return self.txn((), (Delete(prefix, prefix=True),)).deleted

    # -- leases -----------------------------------------------------------------------

    @abc.abstractmethod
    def grant_lease(self, ttl_seconds: int) -> int:
        """A new lease that expires ``ttl_seconds`` (an integer >= 1, see ``check_ttl``) from
        now unless kept alive.  etcd raises a TTL below its minimum (2 s with its default
        election timeout) to that minimum."""

    @abc.abstractmethod
    def keepalive(self, lease: int) -> bool:
        """Restart ``lease``'s TTL; False if it has expired (its keys are gone) or never
        existed: grant a new lease and write the keys again."""

    @abc.abstractmethod
    def revoke(self, lease: int) -> bool:
        """End ``lease`` now, deleting its keys; False if it was already gone."""

    @abc.abstractmethod
    def lease_time_left(self, lease: int) -> int | None:
        """Whole seconds until ``lease`` expires unless renewed (rounded down, as etcd's
        LeaseTimeToLive answers: 0 is under a second), or None once it has expired, was
        revoked or never existed.  For the operator (``host list``); one request."""

    # -- history ----------------------------------------------------------------------

    @abc.abstractmethod
    def events_since(self, prefix: str, revision: int) -> list[Event]:
        """Every change to a key starting with ``prefix`` at a revision after ``revision``,
        in revision order.  Raises CompactedError when that history has been compacted."""

    @abc.abstractmethod
    def watch(self, prefix: str, revision: int, stop: threading.Event) -> Iterator[list[Event]]:
        """Batches of the changes under ``prefix`` after ``revision`` (exclusive: a watch
        from the revision ``range`` returned starts with the next change): first the
        history, then live changes (from any process), each event exactly once and in
        revision order, until ``stop`` is set, when it returns promptly.  It never ends
        otherwise: it raises CompactedError like ``events_since`` (re-list with ``range``
        and watch again from its revision), or StoreUnavailableError.

        An iterator rather than a callback: the caller owns the thread and its error
        handling, and an exception (say the history was compacted) reaches the caller."""

    @abc.abstractmethod
    def compact(self, revision: int) -> None:
        """Forget the history up to and including ``revision`` (keys are unaffected).
        etcd keeps the changes of ``revision`` itself; a store may also forget history on
        its own (SQLite keeps a window, etcd auto-compacts), so watchers must handle
        CompactedError."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection; the store must not be used afterwards."""
