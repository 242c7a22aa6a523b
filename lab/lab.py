"""Lab lifecycle: up, down, status, list, exec.

A lab ``L`` with N hosts is::

    ns L-underlay: Linux bridge ul0, veth h<i> per host
    ns L-h<i>:     eth0 (peer of h<i>) in br-phy (netdev, 198.18.0.<i>/16 on br-phy)
                   br-int (netdev, secure, OpenFlow13, controller tcp:127.0.0.1:6653,
                   named tables, flow-based tunnel port)
                   its own ovsdb-server + ovs-vswitchd
    ns L-etcd<k>:  (``--store etcd``) eth0 at 198.18.1.<k>/16, one etcd member
                   (lab/etcd_members.py)
    ns L-ext:      eth0 at 198.18.255.254/16 on the underlay: the outside world pods reach
                   through their host's egress SNAT, and the operator's vantage point
                   (the CLI and tests reach an etcd lab's store from it)

The cluster state is a SQLite file in the state dir (default) or the lab's etcd; the
manifest (lab.json) records which, and ``open_lab_cluster`` opens it from anywhere.

The underlay IP sits on br-phy, the OVS bridge that owns the uplink, because
userspace tunnelling routes encapsulated packets out of an OVS bridge (OVS's
userspace-tunneling doc); an IP on eth0 itself would never see tunnel traffic.

The state directory is claimed with an exclusive mkdir before anything else is
made, so two ``lab up`` of one name cannot both proceed.  ``down`` works from
names alone (state dir, ``L-*`` namespaces, pidfiles), so it cleans a
half-built or crashed lab just as well as a healthy one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from ctl import cni_install
from lab import agent_proc, containerd, docker, naming, netns, ovs_host
from lab import etcd_members as etcd
from lab.progress import QUIET, Progress
from openflow.tables import table_names
from ovsdb.client import IntegrationBridge, OvsdbClient
from ovsdb.datapath import NETDEV, DatapathChoice
from ovsdb.tunnel import TunnelPort
from store import ClusterState, open_cluster

LOG = logging.getLogger(__name__)

CONTROLLER_PORT = 6653
MANIFEST = "lab.json"
STORES = ("sqlite", "etcd")
# Seconds a lab host stays in the store after its agent stops renewing its lease: short,
# so fault tests see a dead host go quickly (production default: controller/config.py).
DEFAULT_HOST_TTL = 6
LAB_DATAPATH = DatapathChoice(
    NETDEV, "lab hosts tunnel through br-phy, which needs the userspace datapath"
)


class LabError(RuntimeError):
    """A lab operation that cannot proceed, with a message that says what to do."""


@dataclass(frozen=True)
class LabPaths:
    state_root: str
    name: str

    @property
    def root(self) -> str:
        return os.path.join(self.state_root, self.name)

    @property
    def manifest(self) -> str:
        return os.path.join(self.root, MANIFEST)

    @property
    def cni_bin(self) -> str:
        return os.path.join(self.root, "cni", "bin")

    @property
    def sqlite_url(self) -> str:
        return "sqlite:///" + os.path.join(self.root, "cluster.db")

    @property
    def store_url(self) -> str:
        """The lab's store as its manifest records it (a lab from before etcd: SQLite).
        An etcd URL is reachable only from the lab's namespaces: see ``open_lab_cluster``."""
        return read_manifest(self).get("store", {}).get("url") or self.sqlite_url

    def host(self, host: str) -> ovs_host.OvsHostPaths:
        return ovs_host.OvsHostPaths(os.path.join(self.root, "hosts", host))


@dataclass(frozen=True)
class HostStatus:
    name: str
    namespace: str
    underlay_ip: str
    namespace_present: bool
    daemons: dict[str, int | None]
    bridges: dict[str, str]  # bridge -> datapath_type


@dataclass(frozen=True)
class EtcdMemberStatus:
    name: str
    namespace: str
    ip: str
    pid: int | None


@dataclass(frozen=True)
class LabStatus:
    name: str
    state_dir: str
    tunnel_type: str
    hosts: tuple[HostStatus, ...]
    store_url: str = ""
    etcd: tuple[EtcdMemberStatus, ...] = ()


