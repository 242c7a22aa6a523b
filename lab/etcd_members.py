"""The lab's etcd cluster: one member per namespace ``L-etcd<k>`` on the underlay.

Each member is a real etcd (Debian's etcd-server) in a namespace of its own, joined to
the underlay bridge like a host, at ``198.18.1.<k>/16``: clients on 2379, peers on
2380, a data dir, a log and a pidfile under ``STATE/etcd/etcd<k>/``.  Agents reach it
from their host namespaces over the underlay; the operator reaches it from the underlay
namespace, whose bridge has ``198.18.255.254/16`` (``operator_namespace``), because the
root namespace gets no address or route.

A member is stopped only by the PID in its pidfile, and only if that process still has
the member's data dir on its command line (a recycled PID is never killed).  Starting a
member again reuses its data dir: etcd then ignores the ``--initial-cluster*`` flags and
rejoins as the member its WAL says it is.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from controller import netns as ns_helpers
from lab import naming, netns, ovs_host

HEALTH_TIMEOUT = 30.0
HEALTH_POLL = 0.1
ETCD = "/usr/bin/etcd"
# Keep the last 10,000 revisions, as docs/operations.md tells operators to: etcd otherwise
# keeps every revision until someone compacts, and its database grows with every pod start
# until its quota stops all writes.  Revision mode, not periodic: the history kept is
# bounded by the change count, however busy the lab.  A watcher further behind gets
# CompactedError, re-lists and re-watches.
AUTO_COMPACTION = ("--auto-compaction-mode=revision", "--auto-compaction-retention=10000")


class EtcdLabError(RuntimeError):
    """An etcd member that cannot be started or reached; the message says what to do."""


@dataclass(frozen=True)
class EtcdMemberPaths:
    """Where one member keeps its files."""

    root: str

    @property
    def data_dir(self) -> str:
        return os.path.join(self.root, "data")

    @property
    def log(self) -> str:
        return os.path.join(self.root, "etcd.log")

    @property
    def pidfile(self) -> str:
        return os.path.join(self.root, "etcd.pid")


def member_paths(lab_root: str, index: int) -> EtcdMemberPaths:
    return EtcdMemberPaths(os.path.join(lab_root, "etcd", naming.etcd_member_name(index)))


def operator_namespace(lab: str) -> str:
    """The namespace from which the operator (CLI, tests) reaches the lab's etcd."""
    return naming.underlay_namespace(lab)


@contextmanager
def in_operator_namespace(lab: str) -> Iterator[None]:
    """Run the block with this thread in the lab's operator namespace.

    ``setns`` moves only the calling thread, and a socket keeps the namespace it was made
    in: connections opened in the block reach the lab's etcd; threads started in the block
    inherit the namespace.  The rest of the process stays in the root namespace."""
    with ns_helpers.in_namespace(operator_namespace(lab)):
        yield


def add_operator_address(lab: str) -> None:
    """Give the underlay bridge the operator's address (etcd labs only)."""
    netns.add_address(
        operator_namespace(lab),
        naming.UNDERLAY_BRIDGE,
        naming.OPERATOR_IP,
        naming.underlay_prefixlen(),
    )


def build_member_namespace(lab: str, index: int, underlay_mtu: int = naming.UNDERLAY_MTU) -> None:
    """``L-etcd<k>``: eth0 at 198.18.1.<k>/16, its peer ``etcd<k>`` on the underlay bridge."""
    ns = naming.etcd_namespace(lab, index)
    underlay = naming.underlay_namespace(lab)
    port = naming.etcd_member_name(index)
    netns.create_namespace(ns)
    netns.create_uplink(
        underlay, port, naming.UNDERLAY_BRIDGE, ns, naming.HOST_UPLINK, underlay_mtu
    )
    netns.add_address(ns, naming.HOST_UPLINK, naming.etcd_ip(index), naming.underlay_prefixlen())


def member_argv(lab: str, index: int, members: int, paths: EtcdMemberPaths) -> list[str]:
    """etcd's command line; heartbeat (100 ms) and election (1 s) timeouts are etcd's
    defaults, ample for members one bridge apart."""
    ip = naming.etcd_ip(index)
    peers = ",".join(
        f"{naming.etcd_member_name(k)}=http://{naming.etcd_ip(k)}:{naming.ETCD_PEER_PORT}"
        for k in range(1, members + 1)
    )
    client = f"http://{ip}:{naming.ETCD_CLIENT_PORT}"
    peer = f"http://{ip}:{naming.ETCD_PEER_PORT}"
    return [
        ETCD,
        f"--name={naming.etcd_member_name(index)}",
        f"--data-dir={paths.data_dir}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster={peers}",
        f"--initial-cluster-token={lab}",
        "--initial-cluster-state=new",
        *AUTO_COMPACTION,
        "--logger=zap",
        "--log-outputs=stderr",
    ]


