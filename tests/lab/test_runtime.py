"""A real container runtime drives the plugin: Debian 12's podman 4.3, CNI backend.

Two containers on two lab hosts (one conflist per host, each naming its host's agent
socket) ping each other over the overlay, and ``podman rm`` (CNI DEL) leaves no veth,
OVS port or address behind.  Podman runs private: its own root, runroot, tmp dir,
containers.conf and network config dir, all in a temporary directory.

What podman 4.3 needs, each found by running it on this machine:

- ``network_backend = "cni"`` with ``network_config_dir`` and ``cni_plugin_dirs`` private;
  ``default_network`` is one of ours: podman makes up an in-memory ``podman`` bridge
  network for any default network it finds no file for (with ``default_network =
  "none"`` it lists a bridge network called ``none``).
- ``cniVersion`` 1.0.0: the libcni inside podman 4.3 accepts a 1.1.0 conflist but not the
  1.1.0 ADD result (``unsupported CNI result version "1.1.0"``); it then runs DEL itself.
- ``runtime = "runc"``: Debian 12's crun 1.8.1 refuses every container on a hybrid cgroup
  host whose cgroup2 tree has any controller (here hugetlb): "cgroups in hybrid mode not
  supported, drop all controllers from cgroupv2", even with ``--cgroups=disabled``.  runc
  needs cgroups ("not compatible with NoCgroups"), so: ``cgroup_manager = "cgroupfs"``
  under a cgroup parent of this test's own, removed afterwards (podman leaves the parent
  and ``<parent>/conmon`` behind).
- ``--ulimit nofile=..,nproc=..`` (low ones): podman gives a root container RLIMIT_NOFILE
  1048576 (and RLIMIT_NPROC 1048576 once any ``--ulimit`` is given); raising a hard limit
  needs CAP_SYS_RESOURCE, which root lacks here ("setrlimit RLIMIT_NOFILE: Operation not
  permitted").
- ``--rootfs`` (a busybox-static tree) instead of an image: ``podman import`` and
  ``podman load`` write containers/image's blob cache to
  ``/var/lib/containers/cache`` for root, whatever ``--root`` says.
- ``lock_type = "file"`` (in the private tmp dir): the default is the machine-wide
  ``/dev/shm/libpod_lock``.  Storage driver vfs: it mounts nothing, so a failed run
  leaves no mount in the temporary directory.  ``events_logger = "none"``: no journald.
- ``rm -t 0`` and ``stop -t 0``: ``sleep`` runs as PID 1, which ignores SIGTERM, so podman
  would wait its 10 s stop timeout before SIGKILL.
- ``NetworkSettings.IPAddress`` is filled only on the default network; the address is
  read from ``NetworkSettings.Networks[<network>]``.
- Two machine-wide directories have no setting in podman 4.3: libcni's result cache
  ``/var/lib/cni`` and runc's state ``/run/runc`` (``--runtime-flag root=`` is not passed
  on to the ``podman container cleanup`` conmon runs, whose ``runc delete`` then misses
  the container).  Their entries are per container and go with ``podman rm``: the test
  checks that and removes the directories if it made them.
- In a chroot (``../shared/fresh-root.sh``), ``podman exec`` runs in the machine's real
  root file system, not the container's: there the container's first process is
  confined to the busybox tree but its mount namespace's root stays the machine's (as with
  runc's chroot fallback instead of ``pivot_root``), and a process that later joins that
  mount namespace (``exec``) gets the namespace's root.
  Seen with ``podman exec x ls /`` (the machine's directories) while
  ``/proc/<container pid>/root`` is the busybox tree.  The network namespace is the
  container's either way, which is what the test is about; but an exec'd ``ping`` may be
  iputils, and ``/sys`` may be another namespace's, so the test reads nothing from the
  container's files and accepts either ping's summary.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import tempfile

import pytest
from pyroute2 import IPRoute

from controller.netns import in_namespace
from ctl import cni_install
from lab import agent_proc, lab, naming, netns
from tests.helpers import host_veths, ovs_map, pod_ports, rows, running_lab, store_pods

pytestmark = pytest.mark.lab

BUSYBOX = "/bin/busybox"  # Debian's busybox-static: runs in an otherwise empty root
CNI_CACHE = "/var/lib/cni"  # libcni's cache, hard-coded in podman 4.3
RUNC_STATE = "/run/runc"  # runc's default --root
PING = ["ping", "-c", "3", "-i", "0.2", "-w", "10"]
# busybox prints "3 packets received", iputils "3 received" (see the chroot note above)
THREE_ANSWERS = re.compile(r"\b3 (?:packets )?received\b")
TOOLS = ("podman", "runc", "iptables-save", "ip6tables-save", "nft")


@pytest.fixture(scope="module")
def two_hosts():
    if os.geteuid() != 0:
        pytest.fail("this test creates network namespaces, OVS daemons and containers: run as root")
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing or not os.path.exists(BUSYBOX):
        pytest.fail(f"missing {missing or BUSYBOX}; ./quickstart.sh installs what this test needs")
    with running_lab(2) as name:
        yield name


class Podman:
    """podman with everything private: root, runroot, tmp dir, configuration, networks."""

    def __init__(self, base: str, lab_name: str):
        self.base = base
        self.lab = lab_name
        self.cgroup_parent = f"/{lab_name}-podman"
        self.rootfs = os.path.join(base, "rootfs")
        self.sandboxes: set[str] = set()  # network namespaces podman made for our containers
        self.processes: dict[int, bytes] = {}  # pid -> cmdline of our conmons and containers
        paths = lab.LabPaths(naming.DEFAULT_STATE_ROOT, lab_name)
        netdir = os.path.join(base, "net")
        os.makedirs(netdir)
        for host in ("h1", "h2"):
            conf = cni_install.conflist(
                naming.DEFAULT_NETWORK,
                agent_proc.socket_path(paths.host(host)),
                "1.0.0",
                self.network(host),
            )
            with open(os.path.join(netdir, f"{self.network(host)}.conflist"), "w") as f:
                json.dump(conf, f)
        self._write(
            "containers.conf",
            f"""\
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "none"
lock_type = "file"
tmp_dir = "{base}/tmp"