def up(
    name: str,
    hosts: int,
    state_root: str = naming.DEFAULT_STATE_ROOT,
    tunnel_type: str = "vxlan",
    agents: bool = True,
    store: str = "sqlite",
    etcd_members: int | None = None,
    host_ttl: int = DEFAULT_HOST_TTL,
    underlay_mtu: int = naming.UNDERLAY_MTU,
    progress: Progress = QUIET,
) -> LabStatus:
    """Build lab ``name`` with ``hosts`` hosts; on any failure, remove what was made.

    ``agents=False`` leaves out the agents (and the cluster state): hosts with
    bare OVS, for testing the OVSDB layer on its own.  ``store="etcd"`` runs
    ``etcd_members`` etcd members and waits until they are healthy before any agent
    starts (default 1); ``host_ttl`` is the agents' ``host_ttl`` (seconds);
    ``underlay_mtu`` is every underlay link's MTU (the agents read it from br-phy).
    ``progress`` gets a line per host and step as each is done (lab/progress.py).
    """
    naming.validate_lab_name(name)
    naming.validate_host_count(hosts)
    TunnelPort(tunnel_type=tunnel_type)  # validates the type
    if store not in STORES:
        raise ValueError(f"store {store!r} is not one of {', '.join(STORES)}; pick one")
    if etcd_members is not None and store != "etcd":
        raise ValueError(
            "--etcd-members applies to --store etcd only; add --store etcd or drop --etcd-members"
        )
    etcd_members = naming.validate_etcd_members(1 if etcd_members is None else etcd_members)
    if isinstance(host_ttl, bool) or not isinstance(host_ttl, int) or host_ttl < 1:
        raise ValueError(f"host TTL {host_ttl!r} is not a whole number of seconds >= 1")
    naming.validate_underlay_mtu(underlay_mtu)
    paths = LabPaths(state_root, name)
    taken = _lab_namespaces(name)
    if taken:
        raise LabError(
            f"lab {name} already exists (namespaces {', '.join(taken)}); "
            f"run 'ovs-overlayctl lab down --name {name}' first or pick another name"
        )
    os.makedirs(state_root, exist_ok=True)
    try:
        os.mkdir(paths.root)
    except FileExistsError:
        raise LabError(
            f"lab {name} already exists (state in {paths.root}); "
            f"run 'ovs-overlayctl lab down --name {name}' first or pick another name"
        ) from None
    try:
        store_record = {"kind": store, "url": paths.sqlite_url}
        if store == "etcd":
            store_record = {
                "kind": "etcd",
                "members": etcd_members,
                "url": naming.etcd_url(etcd_members),
            }
        write_manifest(
            paths,
            {
                "name": name,
                "hosts": hosts,
                "tunnel_type": tunnel_type,
                "store": store_record,
                "host_ttl": host_ttl,
                "underlay_mtu": underlay_mtu,
            },
        )
        underlay = naming.underlay_namespace(name)
        with progress.timed(f"lab {name}: underlay {underlay} up"):
            netns.create_namespace(underlay)
            netns.create_bridge(underlay, naming.UNDERLAY_BRIDGE)
        with progress.timed(f"lab {name}: outside {naming.ext_namespace(name)} up"):
            build_ext(name, underlay_mtu)
        etcd_procs = {}
        if store == "etcd":
            # The members start first and elect a leader while the hosts are built.
            for k in range(1, etcd_members + 1):
                with progress.timed(f"{naming.etcd_member_name(k)}: started"):
                    etcd.build_member_namespace(name, k, underlay_mtu)
                    etcd_procs[k] = etcd.start(name, paths.root, k, etcd_members)
        for index in range(1, hosts + 1):
            with progress.timed(f"{naming.host_name(index)}: OVS up"):
                build_host(paths, index, tunnel_type, underlay_mtu)
        if etcd_procs:
            with progress.timed(f"etcd: {len(etcd_procs)} member(s) healthy"):
                etcd.wait_healthy(name, paths.root, list(etcd_procs), etcd_procs)
        if agents:
            _seed_cluster(paths)
            started = progress.now()
            procs = [start_agent(paths, index) for index in range(1, hosts + 1)]
            for index, proc in enumerate(procs, start=1):
                agent_proc.wait_ready(paths.host(naming.host_name(index)), proc)
                progress.since(started, f"{naming.host_name(index)}: agent ready")
    except BaseException:
        LOG.error("lab %s: build failed, tearing down what was made", name)
        down(name, state_root)
        raise
    return status(name, state_root)