def start(lab: str, lab_root: str, index: int, members: int) -> subprocess.Popen:
    """Start member ``index`` in its namespace (which must exist); returns at once."""
    paths = member_paths(lab_root, index)
    if member_pid(paths) is not None:
        raise EtcdLabError(
            f"{naming.etcd_member_name(index)} of lab {lab} is already running; "
            "stop it first or use 'restart'"
        )
    os.makedirs(paths.root, exist_ok=True)
    ns = naming.etcd_namespace(lab, index)
    if not netns.namespace_exists(ns):
        raise EtcdLabError(
            f"lab {lab} has no etcd member {naming.etcd_member_name(index)} (no namespace "
            f"{ns}); see 'ovs-overlayctl lab status --lab {lab}'"
        )
    with open(paths.log, "ab") as log:
        proc = subprocess.Popen(
            member_argv(lab, index, members, paths),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            preexec_fn=lambda: netns.enter_namespace(ns),
            start_new_session=True,
        )
    with open(paths.pidfile, "w") as f:
        f.write(f"{proc.pid}\n")
    return proc


def member_pid(paths: EtcdMemberPaths) -> int | None:
    """The member's PID if it runs and is the one started with this data dir."""
    return ovs_host.pid_from_pidfile(paths.pidfile, f"--data-dir={paths.data_dir}")


def stop(paths: EtcdMemberPaths, sig: int = signal.SIGKILL) -> int | None:
    """Signal the member and wait until it is gone; returns the PID it had."""
    pid = member_pid(paths)
    if pid is None:
        return None
    ovs_host.terminate(pid, sig)
    return pid


def _ask(lab: str, index: int, method: str, path: str, timeout: float) -> dict | None:
    """One HTTP request to member ``index`` from the operator namespace; its JSON answer, or
    None when the member does not answer (with 200 and JSON)."""
    try:
        with in_operator_namespace(lab):
            conn = http.client.HTTPConnection(
                naming.etcd_ip(index), naming.ETCD_CLIENT_PORT, timeout=timeout
            )
            try:
                conn.request(method, path, body="{}" if method == "POST" else None)
                answer = conn.getresponse()
                body = answer.read()
            finally:
                conn.close()
        return json.loads(body) if answer.status == 200 else None
    except (OSError, ValueError):
        return None


def health(lab: str, index: int, timeout: float = 2.0) -> bool:
    """Whether member ``index`` says it is healthy: etcd 3.4's ``/health`` answers true only
    when the member has a leader and a quorum read through it succeeds."""
    answer = _ask(lab, index, "GET", "/health", timeout)
    return answer is not None and answer.get("health") == "true"


def leader(lab: str, members: int, timeout: float = 2.0) -> int | None:
    """The index of the member that leads now (for fault tests that kill the leader), or
    None when the members that answer name no leader or disagree."""
    statuses = {
        index: _ask(lab, index, "POST", "/v3/maintenance/status", timeout)
        for index in range(1, members + 1)
    }
    ids = {s["header"]["member_id"]: index for index, s in statuses.items() if s}
    leaders = {s.get("leader") for s in statuses.values() if s} & ids.keys()
    return ids[leaders.pop()] if len(leaders) == 1 else None


def wait_healthy(
    lab: str,
    lab_root: str,
    indices: list[int],
    procs: dict[int, subprocess.Popen] | None = None,
    timeout: float = HEALTH_TIMEOUT,
) -> None:
    """Wait until every member in ``indices`` is healthy; raise naming the first that is not
    (with its log's end), or at once if one of ``procs`` exited."""
    deadline = time.monotonic() + timeout
    pending = list(indices)
    while pending:
        for index, proc in (procs or {}).items():
            if proc.poll() is not None:
                raise EtcdLabError(
                    f"{naming.etcd_member_name(index)} of lab {lab} exited with "
                    f"{proc.returncode}; its log ends: {_log_tail(member_paths(lab_root, index))}"
                )
        pending = [k for k in pending if not health(lab, k)]
        if not pending:
            return
        if time.monotonic() > deadline:
            first = pending[0]
            running = member_pid(member_paths(lab_root, first)) is not None
            raise EtcdLabError(
                f"{naming.etcd_member_name(first)} of lab {lab} was not healthy in "
                f"{timeout:.0f}s ({'running' if running else 'not running'}; a member needs "
                f"a quorum of its cluster running); its log ends: "
                f"{_log_tail(member_paths(lab_root, first))}"
            )
        time.sleep(HEALTH_POLL)


def _log_tail(paths: EtcdMemberPaths, lines: int = 3) -> str:
    try:
        with open(paths.log, errors="replace") as f:
            return " | ".join(line.strip()[:300] for line in f.readlines()[-lines:])
    except OSError:
        return "(no log)"
