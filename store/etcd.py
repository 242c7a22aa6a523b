"""The distributed store: the KV contract (store/kv.py) on etcd v3, through its JSON gateway.

etcd serves its v3 API as JSON over HTTP (the gRPC gateway, at ``/v3/`` since etcd 3.4),
and etcd3gw (OpenStack's client for it) gives a ``requests`` session per endpoint, with
TLS, and a ``post``.  This module uses those and makes the v3 calls itself: etcd3gw
encodes ``str`` keys as Latin-1 (we need UTF-8), maps errors by HTTP status only, and its
watcher runs callbacks in a thread pool that swallows errors and cannot report
compaction.  What etcd does and this module relies on, checked against etcd 3.4:

- Revisions: an etcd never written is at revision 1 (SQLite: 0).  A watch's
  ``start_revision`` is inclusive, the contract's revision exclusive: we pass revision + 1.
- The gateway speaks proto3 JSON: fields at their default are omitted (no ``succeeded``
  is False, no ``value`` is "", no ``lease`` is none, a put event has no ``type``) and
  int64 values come as strings.
- A compare of ``mod_revision == 0`` holds for a missing key (etcd compares a missing key
  as all zeros), which is the contract's compare-and-create.
- Leases: etcd raises a TTL below its minimum to that minimum, 1.5 election timeouts
  rounded up to whole seconds: 2 s with the default ``--election-timeout`` of 1000 ms
  (a grant of 1 s answers TTL 2).
- Compacting at N keeps N's own changes: a watch from N still works, one from N - 1 is
  cancelled with ``compact_revision`` set, which we raise as CompactedError.
- A transaction may not name a key twice, nor put a key that one of its deletes covers
  (``check_ops`` refuses both on every backend).
- requests' sessions read CA bundles and proxies from the environment, overriding the
  session's CA; ours ignore the environment (``trust_env``).
- A member without a leader keeps a watch open, silent (no change can reach it), and
  holds a read or a write until its own request timeout (7 s with the default election
  timeout), far past ours, unless the request asks for a leader:
  ``Grpc-Metadata-hasleader: true`` (the gateway passes ``Grpc-Metadata-*`` headers on as
  gRPC metadata; etcd's Go client sends it on watches).  Every request of ours asks:
  a member without a leader then refuses a call at once ("etcdserver: no leader", code
  14: certainly not applied, so the call moves to the next member) and ends a watch a
  few seconds after losing the quorum.  Measured in the lab with two of three members
  killed: a read to the survivor took 2 s (our timeout) without the header, 30 ms with
  it.  (A member still believes in its leader for up to an election timeout after losing
  it; calls in that window wait for the timeout.)

Several endpoints: each call goes to the endpoint that last answered; one that cannot be
reached, times out or has no leader sends the call to the next, within a budget of two
timeouts, and when none answers the call raises StoreUnavailableError naming them all.
A transaction is sent again only when it certainly was not applied (the connection was
refused, or etcd said it has no leader); otherwise its outcome is unknown and that is
what the error says.  A watch whose stream breaks resumes on the next endpoint from the
last revision it delivered, so failover loses and repeats nothing.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import requests
import urllib3
from etcd3gw.client import Etcd3Client
from etcd3gw.exceptions import ConnectionFailedError, ConnectionTimeoutError, Etcd3Exception

from store.etcd_url import EtcdOptions, endpoint_name, parse_url
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
    StoreUnavailableError,
    TxnResult,
    check_ops,
    check_ttl,
)

LOG = logging.getLogger(__name__)

FAILOVER_BUDGET = 2  # a call tries further endpoints until this many timeouts have passed
PAGE_SIZE = 1000  # keys per range request
API_PATH = "/v3/"  # etcd >= 3.4 (3.3 served /v3beta/)
STOP_CHECK = 0.1  # how soon a watch notices its stop event
# A watch only receives, so it cannot tell a quiet store from one whose data no longer
# reaches it (a one-way partition, a peer that vanished without a reset, a stale ARP entry
# on the far side).  TCP keepalive probes from our side bound that: after IDLE s of silence
# a probe every INTERVAL s, and COUNT unanswered ones end the stream, which is then opened
# again from the last revision delivered (nothing is lost).  The probes also make our side
# speak, which refreshes the far side's neighbour entry for us.
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 10, 5, 3
REQUIRE_LEADER = {"Grpc-Metadata-hasleader": "true"}
ALL_KEYS = b"\0"  # as both key and range_end: every key

_GRPC_NOT_FOUND = 5
_GRPC_OUT_OF_RANGE = 11
_GRPC_UNAVAILABLE = 14


# -- encoding --------------------------------------------------------------------------------


def _b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def _text(data: str | None) -> str:
    """A base64 field as text.  Bytes that are not UTF-8 (written by another tool) become
    U+FFFD, so the record reaches the cluster code, which refuses it, instead of failing
    the read."""
    return base64.b64decode(data or "").decode("utf-8", errors="replace")


def _range_end(prefix: str) -> bytes:
    """etcd's range_end for ``prefix`` on bytes: the prefix with its last byte below 0xff
    incremented; every key (``\\0``) for an empty prefix or one of 0xff bytes only."""
    raw = bytearray(prefix.encode())
    while raw and raw[-1] == 0xFF:
        raw.pop()
    if not raw:
        return ALL_KEYS
    raw[-1] += 1
    return bytes(raw)


def _prefix_bounds(prefix: str) -> tuple[bytes, bytes]:
    """etcd's key and range_end for every key starting with ``prefix``."""
    return prefix.encode() or ALL_KEYS, _range_end(prefix)


