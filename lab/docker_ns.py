"""Launcher: run dockerd in a lab host's network namespace and a mount namespace of its own.

``python -m lab.docker_ns --netns NS --docker-dir D --plugin-dir P -- DOCKERD ARGS...``
enters the host's network namespace, unshares the mount namespace, arranges the view below
and execs dockerd (so the PID the lab started is dockerd's).  It is a process of its own,
not a ``preexec_fn``: mounting through ctypes between fork and exec is unsafe in a
multithreaded caller (a test holding gRPC channels).

dockerd 20.10 writes to machine-wide paths that no flag or config key moves, each found by
running it here (lab/docker.py says what it checks):

- ``/run/docker/plugins``: where it discovers plugins' sockets (a constant in
  pkg/plugins; the spec directories ``/etc/docker/plugins`` and ``/usr/lib/docker/plugins``
  are read too, and hold nothing here);
- ``/run/containerd/s/<hash>``: the sockets of the shims its containerd child starts (a
  constant in containerd 1.6's runtime/v2/shim, as for the lab's own containerd);
- ``/etc/docker/key.json``: its identity key (the flag for it is gone from 20.10's CLI);
- ``/opt/containerd``: its containerd child's ``opt`` plugin directory (dockerd writes
  that containerd's config and sets no path for it);
- ``/proc/sys/kernel/keys/root_max{keys,bytes}``: raised machine-wide (not per network
  namespace) to 1000000/25000000 at start when lower.

So in this mount namespace ``/run`` is a fresh tmpfs holding only this host's docker
directory, its plugin directory (at ``/run/docker/plugins``) and its ``run-containerd``
(at ``/run/containerd``, kept in the lab so a dockerd started again finds the shims of
one that was killed); ``/etc/docker`` and ``/opt`` are bind mounts of directories in the
lab; ``/proc/sys/kernel/keys`` is read-only (dockerd logs a warning and goes on).  The
mounts live as long as the namespace's last process (dockerd, its containerd, the shims and
containers) and none of them is visible outside it.  ``/sys`` is the machine's, as
for the lab's other daemons: dockerd only reads it.  (libnetwork's sockets and network
namespaces go under the exec root in 20.10.)  One machine-wide effect is left: dockerd's
containerd child asks ``modprobe aufs`` as it loads its aufs snapshotter (its config is
dockerd's, with no way to disable a plugin); Debian 12's kernels have no aufs, so it fails
and loads nothing.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
NETNS_DIR = "/run/netns"  # where ``ip netns`` and the lab's namespaces are named

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = ""):
    _check(
        _libc.mount(
            source.encode() if source else None,
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {source} on {target}",
    )


def _bind_fd(fd: int, target: str) -> None:
    """Bind the directory open at ``fd`` on ``target``: through /proc/self/fd, it reaches a
    directory that the tmpfs on /run hides by its path."""
    os.makedirs(target, exist_ok=True)
    _mount(f"/proc/self/fd/{fd}", target, None, MS_BIND)


def enter(netns: str, docker_dir: str, plugin_dir: str) -> None:
    """Enter network namespace ``netns`` and a private mount namespace set up as the module
    docstring says."""
    net_fd = os.open(os.path.join(NETNS_DIR, netns), os.O_RDONLY | os.O_CLOEXEC)
    _check(_libc.setns(net_fd, CLONE_NEWNET), f"setns into network namespace {netns}")
    os.close(net_fd)
    _check(_libc.unshare(CLONE_NEWNS), "unshare the mount namespace")
    # Nothing mounted here propagates back to the machine's namespace.
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    # Opened in the new namespace (a bind mount's source must be in the caller's), before
    # the tmpfs hides them.
    docker_fd, plugin_fd, containerd_fd = (
        os.open(d, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        for d in (docker_dir, plugin_dir, os.path.join(docker_dir, "run-containerd"))
    )
    _mount(os.path.join(docker_dir, "etc"), "/etc/docker", None, MS_BIND)
    _mount(os.path.join(docker_dir, "opt"), "/opt", None, MS_BIND)
    keys = "/proc/sys/kernel/keys"
    _mount(keys, keys, None, MS_BIND)
    _mount(None, keys, None, MS_BIND | MS_REMOUNT | MS_RDONLY)
    _mount("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=755")
    _bind_fd(docker_fd, docker_dir)
    _bind_fd(plugin_fd, "/run/docker/plugins")
    _bind_fd(containerd_fd, "/run/containerd")
    for fd in (docker_fd, plugin_fd, containerd_fd):
        os.close(fd)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lab.docker_ns")
    parser.add_argument("--netns", required=True)
    parser.add_argument("--docker-dir", required=True)
    parser.add_argument("--plugin-dir", required=True)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command to run; put dockerd and its arguments after '--'")
    enter(args.netns, args.docker_dir, args.plugin_dir)
    os.execv(command[0], command)


if __name__ == "__main__":
    try:
        main()
    except OSError as e:
        sys.exit(f"lab.docker_ns: {e}")
