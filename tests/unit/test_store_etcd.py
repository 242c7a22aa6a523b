"""What only the etcd backend does: its URL, real-time leases, paged snapshots, several
endpoints (failover, none answering, quorum lost), and TLS with client certificates.

Every test runs against real etcd members (tests/etcd_server.py); the shared contract
is in test_store_contract.py.
"""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import threading
import time
import uuid

import pytest
import requests

from store import StoreError, open_kv
from store.etcd import EtcdKvStore
from store.etcd_url import EtcdOptions, parse_url
from store.kv import CompactedError, KvError, StoreUnavailableError
from tests.etcd_server import HOST, free_port
from tests.unit.test_store_contract import summary

LEASE_GONE_WITHIN = 15.0  # seconds: a 1 s lease (2 s in etcd) must be gone well before
QUORUM_LOSS_NOTICED_WITHIN = 30.0  # etcd ends leaderless watches after a few elections


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}/"


# -- the URL -------------------------------------------------------------------------------


def test_an_etcd_url_names_endpoints_tls_files_and_a_timeout():
    assert parse_url("etcd://198.18.1.1:2379,198.18.1.2:2379") == EtcdOptions(
        (("198.18.1.1", 2379), ("198.18.1.2", 2379))
    )
    options = parse_url("etcd://[::1]:2379/?cacert=/ca.pem&cert=/c.pem&key=/k.pem&timeout=0.5")
    assert options == EtcdOptions((("::1", 2379),), "/ca.pem", "/c.pem", "/k.pem", 0.5)
    assert options.protocol == "https" and options.names == "[::1]:2379"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("etcd://", "not an etcd URL"),
        ("etcd://host", "endpoint 'host' is not HOST:PORT"),
        ("etcd://host:0", "endpoint 'host:0' is not HOST:PORT"),
        ("etcd://a:1,,b:2", "endpoint '' is not HOST:PORT"),
        ("etcd://a:1/db", "has a path"),
        ("etcd://a:1?tls=1", "unknown option"),
        ("etcd://a:1?timeout=0", "timeout '0' must be seconds"),
        ("etcd://a:1?timeout=soon", "timeout 'soon' must be seconds"),
        ("etcd://a:1?timeout=1&timeout=2", "exactly one value"),
        ("etcd://a:1?cacert=/ca&cert=/c", "give cert and key together"),
        ("etcd://a:1?cert=/c&key=/k", "needs cacert"),
    ],
)
def test_a_bad_etcd_url_is_refused_naming_the_problem(url, message):
    with pytest.raises(StoreError, match=message):
        open_kv(url)


def test_a_missing_tls_file_is_refused_when_the_store_is_opened(tmp_path):
    with pytest.raises(StoreError, match=f"cacert file {tmp_path}/ca.pem does not exist"):
        open_kv(f"etcd://{HOST}:2379?cacert={tmp_path}/ca.pem")


# -- leases, pages, records ----------------------------------------------------------------


def test_an_etcd_lease_expires_on_real_time_with_delete_events(etcd_server, prefix, watchers):
    kv = open_kv(etcd_server.url())
    lease = kv.grant_lease(1)  # etcd raises it to its minimum, 2 s
    kv.put(prefix + "a", "A", lease=lease)
    watcher = watchers(kv, prefix, kv.revision())
    (gone,) = watcher.wait_for(prefix + "a", LEASE_GONE_WITHIN)
    assert (gone.type, gone.kv.value, gone.kv.lease) == ("delete", "A", lease)
    assert kv.get(prefix + "a") is None
    assert not kv.keepalive(lease) and not kv.revoke(lease)


def test_a_paged_range_is_one_snapshot_at_the_first_pages_revision(etcd_server, prefix):
    kv = EtcdKvStore(parse_url(etcd_server.url()), page_size=3)
    for i in range(10):
        kv.put(f"{prefix}{i:02}", str(i))
    kv.put(prefix[:-1] + "0", "beyond the prefix")
    kvs, revision = kv.range(prefix)
    assert [k.key for k in kvs] == [f"{prefix}{i:02}" for i in range(10)]
    assert revision == kv.revision()

    pages = kv._pages(prefix)
    first, at = next(pages)
    kv.delete(f"{prefix}05")  # changes after the first page do not show in the later ones
    kv.put(f"{prefix}99", "late")
    rest = [kv_.key for page, rev in pages for kv_ in page if rev == at]
    assert [k.key for k in first] + rest == [f"{prefix}{i:02}" for i in range(10)]