def write_manifest(paths: LabPaths, manifest: dict) -> None:
    tmp = paths.manifest + ".tmp"
    with open(tmp, "w") as f:
        json.dump(manifest, f)
    os.replace(tmp, paths.manifest)


def read_manifest(paths: LabPaths) -> dict:
    try:
        with open(paths.manifest) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def build_ext(name: str, underlay_mtu: int = naming.UNDERLAY_MTU) -> None:
    """``L-ext``: the outside world on the underlay, at 198.18.255.254/16, with no route
    into any overlay (tests add one to show it does not help)."""
    ns = naming.ext_namespace(name)
    netns.create_namespace(ns)
    netns.create_uplink(
        naming.underlay_namespace(name),
        naming.EXT_PORT,
        naming.UNDERLAY_BRIDGE,
        ns,
        naming.HOST_UPLINK,
        underlay_mtu,
    )
    netns.set_up(ns, "lo")
    netns.add_address(ns, naming.HOST_UPLINK, naming.EXT_IP, naming.underlay_prefixlen())


def build_host(
    paths: LabPaths, index: int, tunnel_type: str, underlay_mtu: int = naming.UNDERLAY_MTU
) -> None:
    host = naming.host_name(index)
    ns = naming.host_namespace(paths.name, host)
    underlay = naming.underlay_namespace(paths.name)
    port = naming.underlay_port(host)

    netns.create_namespace(ns)
    netns.create_uplink(
        underlay, port, naming.UNDERLAY_BRIDGE, ns, naming.HOST_UPLINK, underlay_mtu
    )
    # eth0 belongs to br-phy, but the host kernel still sees its frames: without this it
    # answers ARP for br-phy's address with eth0's MAC, and a sender that believes it
    # reaches eth0, where tunnel termination never sees the packet (found with a VXLAN
    # packet crafted from a peer).  eth0 also stays silent on IPv6.
    netns.set_sysctl(ns, f"net.ipv4.conf.{naming.HOST_UPLINK}.arp_ignore", "1")
    netns.set_sysctl(ns, f"net.ipv6.conf.{naming.HOST_UPLINK}.disable_ipv6", "1")
    # The host forwards its pods' egress (the agent's nftables table SNATs it), as a
    # Kubernetes node does.
    netns.set_sysctl(ns, "net.ipv4.ip_forward", "1")

    host_paths = paths.host(host)
    ovs_host.start(host_paths, ns)
    with OvsdbClient(host_paths.db_sock) as client:
        # br-phy: a plain learning switch that owns the uplink and carries the host's IP.
        client.ensure_bridge(naming.PHYS_BRIDGE, NETDEV)
        client.ensure_port(naming.PHYS_BRIDGE, naming.HOST_UPLINK)
        client.ensure_integration_bridge(
            IntegrationBridge(
                name=naming.INTEGRATION_BRIDGE,
                datapath=LAB_DATAPATH,
                controller_port=CONTROLLER_PORT,
                table_names=table_names(),
            )
        )
        client.ensure_tunnel_port(naming.INTEGRATION_BRIDGE, TunnelPort(tunnel_type=tunnel_type))
    _configure_underlay_ip(ns, index, underlay_mtu)


def _configure_underlay_ip(ns: str, index: int, underlay_mtu: int) -> None:
    netns.set_up(ns, naming.PHYS_BRIDGE, mtu=underlay_mtu)
    netns.add_address(
        ns, naming.PHYS_BRIDGE, naming.underlay_ip(index), naming.underlay_prefixlen()
    )


def _seed_cluster(paths: LabPaths) -> None:
    """The lab's shared cluster state, with the ``default`` network every lab starts with,
    and the CNI plugin installed where the lab's pods are attached from."""
    cni_install.install(paths.cni_bin, None, naming.DEFAULT_NETWORK, "")
    with open_lab_cluster(paths.name, paths.state_root) as cluster:
        cluster.create_network(
            naming.DEFAULT_NETWORK, vni=naming.DEFAULT_VNI, cidr=naming.DEFAULT_CIDR, gateway=True
        )