def _prefix_range(prefix: str) -> dict[str, str]:
    key, range_end = _prefix_bounds(prefix)
    return {"key": _b64(key), "range_end": _b64(range_end)}


def _int(message: dict[str, Any], field: str) -> int:
    return int(message.get(field) or 0)


def _key_value(raw: dict[str, Any]) -> KeyValue:
    return KeyValue(
        key=_text(raw["key"]),
        value=_text(raw.get("value")),
        create_revision=_int(raw, "create_revision"),
        mod_revision=_int(raw, "mod_revision"),
        lease=_int(raw, "lease") or None,
    )


def _event(raw: dict[str, Any]) -> Event:
    kv = _key_value(raw["kv"])
    if raw.get("type") != "DELETE":
        return Event("put", kv, kv.mod_revision)
    # A delete's kv has only the key and the delete's revision; the value it had comes
    # with prev_kv (absent if that revision was compacted meanwhile).
    last = _key_value(raw.get("prev_kv") or raw["kv"])
    gone = KeyValue(kv.key, last.value, last.create_revision, kv.mod_revision, last.lease)
    return Event("delete", gone, kv.mod_revision)


def _grpc_error(exc: Etcd3Exception) -> tuple[int | None, str]:
    """The gRPC code and message of an error the gateway answered, if it is one."""
    try:
        body = json.loads(exc.detail_text or "")
        return int(body.get("code")), str(body.get("message") or body.get("error"))
    except (ValueError, TypeError, AttributeError):
        return None, str(exc.detail_text or exc)


def _never_applied(exc: Etcd3Exception) -> bool:
    """Whether a failed request certainly changed nothing: the connection was never made,
    or etcd refused it for want of a leader."""
    cause = exc.__context__
    if isinstance(cause, requests.exceptions.ConnectTimeout):
        return True
    if isinstance(cause, requests.exceptions.ConnectionError):
        reason = getattr(cause.args[0], "reason", None) if cause.args else None
        return isinstance(
            reason, (urllib3.exceptions.NewConnectionError, urllib3.exceptions.SSLError)
        )
    code, message = _grpc_error(exc)
    return code == _GRPC_UNAVAILABLE and "no leader" in message


