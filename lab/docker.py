"""dockerd on a lab host (``lab docker start|stop|restart|kill``, ``lab docker exec``).

Debian 12's docker.io (20.10) runs in the host's network namespace with everything of its
own under ``<lab>/hosts/<h>/docker/``: data root, exec root, pidfile, API socket
(``docker.sock``), config file (``daemon.json``), log, its identity key and its containerd
child's state.  It is started in a mount namespace of its own (lab/docker_ns.py) where
``/run/docker/plugins`` is the host's plugin directory, in which the host's agent serves
the ovs-overlay remote network and IPAM drivers (``[docker] plugin_dir`` in the agent's
config): each host's dockerd finds its own host's agent under the one driver name
``ovs-overlay``, and the machine's ``/run/docker`` is never made.

The daemon makes no network of its own and touches no firewall: ``bridge: none`` (no
docker0), ``iptables``/``ip6tables``/``ip-masq``/``ip-forward`` off.  Storage is ``vfs``
(plain copies: works on any file system, also the tmpfs of a fresh-root CI's /run);
cgroups through cgroupfs under a parent named for the lab host (``/<lab>-<host>-docker``),
removed with the host; ``oom-score-adjust`` 0, since lowering a score needs
CAP_SYS_RESOURCE, which root lacks here (as for the lab's containerd).  dockerd starts its
own containerd child (its socket under the exec root): in its mount namespace there is no
``/run/containerd/containerd.sock`` of the machine's to pick up instead.

The lab has no registry: the first start on a host imports ``ovs-overlay-lab/busybox``
(``docker import`` of a tar of Debian's busybox-static and a link per applet).

Stopping dockerd (SIGTERM) stops its containers first (each within its stop timeout), as
on a node;
``kill`` (SIGKILL) is a crash: its containerd child dies with it (dockerd starts it with a
parent-death signal), the shims and containers live on until dockerd starts again, which
then kills them and removes their endpoints (the shims' sockets are kept in the lab, so
the new containerd reaches them).  ``remove`` (``lab down``) ends everything by PID: dockerd,
then what is left of its containerd and shims (found by the docker directory in their
command lines) and the shims' containers, removes the cgroups and the directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from lab import agent_proc, containerd, naming, netns, ovs_host, pause_image
from lab.ovs_host import OvsHostPaths

DOCKERD = "/usr/sbin/dockerd"  # Debian's docker.io, by path: another docker may precede it
DOCKER = "/usr/bin/docker"  # in PATH (this machine has a v28 CLI in /usr/local/bin)
MACHINE_MOUNT_POINTS = ("/etc/docker", "/opt")  # bind-mounted over in dockerd's namespace
IMAGE = "ovs-overlay-lab/busybox"
IMAGE_CMD = 'CMD ["sh"]'
BUSYBOX_APPLETS_CMD = (pause_image.BUSYBOX, "--list")
STOP_TIMEOUT = 30.0  # seconds a stopping dockerd gets before SIGKILL (see ``stop``)
READY_TIMEOUT = 60.0
READY_POLL = 0.2
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"  # runc, containerd and its shim: Debian's


class DockerError(RuntimeError):
    """dockerd cannot be started, stopped or reached on a lab host; the message says what
    to do."""


@dataclass(frozen=True)
class DockerPaths:
    """Where one lab host's dockerd keeps everything."""

    root: str

    @classmethod
    def of_host(cls, host: OvsHostPaths) -> DockerPaths:
        return cls(os.path.join(host.root, "docker"))

    @property
    def config(self) -> str:
        return os.path.join(self.root, "daemon.json")

    @property
    def socket(self) -> str:
        return os.path.join(self.root, "docker.sock")

    @property
    def pidfile(self) -> str:
        """The PID the lab started (the launcher, which becomes dockerd)."""
        return os.path.join(self.root, "dockerd.lab.pid")

    @property
    def log(self) -> str:
        return os.path.join(self.root, "dockerd.log")

    @property
    def cli_config(self) -> str:
        """``DOCKER_CONFIG`` of the lab's docker CLI (instead of ~/.docker)."""
        return os.path.join(self.root, "cli")

    @property
    def image_tar(self) -> str:
        return os.path.join(self.root, "busybox.tar")

    def dir(self, name: str) -> str:
        return os.path.join(self.root, name)