@contextmanager
def open_lab_cluster(
    name: str, state_root: str = naming.DEFAULT_STATE_ROOT
) -> Iterator[ClusterState]:
    """The lab's cluster state, open for the block, from the root namespace.

    A SQLite lab's store is a file: opened as is.  An etcd lab's members are reachable only
    on the lab's underlay, and the root namespace gets no address or route there, so this
    thread enters the lab's operator namespace (``L-ext``, at 198.18.255.254 on the
    underlay) for the block: the store's connections are made there and stay there
    (a socket keeps the namespace it was created in; threads started in the block inherit
    it).  Only the calling thread moves; use the store inside the block, on this thread.
    """
    naming.validate_lab_name(name)
    paths = LabPaths(state_root, name)
    manifest = read_manifest(paths)
    if not manifest:
        raise LabError(f"no lab named {name}; 'ovs-overlayctl lab list' shows the labs")
    if manifest.get("store", {}).get("kind", "sqlite") == "sqlite":
        cluster = open_cluster(paths.store_url)
        try:
            yield cluster
        finally:
            cluster.close()
        return
    if not netns.namespace_exists(etcd.operator_namespace(name)):
        raise LabError(
            f"lab {name} has no namespace {etcd.operator_namespace(name)} to reach its etcd "
            f"from; it is half removed: run 'ovs-overlayctl lab down --name {name}'"
        )
    with etcd.in_operator_namespace(name):
        cluster = open_cluster(paths.store_url)
        try:
            yield cluster
        finally:
            cluster.close()


def start_agent(paths: LabPaths, index: int):
    host = naming.host_name(index)
    host_paths = paths.host(host)
    manifest = read_manifest(paths)
    agent_proc.write_config(
        host_paths,
        host,
        naming.underlay_ip(index),
        paths.store_url,
        manifest.get("tunnel_type", "vxlan"),
        CONTROLLER_PORT,
        host_ttl=int(manifest.get("host_ttl", DEFAULT_HOST_TTL)),
    )
    return agent_proc.start(host_paths, naming.host_namespace(paths.name, host))


AGENT_ACTIONS = ("stop", "start", "restart", "kill")


def agent_control(name: str, host: str, action: str, state_root: str = naming.DEFAULT_STATE_ROOT):
    """Stop (SIGTERM: a clean leave), kill (SIGKILL: a crash), start or restart one host's
    agent (``lab agent ...``)."""
    naming.host_index(host)
    if action not in AGENT_ACTIONS:
        raise ValueError(f"agent action {action!r} is not one of {', '.join(AGENT_ACTIONS)}")
    paths = LabPaths(state_root, name)
    host_paths = paths.host(host)
    if not os.path.exists(agent_proc.config_path(host_paths)):
        raise LabError(f"lab {name} has no agent on host {host}; see 'ovs-overlayctl lab status'")
    if action == "kill" and agent_proc.stop(host_paths, signal.SIGKILL) is None:
        raise LabError(f"the agent of {host} is not running; nothing to kill")
    if action in ("stop", "restart"):
        agent_proc.stop(host_paths)
    if action in ("start", "restart"):
        if agent_proc.agent_pid(host_paths) is not None:
            raise LabError(f"the agent of {host} is already running; use 'restart'")
        proc = agent_proc.start(host_paths, naming.host_namespace(name, host))
        agent_proc.wait_ready(host_paths, proc)


def restart_vswitchd(name: str, host: str, state_root: str = naming.DEFAULT_STATE_ROOT) -> None:
    """Restart a host's ovs-vswitchd the way ovs-ctl does: with flow-restore-wait set, so
    it forwards nothing until the agent has put the pipeline back and cleared it."""
    naming.host_index(host)
    host_paths = LabPaths(state_root, name).host(host)
    with OvsdbClient(host_paths.db_sock) as client:
        client.set_flow_restore_wait(True)
    ovs_host.kill_daemon(host_paths, "ovs-vswitchd")
    ns = naming.host_namespace(name, host)
    ovs_host.start_vswitchd(host_paths, ns)
    # vswitchd recreates br-phy's tap device, without the host's address: put it back, as
    # the host's network configuration would.
    with OvsdbClient(host_paths.db_sock) as client:
        client.ensure_bridge(naming.PHYS_BRIDGE, NETDEV)
    mtu = read_manifest(LabPaths(state_root, name)).get("underlay_mtu", naming.UNDERLAY_MTU)
    _configure_underlay_ip(ns, naming.host_index(host), mtu)