def test_a_record_that_is_not_utf8_is_read_not_raised(etcd_server, prefix):
    """Another writer (etcdctl) may store any bytes; reading them must not fail."""
    requests.post(
        etcd_server.client_url(0) + "/v3/kv/put",
        json={
            "key": base64.b64encode((prefix + "bad").encode()).decode(),
            "value": base64.b64encode(b"\xff\xfe{").decode(),
        },
        timeout=5,
    ).raise_for_status()
    kv = open_kv(etcd_server.url())
    assert kv.get(prefix + "bad").value == "\ufffd\ufffd{"


def test_a_watch_that_fell_behind_compaction_raises_and_a_relist_recovers(etcd_server, prefix):
    kv = open_kv(etcd_server.url())
    old = kv.put(prefix + "a", "1")
    kv.put(prefix + "a", "2")
    kv.compact(kv.revision())
    with pytest.raises(CompactedError, match="range"):
        next(kv.watch(prefix, old - 1, threading.Event()))
    kvs, revision = kv.range(prefix)
    assert [k.value for k in kvs] == ["2"]
    stop = threading.Event()
    batches = kv.watch(prefix, revision, stop)
    kv.put(prefix + "b", "3")
    assert summary(next(batches)) == [("put", prefix + "b", "3", revision + 1)]
    stop.set()
    batches.close()


def test_a_quiet_watch_outlives_the_request_timeout(etcd_server, prefix, watchers, caplog):
    """The timeout bounds requests, not the silence of a watch: the stream's reads wait."""
    kv = open_kv(etcd_server.url(timeout=0.2))
    watcher = watchers(kv, prefix, kv.revision())
    threading.Event().wait(1.0)  # quiet for five timeouts
    revision = kv.put(prefix + "k", "v")
    assert summary(watcher.wait_for(prefix + "k")) == [("put", prefix + "k", "v", revision)]
    assert "ended" not in caplog.text