def cgroup_parent(host: OvsHostPaths) -> str:
    """``/<lab>-<host>-docker``: named for the lab host, so ``remove`` finds it."""
    lab_name = os.path.basename(os.path.dirname(os.path.dirname(host.root)))
    return f"/{naming.host_namespace(lab_name, os.path.basename(host.root))}-docker"


def daemon_config(paths: DockerPaths, cgroup: str) -> dict:
    """dockerd's configuration file for one lab host (the module docstring says why)."""
    return {
        "data-root": paths.dir("data"),
        "exec-root": paths.dir("exec"),
        "pidfile": paths.dir("exec/dockerd.pid"),  # _remove_stale_pidfiles knows it
        "hosts": [f"unix://{paths.socket}"],
        "bridge": "none",
        "iptables": False,
        "ip6tables": False,
        "ip-masq": False,
        "ip-forward": False,
        "storage-driver": "vfs",
        "exec-opts": ["native.cgroupdriver=cgroupfs"],
        "cgroup-parent": cgroup,
        "oom-score-adjust": 0,
    }


def dockerd_pid(paths: DockerPaths) -> int | None:
    """The PID of this host's dockerd if it runs (the one started with its config)."""
    return ovs_host.pid_from_pidfile(paths.pidfile, paths.config)


def cli_env(paths: DockerPaths) -> dict[str, str]:
    """The docker CLI's environment for this host's dockerd."""
    return {
        "PATH": PATH,
        "HOME": paths.root,
        "DOCKER_HOST": f"unix://{paths.socket}",
        "DOCKER_CONFIG": paths.cli_config,
    }


def cli(
    paths: DockerPaths, *args: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess:
    """Run Debian's docker CLI against this host's dockerd; raises on failure with ``check``."""
    result = subprocess.run(
        [DOCKER, *args],
        env=cli_env(paths),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if check and result.returncode != 0:
        raise DockerError(
            f"docker {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}; "
            f"see {paths.log}"
        )
    return result


def start(host: OvsHostPaths, namespace: str) -> int:
    """Start dockerd in ``namespace`` (a lab host's), wait until it answers, import the lab's
    image on its first start; returns its PID.  Its state from an earlier run is kept."""
    for binary, package in (
        (DOCKERD, "docker.io"),
        (DOCKER, "docker.io"),
        ("/usr/bin/runc", "runc"),
    ):
        if not os.path.exists(binary):
            raise DockerError(f"{binary} is missing; install {package} (./quickstart.sh does)")
    for point in MACHINE_MOUNT_POINTS:
        if not os.path.isdir(point):
            raise DockerError(
                f"{point} is missing: dockerd's namespace mounts the lab's own over it; "
                "reinstall docker.io (it makes /etc/docker)"
            )
    paths = DockerPaths.of_host(host)
    pid = dockerd_pid(paths)
    if pid is not None:
        raise DockerError(
            f"dockerd of {os.path.basename(host.root)} is running already (pid {pid}); "
            "stop it first"
        )
    _remove_stale_pidfiles(paths)
    for d in ("etc", "opt", "run-containerd", "exec", "data", "cli"):
        os.makedirs(paths.dir(d), exist_ok=True)
    os.makedirs(agent_proc.plugin_dir(host), exist_ok=True)
    with open(paths.config, "w") as f:
        json.dump(daemon_config(paths, cgroup_parent(host)), f, indent=2)
    with open(paths.log, "ab") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lab.docker_ns",
                "--netns",
                namespace,
                "--docker-dir",
                paths.root,
                "--plugin-dir",
                agent_proc.plugin_dir(host),
                "--",
                DOCKERD,
                "--config-file",
                paths.config,
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            env={"PATH": PATH},
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )
    with open(paths.pidfile, "w") as f:
        f.write(f"{proc.pid}\n")
    try:
        _wait_ready(paths, proc)
        _import_image(paths)
    except BaseException:
        ovs_host.terminate(proc.pid)
        proc.wait()
        raise
    return proc.pid


def _remove_stale_pidfiles(paths: DockerPaths) -> None:
    """A killed dockerd leaves its pidfile and its containerd child's (that one dies of its
    parent-death signal), and a new dockerd believes a PID in them while ``kill(pid, 0)``
    succeeds: also for a zombie, which these are until PID 1 reaps them, just after a kill
    (the new dockerd then refuses to start, or waits for that containerd's socket until it
    gives up).  Ours (PID and command line) says no dockerd runs, so the pidfiles are
    stale once the old containerd has exited."""
    for pid in docker_processes(paths):
        if os.path.basename((containerd.cmdline(pid) or [""])[0]) == "containerd":
            ovs_host.wait_gone(pid, ovs_host.STOP_TIMEOUT)
    for pidfile in (paths.dir("exec/dockerd.pid"), paths.dir("exec/containerd/containerd.pid")):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pidfile)