[network]
network_backend = "cni"
network_config_dir = "{netdir}"
cni_plugin_dirs = ["{paths.cni_bin}"]
default_network = "{self.network("h1")}"
""",
        )
        self._write(
            "storage.conf",
            f'[storage]\ndriver = "vfs"\ngraphroot = "{base}/root"\nrunroot = "{base}/runroot"\n',
        )
        self._write("registries.conf", "unqualified-search-registries = []\n")
        self.env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": base,
            "CONTAINERS_CONF": os.path.join(base, "containers.conf"),
            "CONTAINERS_STORAGE_CONF": os.path.join(base, "storage.conf"),
            "CONTAINERS_REGISTRIES_CONF": os.path.join(base, "registries.conf"),
        }
        self._build_rootfs()

    def _write(self, name: str, text: str) -> None:
        with open(os.path.join(self.base, name), "w") as f:
            f.write(text)

    def _build_rootfs(self) -> None:
        """/bin/busybox and a symlink per applet: all the containers need."""
        bindir = os.path.join(self.rootfs, "bin")
        os.makedirs(bindir)
        shutil.copy2(BUSYBOX, bindir)
        applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True)
        for applet in applets.stdout.split():
            if applet != "busybox":  # the list names busybox itself
                os.symlink("busybox", os.path.join(bindir, applet))

    def network(self, host: str) -> str:
        return f"{self.lab}-{host}"

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            ["podman", "--root", f"{self.base}/root", "--runroot", f"{self.base}/runroot", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check:
            assert proc.returncode == 0, f"podman {' '.join(args)}: {proc.stderr.strip()}"
        return proc

    def run(self, name: str, host: str) -> dict:
        """A container on ``host``'s network running ``sleep``; returns what it got."""
        self(
            "run",
            "-d",
            "--name",
            name,
            "--network",
            self.network(host),
            "--cgroup-parent",
            self.cgroup_parent,
            "--ulimit",
            f"nofile={_below_own_limit(resource.RLIMIT_NOFILE)}",
            "--ulimit",
            f"nproc={_below_own_limit(resource.RLIMIT_NPROC)}",
            # --rootfs is a switch: the first argument is the root, the options end there
            "--rootfs",
            self.rootfs,
            "sleep",
            "3600",
        )
        container = self.inspect(name, host)
        with open(f"/proc/{container['pid']}/cgroup") as f:  # ours to remove afterwards
            assert f"{self.cgroup_parent}/libpod-{container['id']}" in f.read()
        return container

    def inspect(self, name: str, host: str) -> dict:
        info = json.loads(self("inspect", name).stdout)[0]
        net = info["NetworkSettings"]
        if net["SandboxKey"]:
            self.sandboxes.add(net["SandboxKey"])
        for pid in (info["State"]["Pid"], info["State"]["ConmonPid"]):
            cmdline = _cmdline(pid) if pid else b""
            if cmdline:
                self.processes[pid] = cmdline
        return {
            "id": info["Id"],
            "pid": info["State"]["Pid"],
            "ip": net["Networks"][self.network(host)]["IPAddress"],
            "sandbox": net["SandboxKey"],
        }

    def close(self) -> list[str]:
        """Remove every container, what podman left of them, and the private directory;
        returns what could not be removed."""
        problems = []
        proc = self("rm", "--all", "--force", "--time", "0", check=False)
        if proc.returncode != 0:
            problems.append(f"podman rm: {proc.stderr.strip()}")
        for pid, cmdline in self.processes.items():
            if _cmdline(pid) == cmdline:  # still ours (not a reused pid): podman failed
                problems.append(f"process {pid} outlived podman rm; killed")
                os.kill(pid, signal.SIGKILL)
        for key in self.sandboxes:
            if os.path.dirname(key) == "/run/netns" and os.path.exists(key):
                problems.append(f"namespace {key} outlived podman rm; removed")
                netns.delete_namespace(os.path.basename(key))
        problems += _remove_cgroup(self.cgroup_parent)
        shutil.rmtree(self.base)
        return problems