class EtcdKvStore(KvStore):
    """The KV contract on the etcd cluster at ``options.endpoints``.  Opening talks to no
    member (it only checks that the TLS files exist): an unreachable etcd shows in the
    first call (StoreUnavailableError)."""

    def __init__(self, options: EtcdOptions, *, page_size: int = PAGE_SIZE):
        if page_size < 1:
            raise ValueError(f"page size {page_size} must be at least 1")
        for name in ("cacert", "cert", "key"):
            path = getattr(options, name)
            if path is not None and not os.path.isfile(path):
                raise ValueError(
                    f"the etcd {name} file {path} does not exist; fix {name}= in the store URL"
                )
        self.options = options
        self.page_size = page_size
        self._clients = [
            Etcd3Client(
                host=host,
                port=port,
                protocol=options.protocol,
                ca_cert=options.cacert,
                cert_cert=options.cert,
                cert_key=options.key,
                timeout=options.timeout,
                api_path=API_PATH,
            )
            for host, port in options.endpoints
        ]
        for client in self._clients:
            # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE in the environment replace a
            # session's own CA (psf/requests#3829: the TLS tests failed verification on a
            # machine that sets them), and would send etcd traffic through HTTP_PROXY: the
            # store URL alone says how to reach etcd.
            client.session.trust_env = False
            client.session.headers.update(REQUIRE_LEADER)  # refused at once without a leader
        self._preferred = 0  # the endpoint that answered last

    @classmethod
    def from_url(cls, url: str) -> EtcdKvStore:
        return cls(parse_url(url))

    # -- requests ------------------------------------------------------------------------

    def _endpoint(self, index: int) -> str:
        return endpoint_name(*self.options.endpoints[index])

    def _order(self) -> list[int]:
        """Every endpoint, starting with the one that answered last."""
        first = self._preferred
        return [(first + i) % len(self._clients) for i in range(len(self._clients))]

    def _unavailable(self, what: str, failures: list[str]) -> StoreUnavailableError:
        return StoreUnavailableError(
            f"no etcd endpoint of {self.options.names} answered {what} "
            f"({'; '.join(failures)}); check that etcd runs there and has a quorum"
        )

    def _call(self, path: str, payload: dict[str, Any], what: str, *, write: bool = False):
        """POST ``payload`` to the v3 ``path`` of the first endpoint that answers."""
        deadline = time.monotonic() + FAILOVER_BUDGET * self.options.timeout
        failures: list[str] = []
        tls_failures = 0
        for attempt, index in enumerate(self._order()):
            if attempt and time.monotonic() >= deadline:
                break
            client = self._clients[index]
            try:
                result = client.post(client.get_url(path), json=payload)
            except (ConnectionFailedError, ConnectionTimeoutError) as exc:
                failures.append(f"{self._endpoint(index)}: {_grpc_error(exc)[1][:300]}")
                tls_failures += isinstance(exc.__context__, requests.exceptions.SSLError)
                if write and not _never_applied(exc):
                    raise StoreUnavailableError(
                        f"etcd at {self._endpoint(index)} failed during {what} "
                        f"({failures[-1]}), so its outcome is unknown; read the keys back "
                        "before writing again, and check that etcd has a quorum"
                    ) from exc
                continue
            except Etcd3Exception as exc:
                raise self._refused(index, what, exc) from exc
            except requests.RequestException as exc:  # e.g. a TLS failure
                failures.append(f"{self._endpoint(index)}: {exc}")
                continue
            self._preferred = index
            return result
        if failures and tls_failures == len(failures):
            raise KvError(
                f"TLS with etcd {self.options.names} failed for {what} ({'; '.join(failures)}); "
                "check cacert, cert and key in the store URL against etcd's certificates"
            )
        raise self._unavailable(what, failures)

    def _refused(self, index: int, what: str, exc: Etcd3Exception) -> KvError:
        code, message = _grpc_error(exc)
        if code == _GRPC_OUT_OF_RANGE and "compacted" in message:
            return CompactedError(
                f"etcd {self.options.names} compacted the history needed for {what} "
                f"({message}); read the state again with range() and watch from its revision"
            )
        if code == _GRPC_NOT_FOUND and "lease not found" in message:
            return LeaseNotFoundError(
                f"{what}: the lease has expired or never existed ({message}); grant a new "
                "lease and write the keys again"
            )
        return KvError(f"etcd at {self._endpoint(index)} refused {what}: {message}")

    # -- reads ---------------------------------------------------------------------------

    def get(self, key: str) -> KeyValue | None:
        result = self._call("/kv/range", {"key": _b64(key)}, f"reading {key!r}")
        kvs = result.get("kvs") or []
        return _key_value(kvs[0]) if kvs else None

    def range(self, prefix: str) -> tuple[list[KeyValue], int]:
        kvs: list[KeyValue] = []
        snapshot = 0
        for page, revision in self._pages(prefix):
            kvs.extend(page)
            snapshot = revision
        return kvs, snapshot

    def _pages(self, prefix: str) -> Iterator[tuple[list[KeyValue], int]]:
        """The keys under ``prefix`` a page at a time, every page read at the revision of
        the first, so together they are one snapshot.  (Compaction past that revision
        between two pages raises CompactedError; the caller lists again.)"""
        request: dict[str, Any] = {**_prefix_range(prefix), "limit": self.page_size}
        while True:
            result = self._call("/kv/range", request, f"listing {prefix!r}")
            page = [_key_value(raw) for raw in result.get("kvs") or []]
            revision = request.setdefault("revision", _int(result["header"], "revision"))
            yield page, revision
            if not result.get("more") or not page:
                return
            # The next page starts just after the last key's raw bytes (which need not be
            # UTF-8, so not re-encoded from the decoded key).
            request["key"] = _b64(base64.b64decode(result["kvs"][-1]["key"]) + b"\0")

    def revision(self) -> int:
        result = self._call(
            "/kv/range", {"key": _b64(ALL_KEYS), "count_only": True}, "reading the revision"
        )
        return _int(result["header"], "revision")

    # -- writes --------------------------------------------------------------------------

    def txn(self, compares: Sequence[Compare], ops: Sequence[Op]) -> TxnResult:
        check_ops(ops)
        payload = {
            "compare": [
                {
                    "key": _b64(c.key),
                    "result": "EQUAL",
                    "target": "MOD",
                    "mod_revision": c.mod_revision,
                }
                for c in compares
            ],
            "success": [_request_op(op) for op in ops],
        }
        keys = ", ".join(repr(op.key) for op in ops[:3]) + (" ..." if len(ops) > 3 else "")
        result = self._call("/kv/txn", payload, f"a transaction on {keys}", write=True)
        revision = _int(result["header"], "revision")
        if not result.get("succeeded"):
            return TxnResult(False, revision)
        deleted = sum(
            _int(response.get("response_delete_range") or {}, "deleted")
            for response in result.get("responses") or []
        )
        return TxnResult(True, revision, deleted)

    # -- leases --------------------------------------------------------------------------

    def grant_lease(self, ttl_seconds: int) -> int:
        check_ttl(ttl_seconds)
        # A grant sent twice (failover) leaves an unused lease, which expires on its own.
        result = self._call(
            "/lease/grant", {"TTL": ttl_seconds, "ID": 0}, f"granting a {ttl_seconds}s lease"
        )
        return int(result["ID"])

    def keepalive(self, lease: int) -> bool:
        result = self._call("/lease/keepalive", {"ID": lease}, f"keeping lease {lease} alive")
        # An expired or unknown lease is answered with no TTL (0), not an error.
        return _int(result.get("result") or {}, "TTL") > 0

    def revoke(self, lease: int) -> bool:
        try:
            self._call("/kv/lease/revoke", {"ID": lease}, f"revoking lease {lease}")
        except LeaseNotFoundError:
            return False
        return True

    def lease_time_left(self, lease: int) -> int | None:
        result = self._call(
            "/lease/timetolive", {"ID": lease}, f"reading lease {lease}'s time to live"
        )
        # etcd answers TTL -1 for a lease it does not know (expired, revoked, never granted),
        # not an error; the seconds left are rounded down.
        left = int(result.get("TTL") or 0)
        return left if left >= 0 else None

    # -- history -------------------------------------------------------------------------

    def events_since(self, prefix: str, revision: int) -> list[Event]:
        """etcd serves history through watches only, and a watch never says it has caught
        up; but every revision has at least one change somewhere, so a watch of every key
        reaches the current revision's change and stops there.  Costs the whole history
        since ``revision``; the cluster code watches instead."""
        if revision < 0:
            raise ValueError(f"revision {revision} is negative; revisions start at 0")
        current = self.revision()
        if revision >= current:
            return []
        events: list[Event] = []
        stop = threading.Event()
        batches = self._watch(ALL_KEYS, ALL_KEYS, revision, stop)
        try:
            for batch in batches:
                events.extend(e for e in batch if e.key.startswith(prefix))
                if batch[-1].revision >= current:
                    break
        finally:
            stop.set()
            batches.close()
        return [e for e in events if e.revision <= current]

    def watch(self, prefix: str, revision: int, stop: threading.Event) -> Iterator[list[Event]]:
        if revision < 0:
            raise ValueError(f"revision {revision} is negative; revisions start at 0")
        return self._watch(*_prefix_bounds(prefix), revision, stop)

    def _watch(
        self, key: bytes, range_end: bytes, revision: int, stop: threading.Event
    ) -> Iterator[list[Event]]:
        """Watch streams, one after another: a stream that breaks (its member died or lost
        the leader) is followed by one on the next endpoint from the last revision
        delivered.  Once every endpoint in turn broke without delivering anything, the
        store is unavailable."""
        seen = revision
        failures: list[str] = []
        while not stop.is_set():
            index = self._preferred
            stream = self._open_stream(index, key, range_end, seen + 1, stop, failures)
            if stream is None:
                continue
            try:
                for batch in stream.batches():
                    seen = batch[-1].revision
                    failures.clear()
                    yield batch
            finally:
                stream.close()
            if stop.is_set():
                return
            LOG.warning("watch on etcd %s ended (%s)", self._endpoint(index), stream.ended)
            self._next_endpoint(index, stream.ended, failures, seen + 1)

    def _open_stream(
        self,
        index: int,
        key: bytes,
        range_end: bytes,
        start: int,
        stop: threading.Event,
        failures: list[str],
    ) -> _WatchStream | None:
        """A watch stream from revision ``start`` on endpoint ``index``, or None (and the
        next endpoint preferred) if it cannot be opened."""
        client = self._clients[index]
        create = {
            "key": _b64(key),
            "range_end": _b64(range_end),
            "start_revision": start,
            "prev_kv": True,
        }
        try:
            response = client.session.post(
                client.get_url("/watch"),
                json={"create_request": create},
                stream=True,
                timeout=self.options.timeout,
            )
            if response.status_code != 200:
                response.close()
                raise requests.RequestException(f"HTTP {response.status_code}")
        except requests.RequestException as exc:
            self._next_endpoint(index, str(exc), failures, start)
            return None
        return _WatchStream(response, stop, self.options.timeout, self.options.names)

    def _next_endpoint(self, index: int, why: str, failures: list[str], start: int) -> None:
        """Record that ``index`` failed a watch and prefer the next endpoint; raise once
        every endpoint failed in turn."""
        failures.append(f"{self._endpoint(index)}: {why}")
        self._preferred = (index + 1) % len(self._clients)
        if len(failures) >= len(self._clients):
            raise self._unavailable(f"a watch from revision {start}", failures)

    def compact(self, revision: int) -> None:
        current = self.revision()
        if not 0 <= revision <= current:
            raise ValueError(
                f"cannot compact etcd {self.options.names} to revision {revision}; "
                f"it is at {current}"
            )
        if revision <= 1:
            return  # revision 1 is etcd's empty start: nothing before it to forget
        with contextlib.suppress(CompactedError):  # compacted to there or further already
            self._call("/kv/compaction", {"revision": revision}, f"compacting to {revision}")

    def close(self) -> None:
        for client in self._clients:
            client.session.close()