def docker_processes(paths: DockerPaths) -> list[int]:
    """Processes whose command line names this docker directory: dockerd, its containerd
    and the shims."""
    prefix = paths.root + "/"
    return [
        int(entry)
        for entry in os.listdir("/proc")
        if entry.isdigit() and any(prefix in a for a in containerd.cmdline(int(entry)))
    ]


def _wait_ready(paths: DockerPaths, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DockerError(
                f"dockerd exited with {proc.returncode}; its log ends: {_log_tail(paths)}"
            )
        if os.path.exists(paths.socket):
            # dockerd accepts on its socket before it answers: a restart first kills the
            # containers its crashed predecessor left (each up to its stop timeout).
            try:
                left = max(1.0, deadline - time.monotonic())
                if cli(paths, "version", check=False, timeout=left).returncode == 0:
                    return
            except subprocess.TimeoutExpired:
                break
        time.sleep(READY_POLL)
    raise DockerError(
        f"dockerd did not answer in {READY_TIMEOUT:.0f}s; its log ends: {_log_tail(paths)}"
    )


def _import_image(paths: DockerPaths) -> None:
    """``ovs-overlay-lab/busybox`` from busybox-static, unless this dockerd has it."""
    if cli(paths, "image", "inspect", IMAGE, check=False).returncode == 0:
        return
    applets = subprocess.run(
        BUSYBOX_APPLETS_CMD, capture_output=True, text=True, check=True
    ).stdout.split()
    with open(paths.image_tar, "wb") as f:
        f.write(pause_image.busybox_layer([a for a in applets if a != "busybox"]))
    cli(paths, "import", "--change", IMAGE_CMD, paths.image_tar, IMAGE)
    os.unlink(paths.image_tar)


def _log_tail(paths: DockerPaths, lines: int = 3) -> str:
    try:
        with open(paths.log, errors="replace") as f:
            return " | ".join(line.strip()[:300] for line in f.readlines()[-lines:])
    except OSError:
        return "(no log)"


def stop(host: OvsHostPaths, sig: int = signal.SIGTERM) -> int | None:
    """Stop this host's dockerd (SIGTERM: it stops its containers first; SIGKILL: a crash);
    returns its PID, None if it was not running."""
    pid = dockerd_pid(DockerPaths.of_host(host))
    if pid is None:
        return None
    # Its shutdown waits for each container's stop timeout (10 s unless ``docker run
    # --stop-timeout`` says otherwise; ``shutdown-timeout`` only sets a minimum in 20.10):
    # longer than the lab's other daemons get, so it has a timeout of its own.
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    if not ovs_host.wait_gone(pid, STOP_TIMEOUT):
        ovs_host.terminate(pid, signal.SIGKILL)
    return pid


def leftovers(host: OvsHostPaths) -> list[int]:
    """Processes of this host's Docker that outlive dockerd: its containerd and the shims
    (their command lines name the docker directory), and the shims' containers."""
    own = docker_processes(DockerPaths.of_host(host))
    shims = [p for p in own if containerd.cmdline(p)[:1] and "shim" in containerd.cmdline(p)[0]]
    return [c for shim in shims for c in containerd.children(shim)] + own


def remove(host: OvsHostPaths) -> list[str]:
    """Everything this host's dockerd made: dockerd, its containerd, shims and containers
    (by PID), their cgroups, the docker directory.  Returns what it removed, for
    ``lab down``."""
    paths = DockerPaths.of_host(host)
    if not os.path.isdir(paths.root):
        return []
    removed = []
    pid = stop(host)
    if pid is not None:
        removed.append(f"process dockerd pid {pid}")
    for leftover in leftovers(host):
        ovs_host.terminate(leftover, signal.SIGKILL)
        removed.append(f"process pid {leftover} (left by dockerd)")
    removed += remove_cgroups(cgroup_parent(host))
    for mount in containerd.mounts_under(paths.root):
        containerd.unmount(mount)
        removed.append(f"mount {mount}")
    shutil.rmtree(paths.root)
    removed.append(f"state {paths.root}")
    return removed


def remove_cgroups(parent: str) -> list[str]:
    """The cgroup ``parent`` and every cgroup under it, in every hierarchy, deepest first
    (their processes are gone)."""
    removed = []
    for point in set(containerd.cgroup_mounts().values()):
        top = point + parent
        if not os.path.isdir(top):
            continue
        dirs = [d for d, _, _ in os.walk(top)]
        for d in sorted(dirs, key=len, reverse=True):
            os.rmdir(d)
            removed.append(f"cgroup {d}")
    return removed


ACTIONS = ("start", "stop", "restart", "kill")


def control(
    name: str, host: str, action: str, state_root: str = naming.DEFAULT_STATE_ROOT
) -> int | None:
    """``lab docker start|stop|restart|kill``: one lab host's dockerd (``kill``: SIGKILL, a
    crash).  Returns the PID of the dockerd started, if one was."""
    host_paths = _host_paths(name, host, state_root)
    if action not in ACTIONS:
        raise ValueError(f"docker action {action!r} is not one of {', '.join(ACTIONS)}")
    if action in ("stop", "restart", "kill"):
        stopped = stop(host_paths, signal.SIGKILL if action == "kill" else signal.SIGTERM)
        if stopped is None and action != "restart":
            raise DockerError(
                f"dockerd of {host} in lab {name} is not running; nothing to {action}"
            )
    if action in ("start", "restart"):
        return start(host_paths, naming.host_namespace(name, host))
    return None


def _host_paths(name: str, host: str, state_root: str) -> OvsHostPaths:
    from lab.lab import LabError, LabPaths, read_manifest  # lab.lab imports this module

    naming.validate_lab_name(name)
    index = naming.host_index(host)
    paths = LabPaths(state_root, name)
    if index > int(read_manifest(paths).get("hosts", 0)):
        raise LabError(f"lab {name} has no host {host}; see 'ovs-overlayctl lab status'")
    return paths.host(host)


def exec_cli(
    name: str, host: str, argv: Sequence[str], state_root: str = naming.DEFAULT_STATE_ROOT
) -> None:
    """``lab docker exec``: replace this process with ``argv`` (``docker ...`` runs Debian's
    CLI) in ``host``'s network namespace, pointed at its dockerd."""
    host_paths = _host_paths(name, host, state_root)
    if not argv:
        raise DockerError(
            "no command given; put it after '--', e.g. 'lab docker exec --lab L h1 -- docker ps'"
        )
    paths = DockerPaths.of_host(host_paths)
    if dockerd_pid(paths) is None:
        raise DockerError(
            f"dockerd of {host} in lab {name} is not running; "
            f"start it with 'ovs-overlayctl lab docker start --lab {name} {host}'"
        )
    command = [DOCKER, *argv[1:]] if argv[0] == "docker" else list(argv)
    netns.enter_namespace(naming.host_namespace(name, host))
    os.execvpe(command[0], command, {**cli_env(paths), "PATH": PATH})