def _below_own_limit(limit: int, want: int = 1024) -> str:
    """``want`` as soft and hard limit, or this process's hard limit if lower: a container
    may lower limits without privilege, never raise them."""
    hard = resource.getrlimit(limit)[1]
    value = want if hard == resource.RLIM_INFINITY else min(want, hard)
    return f"{value}:{value}"


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _remove_cgroup(parent: str) -> list[str]:
    """Remove ``parent`` and its empty children from every cgroup hierarchy."""
    problems = []
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split() for line in f]
    for fields in mounts:
        fstype = fields[fields.index("-") + 1]
        if fstype not in ("cgroup", "cgroup2"):
            continue
        top = fields[4] + parent
        for dirpath, _, _ in sorted(os.walk(top), key=lambda w: -len(w[0])):
            try:
                os.rmdir(dirpath)
            except OSError as exc:
                problems.append(f"cgroup {dirpath}: {exc}")
    return problems


@pytest.fixture(scope="module")
def podman(two_hosts):
    before = machine_state()
    made = [d for d in (CNI_CACHE, RUNC_STATE) if not os.path.exists(d)]
    pm = Podman(tempfile.mkdtemp(prefix=f"{two_hosts}-podman-"), two_hosts)
    try:
        yield pm
    finally:
        problems = pm.close()
        for d in made:  # the machine-wide directories podman made, once empty again
            for sub in (os.path.join(d, "results"), d):
                try:
                    if os.path.isdir(sub):
                        os.rmdir(sub)
                except OSError as exc:
                    problems.append(f"{sub}: {exc}")
        if machine_state() != before:
            problems.append("the root namespace or the system's container files changed")
        assert problems == []


def attachment(lab_name: str, host: str, container_id: str) -> dict | None:
    """The OVS port a host's agent made for a container (its Interface external_ids)."""
    for row in rows(lab_name, host, "Interface"):
        ids = ovs_map(row["external_ids"])
        if ids.get("ovs-overlay-container-id") == container_id:
            return {"port": row["name"], **ids}
    return None


def container_iflink(sandbox: str) -> int:
    """The ifindex of the peer of eth0 in the container's network namespace, asked over
    netlink in that namespace (IFLA_LINK).  Not /sys/class/net/eth0/iflink inside the
    container: sysfs shows the network namespace of whoever mounted it, and in a chroot
    (../shared/fresh-root.sh) the container's /sys was the chroot's, so it named another
    namespace's eth0."""
    with in_namespace(sandbox), IPRoute() as ipr:
        (eth0,) = ipr.get_links(ifname="eth0")
        return eth0.get("IFLA_LINK")


def host_ifindex(lab_name: str, host: str, ifname: str) -> int:
    with netns.open_namespace(naming.host_namespace(lab_name, host)) as ns:
        return netns.link_index(ns, ifname)


def leftovers(lab_name: str) -> dict:
    """Pod veths and ports on both hosts, addresses and endpoints in the cluster state."""
    allocations, endpoints = store_pods(lab_name)
    return {
        "veths": [host_veths(lab_name, h) for h in ("h1", "h2")],
        "ports": [pod_ports(lab_name, h) for h in ("h1", "h2")],
        "allocations": allocations,
        "endpoints": endpoints,
    }