def test_a_watch_stream_sends_tcp_keepalives(etcd_server, prefix, watchers):
    """A watch only receives: keepalive probes are what notice a store whose data stopped
    reaching us (then the stream is opened again from the last revision)."""
    kv = open_kv(etcd_server.url())
    watcher = watchers(kv, prefix, kv.revision())
    kv.put(prefix + "k", "v")
    watcher.wait_for(prefix + "k")
    port = etcd_server.members[0].client_port
    out = subprocess.run(
        ["ss", "-tnopH", "state", "established", "dst", f"{HOST}:{port}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    ours = [line for line in out.splitlines() if f"pid={os.getpid()}," in line]
    assert any("timer:(keepalive" in line for line in ours), out


# -- several endpoints ---------------------------------------------------------------------


def test_reads_writes_and_watches_go_on_when_one_member_of_three_dies(
    etcd_cluster3, prefix, watchers, caplog
):
    kv = open_kv(etcd_cluster3.url())
    start = kv.put(prefix + "before", "1")
    watcher = watchers(kv, prefix, start - 1)
    watcher.wait_for(prefix + "before")
    etcd_cluster3.kill(0)  # the member every call went to first
    try:
        assert kv.get(prefix + "before").value == "1"
        assert kv.create(prefix + "after", "2")
        lease = kv.grant_lease(30)
        assert kv.keepalive(lease)
        kv.put(prefix + "end", "3", lease=lease)
        events = watcher.wait_for(prefix + "end")
        assert [e.key for e in events] == [prefix + k for k in ("before", "after", "end")]
        assert [k.key for k in kv.range(prefix)[0]] == [
            prefix + k for k in ("after", "before", "end")
        ]
    finally:
        etcd_cluster3.restart(0)


def test_a_store_that_lost_its_quorum_is_reported_unavailable(etcd_cluster3, prefix, watchers):
    kv = open_kv(etcd_cluster3.url(timeout=1))
    kv.put(prefix + "k", "v")
    watcher = watchers(kv, prefix, kv.revision())
    etcd_cluster3.kill(0)
    etcd_cluster3.kill(1)
    try:
        with pytest.raises(StoreUnavailableError, match="check that etcd"):
            kv.get(prefix + "k")
        with pytest.raises(StoreUnavailableError):
            kv.put(prefix + "k", "w")
        # The survivor keeps the watch's connection open; it ends it only because the
        # watch asked for a leader (store/etcd.py), so the watcher learns, not hangs.
        with pytest.raises(StoreUnavailableError, match="no leader"):
            watcher.wait_for(prefix + "never", QUORUM_LOSS_NOTICED_WITHIN)
    finally:
        etcd_cluster3.restart(0)
        etcd_cluster3.restart(1)
    assert kv.get(prefix + "k").value in ("v", "w")  # the write's outcome was unknown


def test_a_member_without_a_leader_refuses_at_once_and_a_refused_write_is_never_applied(
    etcd_cluster3, prefix
):
    """Every request asks for a leader, so a member that lost its quorum answers "no
    leader" (and the call moves on) instead of holding the request until the client's
    timeout; a write it refuses is known not applied, so the error does not call its
    outcome unknown."""
    kv = open_kv(etcd_cluster3.url(timeout=1))
    kv.put(prefix + "k", "v")
    etcd_cluster3.kill(0)
    etcd_cluster3.kill(1)
    try:
        deadline = time.monotonic() + QUORUM_LOSS_NOTICED_WITHIN
        while True:  # the survivor notices after an election timeout
            with pytest.raises(StoreUnavailableError) as caught:
                kv.get(prefix + "k")
            if "no leader" in str(caught.value):
                break
            assert time.monotonic() < deadline, f"never said 'no leader': {caught.value}"
        with pytest.raises(StoreUnavailableError) as caught:
            kv.put(prefix + "k", "w")
        assert "no leader" in str(caught.value)
        assert "outcome is unknown" not in str(caught.value)
    finally:
        etcd_cluster3.restart(0)
        etcd_cluster3.restart(1)
    assert kv.get(prefix + "k").value == "v"


def test_no_endpoint_answering_is_store_unavailable_naming_every_endpoint():
    refused = [free_port(), free_port()]
    kv = open_kv(f"etcd://{HOST}:{refused[0]},{HOST}:{refused[1]}?timeout=1")
    for call in (
        lambda: kv.get("k"),
        lambda: kv.put("k", "v"),
        lambda: kv.grant_lease(5),
        lambda: next(kv.watch("k", 0, threading.Event())),
    ):
        with pytest.raises(StoreUnavailableError) as caught:
            call()
        assert all(f"{HOST}:{port}" in str(caught.value) for port in refused)


def test_an_endpoint_that_accepts_but_never_answers_times_out_as_unavailable():
    with socket.socket() as silent:
        silent.bind((HOST, 0))
        silent.listen(8)  # connections complete in the backlog; nothing ever answers
        kv = open_kv(f"etcd://{HOST}:{silent.getsockname()[1]}?timeout=0.5")
        with pytest.raises(StoreUnavailableError, match="check that etcd"):
            kv.get("k")
        with pytest.raises(StoreUnavailableError, match="outcome is unknown"):
            kv.put("k", "v")
        with pytest.raises(StoreUnavailableError):
            next(kv.watch("k", 0, threading.Event()))


# -- TLS -----------------------------------------------------------------------------------


def test_tls_with_a_client_certificate_reads_writes_and_watches(etcd_tls, prefix, watchers):
    kv = open_kv(etcd_tls.url())
    watcher = watchers(kv, prefix, kv.revision())
    revision = kv.put(prefix + "k", "v")
    assert summary(watcher.wait_for(prefix + "k")) == [("put", prefix + "k", "v", revision)]


def test_tls_without_a_client_certificate_is_refused_as_a_tls_problem(etcd_tls):
    kv = open_kv(etcd_tls.url(client_cert=False))
    with pytest.raises(KvError, match="TLS with etcd .* check cacert, cert and key") as caught:
        kv.get("k")
    assert not isinstance(caught.value, StoreUnavailableError)


def test_tls_with_another_ca_is_refused(etcd_tls, tmp_path):
    from tests.etcd_server import make_tls

    other = make_tls(tmp_path / "other")
    url = f"etcd://{etcd_tls.endpoints}?cacert={other.cacert}&cert={etcd_tls.tls.client_cert}"
    kv = open_kv(f"{url}&key={etcd_tls.tls.client_key}")
    with pytest.raises(KvError, match="TLS with etcd"):
        kv.put("k", "v")