def down(name: str, state_root: str = naming.DEFAULT_STATE_ROOT) -> list[str]:
    """Remove every process, namespace and file of lab ``name``; returns what it removed."""
    naming.validate_lab_name(name)
    paths = LabPaths(state_root, name)
    removed: list[str] = []
    etcd_dir = os.path.join(paths.root, "etcd")
    if os.path.isdir(etcd_dir):
        for member in sorted(os.listdir(etcd_dir)):
            pid = etcd.stop(etcd.EtcdMemberPaths(os.path.join(etcd_dir, member)))
            if pid is not None:
                removed.append(f"process etcd pid {pid} ({member})")
    hosts_dir = os.path.join(paths.root, "hosts")
    made_dirs: set[str] = set()
    if os.path.isdir(hosts_dir):
        for host in sorted(os.listdir(hosts_dir)):
            host_paths = paths.host(host)
            # dockerd, containerd and their containers first: their drivers' and CNI
            # DELs (if any) need the agent.
            removed += [f"{line} ({host})" for line in docker.remove(host_paths)]
            made_dirs.update(
                containerd.read_made_dirs(containerd.ContainerdPaths.of_host(host_paths))
            )
            removed += [f"{line} ({host})" for line in containerd.remove(host_paths)]
            pid = agent_proc.stop(host_paths)
            if pid is not None:
                removed.append(f"process ovs-overlay-agent pid {pid} ({host})")
            for daemon in reversed(ovs_host.DAEMONS):
                pid = ovs_host.kill_daemon(host_paths, daemon)
                if pid is not None:
                    removed.append(f"process {daemon} pid {pid} ({host})")
    namespaces = _lab_namespaces(name)
    if not os.path.isdir(paths.root) and naming.underlay_namespace(name) not in namespaces:
        # Neither the state dir nor the underlay namespace: these namespaces merely look
        # like ours (someone else's "web-h1"), so leave them alone.
        namespaces = []
    for ns in namespaces:
        # Anything still running in a namespace this lab made was started in it by the
        # lab (or by 'lab exec'); the namespace is about to go, so those go too.
        for pid in netns.namespace_pids(ns):
            ovs_host.terminate(pid)
            removed.append(f"process pid {pid} (in {ns})")
    for ns in namespaces:
        netns.delete_namespace(ns)
        removed.append(f"namespace {ns}")
    if os.path.isdir(paths.root):
        shutil.rmtree(paths.root)
        removed.append(f"state {paths.root}")
    removed += containerd.remove_made_dirs(made_dirs)
    return removed


def _lab_namespaces(name: str) -> list[str]:
    return [ns for ns in netns.list_namespaces() if naming.owns_namespace(name, ns)]


def exists(name: str, state_root: str = naming.DEFAULT_STATE_ROOT) -> bool:
    return os.path.isdir(LabPaths(state_root, name).root) or any(
        naming.owns_namespace(name, ns) for ns in netns.list_namespaces()
    )


def list_labs(state_root: str = naming.DEFAULT_STATE_ROOT) -> list[str]:
    """Labs with a state directory or an underlay namespace (a crashed lab may have only one)."""
    names = set()
    if os.path.isdir(state_root):
        names.update(
            d
            for d in os.listdir(state_root)
            if os.path.isfile(os.path.join(state_root, d, MANIFEST))
        )
    names.update(filter(None, (naming.lab_of_namespace(ns) for ns in netns.list_namespaces())))
    return sorted(names)