NOTHING = {"veths": [set(), set()], "ports": [set(), set()], "allocations": {}, "endpoints": []}


def machine_state() -> dict:
    """What podman must leave alone: the root namespace's links, addresses, routes and
    firewall, and the system's container configuration (read only)."""
    with IPRoute() as ipr:
        state = {
            "links": sorted(link.get("IFLA_IFNAME") for link in ipr.get_links()),
            "addresses": sorted(a.get("IFA_ADDRESS") for a in ipr.get_addr()),
            "routes": sorted(str(r.get("RTA_DST")) for r in ipr.get_routes()),
        }
    for tool in (["iptables-save"], ["ip6tables-save"], ["nft", "list", "ruleset"]):
        out = subprocess.run(tool, capture_output=True, text=True, check=True).stdout
        state[tool[0]] = [line for line in out.splitlines() if not line.startswith("#")]
    for path in (
        "/etc/cni/net.d",
        "/etc/containers",
        "/var/lib/containers",
        "/var/cache/containers",
        "/run/containers",
    ):
        state[path] = sorted(os.listdir(path)) if os.path.isdir(path) else None
    state["/dev/shm/libpod_lock"] = os.path.exists("/dev/shm/libpod_lock")
    return state


def test_two_podman_containers_on_two_hosts_ping_each_other(two_hosts, podman):
    before = machine_state()
    c1 = podman.run("c1", "h1")
    c2 = podman.run("c2", "h2")

    # Each container's eth0 is the peer of a veth its own host's agent made and put on
    # that host's br-int, tagged with podman's container id; the other host has none.
    for c, name, host, other in ((c1, "c1", "h1", "h2"), (c2, "c2", "h2", "h1")):
        att = attachment(two_hosts, host, c["id"])
        assert att is not None, f"{host} has no port for {name}"
        assert att["ovs-overlay-ip"] == c["ip"] and c["ip"].startswith("100.64.")
        assert attachment(two_hosts, other, c["id"]) is None
        assert container_iflink(c["sandbox"]) == host_ifindex(two_hosts, host, att["port"])
    assert c1["ip"] != c2["ip"]

    # Across hosts: c1 (on h1) to c2 (on h2) and back, through the VXLAN tunnel.
    for src, dst in (("c1", c2["ip"]), ("c2", c1["ip"])):
        proc = podman("exec", src, *PING, dst, check=False)
        assert proc.returncode == 0 and THREE_ANSWERS.search(proc.stdout), proc.stdout

    # podman rm runs CNI DEL for each: no veth, port or address stays, podman's network
    # namespaces and libcni's cached results go.
    podman("rm", "--force", "--time", "0", "c1", "c2")
    assert leftovers(two_hosts) == NOTHING
    assert not any(os.path.exists(c["sandbox"]) for c in (c1, c2))
    cached = os.listdir(f"{CNI_CACHE}/results") if os.path.isdir(f"{CNI_CACHE}/results") else []
    assert not [f for f in cached if c1["id"] in f or c2["id"] in f]

    # Podman made no bridge (cni-podman0), address, route or firewall rule in the root
    # namespace, and left the system's container configuration alone.
    after = machine_state()
    assert "cni-podman0" not in after["links"]
    assert after == before


def test_stop_detaches_and_start_attaches_again(two_hosts, podman):
    c = podman.run("c3", "h2")
    assert attachment(two_hosts, "h2", c["id"]) is not None
    podman("stop", "--time", "0", "c3")  # CNI DEL; podman drops the network namespace
    assert attachment(two_hosts, "h2", c["id"]) is None
    assert not os.path.exists(c["sandbox"])
    assert leftovers(two_hosts)["allocations"] == {}
    podman("start", "c3")  # a new namespace, CNI ADD again
    again = podman.inspect("c3", "h2")
    assert again["sandbox"] != c["sandbox"]
    att = attachment(two_hosts, "h2", c["id"])
    assert att is not None and att["ovs-overlay-ip"] == again["ip"]
    gateway = str(ipaddress.ip_network(naming.DEFAULT_CIDR)[1])  # on h2 itself
    proc = podman("exec", "c3", *PING, gateway, check=False)
    assert proc.returncode == 0, proc.stdout
    podman("rm", "--force", "--time", "0", "c3")
    assert leftovers(two_hosts) == NOTHING
