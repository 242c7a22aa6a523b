"""One lab host's own ovsdb-server and ovs-vswitchd.

Several ovs-vswitchd on one machine collide in /var/run/openvswitch (each
bridge's ``<br>.mgmt`` socket lives in the run directory), so every host gets
its own OVS_RUNDIR, database, pidfiles, unixctl sockets and logs under the
lab's state directory.  The same environment (``env()``) makes plain
``ovs-vsctl``/``ovs-ofctl``/``ovs-appctl`` address that host's daemons.

Daemons are stopped only by the PID in their own pidfile, and only if that PID
still runs the binary we started with this host's run directory: a recycled PID
is never killed.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
from dataclasses import dataclass

from lab import netns

OVS_SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"
DAEMONS = ("ovsdb-server", "ovs-vswitchd")
STOP_TIMEOUT = 10.0


@dataclass(frozen=True)
class OvsHostPaths:
    """Where one host's OVS keeps its files."""

    root: str

    @property
    def rundir(self) -> str:
        return os.path.join(self.root, "run")

    @property
    def logdir(self) -> str:
        return os.path.join(self.root, "log")

    @property
    def db(self) -> str:
        return os.path.join(self.root, "conf.db")

    @property
    def db_sock(self) -> str:
        return os.path.join(self.rundir, "db.sock")

    def pidfile(self, daemon: str) -> str:
        return os.path.join(self.rundir, f"{daemon}.pid")

    def env(self) -> dict[str, str]:
        """The environment under which OVS tools talk to this host's daemons."""
        env = dict(os.environ)
        env.update(
            OVS_RUNDIR=self.rundir,
            OVS_LOGDIR=self.logdir,
            OVS_DBDIR=self.root,
            OVS_SYSCONFDIR=self.root,
        )
        return env


def start(paths: OvsHostPaths, namespace: str) -> None:
    """Create the database and start both daemons inside ``namespace``.

    ``--detach`` returns once the daemon is ready: ovsdb-server listens on its
    socket, ovs-vswitchd has connected to the database.
    """
    os.makedirs(paths.rundir, exist_ok=True)
    os.makedirs(paths.logdir, exist_ok=True)
    subprocess.run(["ovsdb-tool", "create", paths.db, OVS_SCHEMA], check=True, capture_output=True)
    start_ovsdb_server(paths, namespace)
    start_vswitchd(paths, namespace)


def start_vswitchd(paths: OvsHostPaths, namespace: str) -> None:
    """ovs-vswitchd without a copy of the kernel's routes (``--disable-system-route``): OVS
    3.1 flushes that copy on every link change in the namespace, and userspace tunnels
    routed in the gap drop packets (docs/architecture.md).  The agent gives it the one
    route the tunnels need (controller/underlay.py)."""
    _run_detached(
        namespace,
        paths,
        [
            "ovs-vswitchd",
            f"unix:{paths.db_sock}",
            "--disable-system-route",
            *_daemon_args(paths, "ovs-vswitchd"),
        ],
    )


def start_ovsdb_server(paths: OvsHostPaths, namespace: str) -> None:
    _run_detached(
        namespace,
        paths,
        [
            "ovsdb-server",
            paths.db,
            f"--remote=punix:{paths.db_sock}",
            *_daemon_args(paths, "ovsdb-server"),
        ],
    )


def _daemon_args(paths: OvsHostPaths, daemon: str) -> list[str]:
    return [
        f"--pidfile={paths.pidfile(daemon)}",
        f"--log-file={os.path.join(paths.logdir, daemon + '.log')}",
        "--detach",
        "--no-chdir",
    ]


def _run_detached(namespace: str, paths: OvsHostPaths, argv: list[str]) -> None:
    result = netns.run_in_namespace(namespace, argv, env=paths.env(), check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"{argv[0]} failed to start in {namespace} (exit {result.returncode}): "
            f"{result.stderr.strip()}; see {paths.logdir}"
        )


def daemon_pid(paths: OvsHostPaths, daemon: str) -> int | None:
    """The PID of ``daemon`` if it is running and is the one this host started."""
    pid = pid_from_pidfile(paths.pidfile(daemon), paths.rundir)
    if pid is None or _program(pid) != daemon:
        return None
    return pid


def pid_from_pidfile(path: str, marker: str) -> int | None:
    """The PID in ``path`` if that process still runs with ``marker`` in its command line
    (so a PID recycled by an unrelated process is never taken for ours)."""
    try:
        with open(path) as f:
            pid = int(f.read().strip())
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().split(b"\0")
    except (OSError, ValueError):
        return None
    if not any(marker.encode() in arg for arg in cmdline):
        return None
    return pid


def _program(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return os.path.basename(f.read().split(b"\0")[0].decode())
    except OSError:
        return None


def kill_daemon(paths: OvsHostPaths, daemon: str, sig: int = signal.SIGTERM) -> int | None:
    """Send ``sig`` to ``daemon`` and wait until it is gone; returns the PID it had."""
    pid = daemon_pid(paths, daemon)
    if pid is None:
        return None
    terminate(pid, sig)
    return pid


def terminate(pid: int, sig: int = signal.SIGTERM) -> None:
    """Signal ``pid`` and wait for it to exit; SIGKILL if it does not in time."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    if not wait_gone(pid, STOP_TIMEOUT):
        os.kill(pid, signal.SIGKILL)
        wait_gone(pid, STOP_TIMEOUT)


def wait_gone(pid: int, timeout: float) -> bool:
    """Wait for a process that is not our child (daemons detach) to exit: a pidfd becomes
    readable when it terminates."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(timeout * 1000))
    finally:
        os.close(fd)