def status(name: str, state_root: str = naming.DEFAULT_STATE_ROOT) -> LabStatus:
    naming.validate_lab_name(name)
    paths = LabPaths(state_root, name)
    manifest = read_manifest(paths)
    if not manifest:
        raise LabError(f"no lab named {name}; 'ovs-overlayctl lab list' shows the labs")
    hosts = []
    for index in range(1, int(manifest["hosts"]) + 1):
        host = naming.host_name(index)
        host_paths = paths.host(host)
        daemons = {d: ovs_host.daemon_pid(host_paths, d) for d in ovs_host.DAEMONS}
        if os.path.exists(agent_proc.config_path(host_paths)):
            daemons["ovs-overlay-agent"] = agent_proc.agent_pid(host_paths)
        if os.path.isdir(docker.DockerPaths.of_host(host_paths).root):  # lab docker start
            daemons["dockerd"] = docker.dockerd_pid(docker.DockerPaths.of_host(host_paths))
        bridges: dict[str, str] = {}
        if daemons["ovsdb-server"] is not None:
            with OvsdbClient(host_paths.db_sock, timeout=5) as client:
                for br in (naming.PHYS_BRIDGE, naming.INTEGRATION_BRIDGE):
                    info = client.bridge_info(br)
                    if info is not None:
                        bridges[br] = info.datapath_type
        ns = naming.host_namespace(name, host)
        hosts.append(
            HostStatus(
                name=host,
                namespace=ns,
                underlay_ip=naming.underlay_ip(index),
                namespace_present=netns.namespace_exists(ns),
                daemons=daemons,
                bridges=bridges,
            )
        )
    store = manifest.get("store", {})
    members = tuple(
        EtcdMemberStatus(
            name=naming.etcd_member_name(k),
            namespace=naming.etcd_namespace(name, k),
            ip=naming.etcd_ip(k),
            pid=etcd.member_pid(etcd.member_paths(paths.root, k)),
        )
        for k in range(1, int(store.get("members", 0)) + 1)
        if store.get("kind") == "etcd"
    )
    return LabStatus(
        name,
        paths.root,
        manifest.get("tunnel_type", "vxlan"),
        tuple(hosts),
        paths.store_url,
        members,
    )


def host_env(name: str, host: str, state_root: str = naming.DEFAULT_STATE_ROOT) -> dict[str, str]:
    """The environment that points OVS tools at ``host``'s daemons."""
    return LabPaths(state_root, name).host(host).env()


def exec_in_host(
    name: str, host: str, argv: Sequence[str], state_root: str = naming.DEFAULT_STATE_ROOT
) -> None:
    """Replace this process with ``argv`` running in ``host``'s namespace and OVS environment."""
    naming.validate_lab_name(name)
    naming.host_index(host)
    if not argv:
        raise LabError("no command given; put it after '--', e.g. 'lab exec --lab L h1 -- ip addr'")
    ns = naming.host_namespace(name, host)
    if not netns.namespace_exists(ns):
        raise LabError(
            f"lab {name} has no host {host} (no namespace {ns}); "
            f"see 'ovs-overlayctl lab status --lab {name}'"
        )
    env = host_env(name, host, state_root)
    netns.enter_namespace(ns)
    os.execvpe(argv[0], list(argv), env)


def ping(name: str, src_host: str, dst_ip: str, count: int = 1) -> bool:
    """One ICMP echo from a host's namespace; True if answered."""
    return ping_from(naming.host_namespace(name, src_host), dst_ip, count)


def ping_from(namespace: str, dst_ip: str, count: int = 1) -> bool:
    """ICMP echo from any lab namespace (a host or a pod); True if all were answered."""
    result = netns.run_in_namespace(
        namespace, ["ping", "-c", str(count), "-W", "2", "-q", dst_ip], check=False
    )
    return result.returncode == 0


def dump_flows(name: str, host: str, state_root: str = naming.DEFAULT_STATE_ROOT) -> list[str]:
    """br-int's flows with table names, as ``ovs-ofctl --names dump-flows`` shows them."""
    result = netns.run_in_namespace(
        naming.host_namespace(name, host),
        [
            "ovs-ofctl",
            "-O",
            "OpenFlow13",
            "--names",
            "--no-stats",
            "dump-flows",
            naming.INTEGRATION_BRIDGE,
        ],
        env=host_env(name, host, state_root),
    )
    return [line.strip() for line in result.stdout.splitlines() if line.strip()]
