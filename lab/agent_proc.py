"""One lab host's ovs-overlay agent process: config file, start, stop, readiness.

Each agent runs inside its host's namespace, so its OpenFlow listener on
127.0.0.1:6653 is that host's loopback and only that host's ovs-vswitchd
reaches it.  All agents share the lab's cluster state: a SQLite file, or the lab's
etcd members, which they reach over the underlay through br-phy.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from controller import api_client
from lab import naming, netns, ovs_host
from lab.ovs_host import OvsHostPaths

READY_TIMEOUT = 30.0
METRICS_PORT = 9810  # the agent's default, in each host's namespace
READY_POLL = 0.05


def config_path(paths: OvsHostPaths) -> str:
    return os.path.join(paths.root, "agent.conf")


def socket_path(paths: OvsHostPaths) -> str:
    return os.path.join(paths.rundir, "agent.sock")


def plugin_dir(paths: OvsHostPaths) -> str:
    """``[docker] plugin_dir``: the agent serves Docker's remote network and IPAM drivers
    on ``ovs-overlay.sock`` here, and the host's dockerd sees this directory as its
    ``/run/docker/plugins`` (lab/docker.py).  Set on every host: an unused socket costs
    nothing, and dockerd can be started on any host at any time."""
    return os.path.join(paths.rundir, "docker-plugins")


def pidfile(paths: OvsHostPaths) -> str:
    return os.path.join(paths.rundir, "ovs-overlay-agent.pid")


def write_config(
    paths: OvsHostPaths,
    host: str,
    tunnel_ip: str,
    store_url: str,
    tunnel_type: str,
    port: int,
    host_ttl: int,
) -> str:
    conf = config_path(paths)
    with open(conf, "w") as f:
        f.write(
            "[DEFAULT]\n"
            f"ofp_tcp_listen_port = {port}\n"
            "[agent]\n"
            f"host = {host}\n"
            f"tunnel_ip = {tunnel_ip}\n"
            f"store = {store_url}\n"
            f"ovsdb_sock = {paths.db_sock}\n"
            f"tunnel_type = {tunnel_type}\n"
            # userspace tunnelling through br-phy needs the userspace datapath
            "datapath_type = netdev\n"
            f"socket = {socket_path(paths)}\n"
            f"underlay_cidr = {naming.UNDERLAY_NET}\n"
            f"underlay_bridge = {naming.PHYS_BRIDGE}\n"
            f"host_ttl = {host_ttl}\n"
            # the host's own loopback: each lab host is a network namespace of its own
            f"metrics_address = 127.0.0.1\nmetrics_port = {METRICS_PORT}\n"
            "[docker]\n"
            f"plugin_dir = {plugin_dir(paths)}\n"
        )
    os.makedirs(plugin_dir(paths), exist_ok=True)
    return conf


def _agent_argv(conf: str) -> list[str]:
    script = os.path.join(os.path.dirname(sys.executable), "ovs-overlay-agent")
    if os.path.exists(script):
        return [sys.executable, script, "--config-file", conf]
    return [sys.executable, "-m", "controller.launcher", "--config-file", conf]


def start(paths: OvsHostPaths, namespace: str) -> subprocess.Popen:
    """Start the agent in ``namespace``; ``wait_ready`` waits for its pipeline."""
    conf = config_path(paths)
    with open(os.path.join(paths.logdir, "agent.log"), "ab") as log:
        proc = subprocess.Popen(
            _agent_argv(conf),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            preexec_fn=lambda: netns.enter_namespace(namespace),
            start_new_session=True,
            env=paths.env(),
        )
    with open(pidfile(paths), "w") as f:
        f.write(f"{proc.pid}\n")
    return proc


def wait_ready(paths: OvsHostPaths, proc: subprocess.Popen | None = None) -> None:
    """Poll the agent's status until its first pipeline is on br-int (or it exits)."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"the agent exited with {proc.returncode}; its log ends: {_log_tail(paths)}"
            )
        try:
            answer = api_client.call(socket_path(paths), "status", timeout=2)
            if answer.get("ok") and answer["result"]["ready"]:
                return
        except (OSError, ValueError):
            pass  # not listening yet
        time.sleep(READY_POLL)
    raise RuntimeError(
        f"the agent was not ready in {READY_TIMEOUT:.0f}s; its log ends: {_log_tail(paths)}"
    )


def _log_tail(paths: OvsHostPaths, lines: int = 5) -> str:
    """The end of the agent's log, for an error that outlives the lab's files."""
    try:
        with open(os.path.join(paths.logdir, "agent.log"), errors="replace") as f:
            return " | ".join(line.strip() for line in f.readlines()[-lines:])
    except OSError:
        return "(no log)"


def agent_pid(paths: OvsHostPaths) -> int | None:
    """The agent's PID if it runs and is the one started with this host's config."""
    return ovs_host.pid_from_pidfile(pidfile(paths), config_path(paths))


def stop(paths: OvsHostPaths, sig: int = signal.SIGTERM) -> int | None:
    pid = agent_pid(paths)
    if pid is None:
        return None
    ovs_host.terminate(pid, sig)
    return pid