def _request_op(op: Op) -> dict[str, Any]:
    if isinstance(op, Put):
        put: dict[str, Any] = {"key": _b64(op.key), "value": _b64(op.value)}
        if op.lease is not None:
            put["lease"] = op.lease
        return {"request_put": put}
    if isinstance(op, Delete) and op.prefix:
        return {"request_delete_range": _prefix_range(op.key)}
    return {"request_delete_range": {"key": _b64(op.key)}}


def _keep_alive(sock: socket.socket) -> None:
    """TCP keepalive on a watch's socket (see KEEPALIVE_IDLE)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_COUNT)


class _WatchStream:
    """One watch response stream.  A guard thread shuts its socket down when ``stop`` is
    set (a blocking read cannot otherwise be interrupted), or when etcd has not confirmed
    the watch within the timeout.  The body is read with no timeout: a quiet watch is
    normal."""

    def __init__(
        self, response: requests.Response, stop: threading.Event, timeout: float, names: str
    ):
        self._response = response
        self._stop = stop
        self._names = names
        self._created = threading.Event()
        self._done = threading.Event()
        self.ended = "the stream ended"
        self._sock = getattr(response.raw.connection, "sock", None)
        if self._sock is not None:
            self._sock.settimeout(None)
            _keep_alive(self._sock)
        threading.Thread(
            target=self._guard,
            args=(time.monotonic() + timeout,),
            name="etcd-watch-guard",
            daemon=True,
        ).start()

    def _guard(self, created_by: float) -> None:
        while not self._done.is_set():
            if self._stop.wait(STOP_CHECK):
                break
            if not self._created.is_set() and time.monotonic() > created_by:
                self.ended = "etcd did not confirm the watch in time"
                break
        else:
            return
        self._shutdown()

    def _shutdown(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)  # the blocked read returns

    def batches(self) -> Iterator[list[Event]]:
        """The events of each response, until the stream ends (``ended`` says why)."""
        try:
            for line in self._response.iter_lines(chunk_size=None):
                if not line.strip():
                    continue
                message = json.loads(line)
                if "error" in message:
                    error = message["error"]
                    self.ended = str(error.get("message") if isinstance(error, dict) else error)
                    return
                result = message.get("result") or {}
                if _int(result, "compact_revision"):
                    raise CompactedError(
                        f"etcd {self._names} compacted the history up to revision "
                        f"{_int(result, 'compact_revision') - 1} that this watch needs; read "
                        "the state again with range() and watch from its revision"
                    )
                if result.get("canceled"):
                    self.ended = f"etcd cancelled the watch: {result.get('cancel_reason', '')}"
                    return
                if result.get("created"):
                    self._created.set()
                events = [_event(raw) for raw in result.get("events") or []]
                if events:
                    yield events
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            if not self._stop.is_set():
                self.ended = f"{self.ended}: {exc}"
        except ValueError as exc:  # a line cut short by the shutdown, or not JSON
            if not self._stop.is_set():
                self.ended = f"unreadable watch response: {exc}"

    def close(self) -> None:
        self._done.set()
        self._response.close()
