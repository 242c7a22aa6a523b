"""Changing a running lab: a host joins (``lab host add``), etcd members crash and come
back (``lab etcd ...``).  The agents' own faults are ``lab.lab.agent_control``."""

from __future__ import annotations

import logging
import os
import shutil
import signal
from collections.abc import Sequence

from lab import agent_proc, naming, netns, ovs_host
from lab import etcd_members as etcd
from lab.lab import (
    HostStatus,
    LabError,
    LabPaths,
    build_host,
    read_manifest,
    start_agent,
    status,
    write_manifest,
)

LOG = logging.getLogger(__name__)


def host_add(name: str, state_root: str = naming.DEFAULT_STATE_ROOT) -> HostStatus:
    """Add host h<N+1> (namespace, OVS daemons, agent) to a running lab; returns its status.
    On failure the half-made host is removed and the lab stays as it was."""
    naming.validate_lab_name(name)
    paths = LabPaths(state_root, name)
    manifest = read_manifest(paths)
    if not manifest:
        raise LabError(f"no lab named {name}; 'ovs-overlayctl lab list' shows the labs")
    index = int(manifest["hosts"]) + 1
    naming.validate_host_count(index)
    host = naming.host_name(index)
    try:
        # Claims the host: of two 'host add' racing, the second stops here, touching nothing.
        os.makedirs(os.path.dirname(paths.host(host).root), exist_ok=True)
        os.mkdir(paths.host(host).root)
    except FileExistsError:
        raise LabError(
            f"host {host} of lab {name} is being added by someone else; wait and try again"
        ) from None
    agents = any(
        os.path.exists(agent_proc.config_path(paths.host(naming.host_name(i))))
        for i in range(1, index)
    )
    try:
        build_host(
            paths,
            index,
            manifest.get("tunnel_type", "vxlan"),
            manifest.get("underlay_mtu", naming.UNDERLAY_MTU),
        )
        if agents:
            agent_proc.wait_ready(paths.host(host), start_agent(paths, index))
    except BaseException:
        LOG.error("lab %s: adding %s failed, removing it", name, host)
        _remove_host(paths, host)
        raise
    write_manifest(paths, {**manifest, "hosts": index})
    return next(h for h in status(name, state_root).hosts if h.name == host)


def _remove_host(paths: LabPaths, host: str) -> None:
    """Everything of one host: agent, daemons, its namespaces, its underlay port, its files."""
    host_paths = paths.host(host)
    agent_proc.stop(host_paths)
    for daemon in reversed(ovs_host.DAEMONS):
        ovs_host.kill_daemon(host_paths, daemon)
    ns = naming.host_namespace(paths.name, host)
    for pod_ns in [n for n in netns.list_namespaces() if n == ns or n.startswith(ns + "-")]:
        for pid in netns.namespace_pids(pod_ns):
            ovs_host.terminate(pid)
        netns.delete_namespace(pod_ns)  # the host's veth ends go with it
    shutil.rmtree(host_paths.root, ignore_errors=True)


ETCD_ACTIONS = ("stop", "start", "restart")


def etcd_control(
    name: str,
    members: Sequence[str],
    action: str,
    sig: int = signal.SIGKILL,
    state_root: str = naming.DEFAULT_STATE_ROOT,
    wait: bool = True,
) -> None:
    """Stop (``sig``, default SIGKILL: a crash), start or restart etcd members of a lab
    (``lab etcd ...``).  A started member rejoins with its data dir; with ``wait`` this
    returns once every started member is healthy (which needs a quorum running)."""
    if action not in ETCD_ACTIONS:
        raise ValueError(f"etcd action {action!r} is not one of {', '.join(ETCD_ACTIONS)}")
    naming.validate_lab_name(name)
    paths = LabPaths(state_root, name)
    store = read_manifest(paths).get("store", {})
    if store.get("kind") != "etcd":
        raise LabError(f"lab {name} has no etcd (its store is SQLite); build it with --store etcd")
    count = int(store["members"])
    indices = []
    for member in members:
        index = naming.etcd_member_index(member)
        if index > count:
            raise LabError(f"lab {name} has etcd members etcd1..etcd{count}, not {member}")
        indices.append(index)
    if action in ("stop", "restart"):
        for index in indices:
            stopped = etcd.stop(etcd.member_paths(paths.root, index), sig)
            if stopped is None and action == "stop":
                raise LabError(f"{naming.etcd_member_name(index)} of lab {name} is not running")
    if action in ("start", "restart"):
        procs = {k: etcd.start(name, paths.root, k, count) for k in indices}
        if wait:
            etcd.wait_healthy(name, paths.root, indices, procs)
