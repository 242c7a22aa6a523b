"""containerd with its CRI plugin on a lab host (``lab containerd start|stop``).

Debian 12's containerd 1.6 runs in the host's network namespace with everything of its
own under ``<lab>/hosts/<h>/containerd/``: root, state, gRPC and ttrpc sockets, config,
runc's state, the CNI conflist (naming this host's agent) and plugin directory, its log.
It drives ovs-overlay as kubelet's runtime would: CRI RunPodSandbox makes a network
namespace and runs CNI ADD, StopPodSandbox DEL, RemovePodSandbox DEL again without a
netns.  The sandbox image is built locally from busybox-static (lab/pause_image.py) and
imported with ``ctr``: the lab has no registry.

What containerd needs here, each found by running it on this machine:

- Only the network namespace is entered (``setns``), never ``ip netns exec``: that one
  also unshares the mount namespace (to remount /sys), and the bind mounts containerd makes
  for its pods' network namespaces then exist only in that private mount namespace.  The
  plugin passes such a path to the agent, which runs in the machine's mount namespace and
  finds a plain empty file ("is not a namespace file"; seen with the first sandbox).
- ``restrict_oom_score_adj = true``: CRI gives a sandbox oom_score_adj -998, and lowering
  it needs CAP_SYS_RESOURCE, which root lacks here; runc's init then fails before it
  reports its PID ("can't get final child's PID from pipe: EOF").  With the option the
  sandbox keeps containerd's own score (the error went with it, and came back without).
- ``netns_mounts_under_state_dir = true``: otherwise the CRI plugin mounts its pods'
  namespaces in the machine-wide ``/var/run/netns``.
- runc's state (the runc runtime's ``Root``) and the ``opt`` plugin's directory are set
  private: their defaults are ``/run/containerd/runc`` and ``/opt/containerd``.  With these
  set, containerd 1.6 writes nothing outside this directory (checked with find over /run,
  /var/lib, /opt after a sandbox's life).
- The legacy ``io.containerd.runtime.v1.linux`` plugin cannot be disabled: the tasks
  service (and with it CRI) will not load without a runtime v1 ("no plugins registered for
  io.containerd.runtime.v1").
- Snapshotter ``native``: plain copies and bind mounts, so it works on any file system
  under the state directory (overlayfs cannot stack on an overlayfs root, as in a
  container).  A cgroupfs driver (``SystemdCgroup = false``; no systemd here), under the
  cgroup parent the CRI client names.
- CRI's loopback setup execs the reference ``loopback`` plugin from the same single
  ``bin_dir`` as ours, so that directory holds ovs-overlay and a link to Debian's loopback.

Two machine-wide directories have no setting in containerd 1.6: its shims' sockets go to
``/run/containerd/s/<sha256 of our socket, namespace and sandbox id>`` (``socketRoot`` is a
constant in runtime/v2/shim), and go-cni leaves libcni's result cache at ``/var/lib/cni``.
Their entries are per sandbox and go with it (a shim removes its socket when it exits,
DEL removes the cache entry); ``remove`` deletes those of this containerd's sandboxes, and
each directory that a lab's containerd made (recorded in ``made-dirs`` at start) once it
is empty.  Running containerd in a mount namespace of its own with these private does not
work: the bind mounts of the pods' network namespaces would then be invisible to the
agent, which opens them, as it would be to a node's kubelet tools.

Stopping containerd (``lab containerd stop``) leaves its shims and pods running, as a
restart of containerd on a node does; ``remove`` (``lab down``) also ends the pods, by the
PIDs of the shims this containerd started (found by their ``-address`` argument) and of
their children, unmounts what containerd mounted under its directory and removes the pods'
cgroups.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass

from ctl import cni_install
from lab import agent_proc, naming, netns, ovs_host, pause_image
from lab.ovs_host import OvsHostPaths

CONTAINERD = "containerd"
SHIM = "containerd-shim-runc-v2"
CRI_NAMESPACE = "k8s.io"  # containerd's namespace for CRI's containers and images
LOOPBACK_PLUGIN = "/usr/lib/cni/loopback"  # Debian's containernetworking-plugins
READY_TIMEOUT = 30.0
READY_POLL = 0.1
MNT_DETACH = 2
# Hard-coded in containerd 1.6 (see the module docstring), parents first.
MACHINE_DIRS = ("/run/containerd", "/run/containerd/s", "/var/lib/cni", "/var/lib/cni/results")
SHIM_SOCKETS = "/run/containerd/s"
CNI_CACHE = "/var/lib/cni/results"


class ContainerdError(RuntimeError):
    """containerd cannot be started or stopped on a lab host; the message says what to do."""


@dataclass(frozen=True)
class ContainerdPaths:
    """Where one lab host's containerd keeps everything."""

    root: str

    @classmethod
    def of_host(cls, host: OvsHostPaths) -> ContainerdPaths:
        return cls(os.path.join(host.root, "containerd"))

    @property
    def config(self) -> str:
        return os.path.join(self.root, "config.toml")

    @property
    def socket(self) -> str:
        return os.path.join(self.root, "run", "containerd.sock")

    @property
    def pidfile(self) -> str:
        return os.path.join(self.root, "run", "containerd.pid")

    @property
    def log(self) -> str:
        return os.path.join(self.root, "containerd.log")

    @property
    def cni_bin(self) -> str:
        return os.path.join(self.root, "cni", "bin")

    @property
    def cni_conf(self) -> str:
        return os.path.join(self.root, "cni", "net.d")

    @property
    def pod_logs(self) -> str:
        return os.path.join(self.root, "pod-logs")

    @property
    def made_dirs(self) -> str:
        return os.path.join(self.root, "made-dirs")

    @property
    def image(self) -> str:
        return os.path.join(self.root, "pause.tar")

    def dir(self, name: str) -> str:
        return os.path.join(self.root, name)


def config_toml(paths: ContainerdPaths) -> str:
    """containerd's configuration (version 2) for one lab host."""
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""\
# containerd for one ovs-overlay lab host, written by lab/containerd.py: everything private.
version = 2
root = "{paths.dir("root")}"
state = "{paths.dir("state")}"
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.internal.v1.tracing",
  "io.containerd.tracing.processor.v1.otlp",
]

[grpc]
  address = "{paths.socket}"

[ttrpc]
  address = "{paths.socket}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{paths.dir("opt")}"

[{cri}]
  sandbox_image = "{pause_image.IMAGE_NAME}"
  netns_mounts_under_state_dir = true
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  systemd_cgroup = false

  [{cri}.cni]
    bin_dir = "{paths.cni_bin}"
    conf_dir = "{paths.cni_conf}"
    max_conf_num = 1

  [{cri}.containerd]
    snapshotter = "native"
    default_runtime_name = "runc"

    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{paths.dir("runc")}"
"""


def containerd_pid(paths: ContainerdPaths) -> int | None:
    """The PID of this host's containerd if it runs (the one started with its config)."""
    return ovs_host.pid_from_pidfile(paths.pidfile, paths.config)


def start(host: OvsHostPaths, namespace: str) -> int:
    """Start containerd in ``namespace`` (a lab host's), wait until it answers, import the
    sandbox image; returns its PID.  Its state from an earlier run is kept (a restart)."""
    if shutil.which(CONTAINERD) is None or shutil.which("ctr") is None:
        raise ContainerdError("containerd is not installed; ./quickstart.sh installs it")
    if not os.path.exists(agent_proc.config_path(host)):
        raise ContainerdError(
            f"host {os.path.basename(host.root)} has no agent for containerd's CNI plugin "
            "to call; build the lab with its agents"
        )
    paths = ContainerdPaths.of_host(host)
    if containerd_pid(paths) is not None:
        raise ContainerdError(
            f"containerd of {os.path.basename(host.root)} is running already (pid "
            f"{containerd_pid(paths)}); stop it first"
        )
    for d in (os.path.dirname(paths.socket), paths.pod_logs, paths.cni_conf):
        os.makedirs(d, exist_ok=True)
    made = set(read_made_dirs(paths)) | {d for d in MACHINE_DIRS if not os.path.exists(d)}
    with open(paths.made_dirs, "w") as f:
        json.dump(sorted(made), f)
    cni_install.install(
        paths.cni_bin, paths.cni_conf, naming.DEFAULT_NETWORK, agent_proc.socket_path(host)
    )
    loopback = os.path.join(paths.cni_bin, "loopback")
    if not os.path.lexists(loopback):
        os.symlink(LOOPBACK_PLUGIN, loopback)
    with open(paths.config, "w") as f:
        f.write(config_toml(paths))
    with open(paths.log, "ab") as log:
        proc = subprocess.Popen(
            [CONTAINERD, "--config", paths.config],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            preexec_fn=lambda: netns.enter_namespace(namespace),
            start_new_session=True,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        )
    with open(paths.pidfile, "w") as f:
        f.write(f"{proc.pid}\n")
    try:
        _wait_ready(paths, proc)
        pause_image.write_image(paths.image)
        _ctr(paths, "images", "import", "--snapshotter", "native", paths.image)
    except BaseException:
        ovs_host.terminate(proc.pid)
        proc.wait()
        raise
    return proc.pid


def _ctr(paths: ContainerdPaths, *args: str) -> str:
    result = subprocess.run(
        ["ctr", "--address", paths.socket, "--namespace", CRI_NAMESPACE, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if result.returncode != 0:
        raise ContainerdError(
            f"ctr {' '.join(args)} failed: {result.stderr.strip()}; see {paths.log}"
        )
    return result.stdout


def _wait_ready(paths: ContainerdPaths, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ContainerdError(
                f"containerd exited with {proc.returncode}; its log ends: {_log_tail(paths)}"
            )
        if os.path.exists(paths.socket):
            probe = subprocess.run(
                ["ctr", "--address", paths.socket, "--timeout", "2s", "version"],
                capture_output=True,
            )
            if probe.returncode == 0:
                return
        time.sleep(READY_POLL)
    raise ContainerdError(
        f"containerd did not answer in {READY_TIMEOUT:.0f}s; its log ends: {_log_tail(paths)}"
    )


def _log_tail(paths: ContainerdPaths, lines: int = 3) -> str:
    try:
        with open(paths.log, errors="replace") as f:
            return " | ".join(line.strip()[:300] for line in f.readlines()[-lines:])
    except OSError:
        return "(no log)"


def stop(host: OvsHostPaths, sig: int = signal.SIGTERM) -> int | None:
    """Stop this host's containerd (its shims and pods keep running, as in a restart on a
    node); returns its PID, None if it was not running."""
    paths = ContainerdPaths.of_host(host)
    pid = containerd_pid(paths)
    if pid is not None:
        ovs_host.terminate(pid, sig)
    return pid


def remove(host: OvsHostPaths) -> list[str]:
    """Everything this host's containerd made: containerd, its shims and their pods (by
    PID), the mounts under its directory, the pods' cgroups, the directory.  Returns what
    it removed, for ``lab down``."""
    paths = ContainerdPaths.of_host(host)
    if not os.path.isdir(paths.root):
        return []
    removed = []
    pid = stop(host)
    if pid is not None:
        removed.append(f"process containerd pid {pid}")
    sandboxes = set()
    for shim in _shims(paths):
        argv = cmdline(shim)
        if "-id" in argv:
            sandboxes.add(argv[argv.index("-id") + 1])
        pods = children(shim)
        cgroups = [c for child in pods for c in _own_cgroups(child)]
        for child in pods:
            ovs_host.terminate(child, signal.SIGKILL)
            removed.append(f"process pid {child} (a pod of containerd shim {shim})")
        ovs_host.terminate(shim, signal.SIGKILL)
        removed.append(f"process containerd shim pid {shim}")
        for cgroup in cgroups:
            try:
                os.rmdir(cgroup)
                removed.append(f"cgroup {cgroup}")
            except FileNotFoundError:
                pass  # runc removed it
    sandboxes_dir = os.path.join(paths.dir("root"), "io.containerd.grpc.v1.cri", "sandboxes")
    if os.path.isdir(sandboxes_dir):
        sandboxes.update(os.listdir(sandboxes_dir))
    removed += _remove_machine_entries(paths, sandboxes)
    for mount in mounts_under(paths.root):
        unmount(mount)
        removed.append(f"mount {mount}")
    shutil.rmtree(paths.root)
    removed.append(f"state {paths.root}")
    return removed


def read_made_dirs(paths: ContainerdPaths) -> list[str]:
    """The machine-wide directories that did not exist before this containerd started."""
    try:
        with open(paths.made_dirs) as f:
            return [d for d in json.load(f) if d in MACHINE_DIRS]
    except (OSError, ValueError):
        return []


def remove_made_dirs(made: set[str]) -> list[str]:
    """Remove those of ``made`` (from ``read_made_dirs``) that are empty, children first."""
    removed = []
    for d in sorted(made, key=len, reverse=True):
        try:
            os.rmdir(d)
            removed.append(f"directory {d}")
        except OSError:
            pass  # gone already, or another containerd still uses it
    return removed


def _remove_machine_entries(paths: ContainerdPaths, sandboxes: set[str]) -> list[str]:
    """This containerd's sandboxes' shim sockets and libcni cache entries."""
    removed = []
    for sandbox in sorted(sandboxes):
        key = os.path.join(paths.socket, CRI_NAMESPACE, sandbox)
        sock = os.path.join(SHIM_SOCKETS, hashlib.sha256(key.encode()).hexdigest())
        cached = os.listdir(CNI_CACHE) if os.path.isdir(CNI_CACHE) else []
        for path in [sock] + [os.path.join(CNI_CACHE, c) for c in cached if f"-{sandbox}-" in c]:
            try:
                os.unlink(path)
                removed.append(f"file {path}")
            except FileNotFoundError:
                pass
    return removed


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0")]
    except OSError:
        return []


def _shims(paths: ContainerdPaths) -> list[int]:
    """The shims this host's containerd started: ``-address`` names its socket."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        argv = cmdline(int(entry))
        if argv and os.path.basename(argv[0]) == SHIM and "-address" in argv:
            at = argv.index("-address")
            if argv[at + 1 : at + 2] == [paths.socket]:
                found.append(int(entry))
    return found


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (a shim's containers: it is their reaper)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            out.append(int(entry))
    return out


def _own_cgroups(pid: int) -> list[str]:
    """The cgroup directories runc made for a container: in every hierarchy, the one
    ``pid`` is in, if its name is a container id (64 hex digits)."""
    mounts = cgroup_mounts()
    out = []
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        leaf = os.path.basename(path)
        if len(leaf) != 64 or not all(c in "0123456789abcdef" for c in leaf):
            continue
        names = sorted(c.removeprefix("name=") for c in controllers.split(","))
        key = ",".join(names) if controllers else "unified"
        if key in mounts:
            out.append(mounts[key] + path)
    return out


def cgroup_mounts() -> dict[str, str]:
    """Hierarchy (controller list, ``systemd``, or ``unified`` for cgroup2) -> mount point."""
    out = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            fstype, options = fields[sep + 1], fields[sep + 3].split(",")
            if fstype == "cgroup2":
                out.setdefault("unified", fields[4])
            elif fstype == "cgroup":
                names = [o for o in options if o not in ("rw", "ro") and "=" not in o]
                names += [o.removeprefix("name=") for o in options if o.startswith("name=")]
                out.setdefault(",".join(sorted(names)), fields[4])
    return out


def unmount(point: str) -> None:
    """Detach the mount at ``point`` (lazily: its last user may still hold it)."""
    if ctypes.CDLL(None, use_errno=True).umount2(point.encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        raise ContainerdError(f"could not unmount {point}: {os.strerror(err)}")


def mounts_under(root: str) -> list[str]:
    """Mount points under ``root``, deepest first."""
    prefix = root.rstrip("/") + "/"
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].encode().decode("unicode_escape")
            if point.startswith(prefix):
                points.append(point)
    return sorted(set(points), key=lambda p: -p.count("/"))


ACTIONS = ("start", "stop", "restart")


def control(name: str, host: str, action: str, state_root: str = naming.DEFAULT_STATE_ROOT) -> None:
    """``lab containerd start|stop|restart``: one lab host's containerd."""
    from lab.lab import LabError, LabPaths, read_manifest  # lab.lab imports this module

    naming.validate_lab_name(name)
    index = naming.host_index(host)
    if action not in ACTIONS:
        raise ValueError(f"containerd action {action!r} is not one of {', '.join(ACTIONS)}")
    paths = LabPaths(state_root, name)
    if index > int(read_manifest(paths).get("hosts", 0)):
        raise LabError(f"lab {name} has no host {host}; see 'ovs-overlayctl lab status'")
    host_paths = paths.host(host)
    if action in ("stop", "restart") and stop(host_paths) is None and action == "stop":
        raise LabError(f"containerd of {host} in lab {name} is not running; nothing to stop")
    if action in ("start", "restart"):
        start(host_paths, naming.host_namespace(name, host))
