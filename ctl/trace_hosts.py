"""Where ``ovs-overlayctl trace`` runs ``ofproto/trace``: every host of a lab (each in its
namespace, against its own daemons), or only this host's ovs-vswitchd, found through the
agent's own config file.

On a real host the CLI cannot reach another node's vswitchd (no remote OVSDB or unixctl
between hosts, by design), so a trace whose packet leaves through the tunnel stops there,
``forwarded``, and names the command to run on the receiving host.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from controller import config as agent_config
from ctl import lab_host
from ctl.ovs_tools import run_tool
from lab import naming, netns
from lab.lab import LabError

DEFAULT_AGENT_CONFIG = "/etc/ovs-overlay/agent.conf"  # deploy/'s unit and DaemonSet use it


@dataclass(frozen=True)
class LabSwitches:
    """Every host of lab ``lab``: a trace follows the packet from host to host."""

    lab: str
    state: str
    bridge: str = naming.INTEGRATION_BRIDGE

    def reaches(self, host: str) -> bool:
        return True

    def run(self, host: str, argv: list[str]) -> str:
        env = lab_host.host_paths(self.lab, host, self.state).env()
        ns = naming.host_namespace(self.lab, host)
        done = netns.run_in_namespace(ns, argv, env=env, check=False)
        if done.returncode != 0:
            why = (done.stderr.strip().splitlines() or ["no message"])[-1]
            raise LabError(f"{argv[0]} failed on {self.lab}'s {host} ({why}); is its OVS running?")
        return done.stdout


@dataclass(frozen=True)
class HostSwitch:
    """This host's br-int only, as its agent's config names it."""

    host: str  # this host's name in the cluster state
    bridge: str
    rundir: str  # ovs-vswitchd's run directory (its pidfile, unixctl and mgmt sockets)

    def reaches(self, host: str) -> bool:
        return host == self.host

    def run(self, host: str, argv: list[str]) -> str:
        if host != self.host:
            raise ValueError(f"the trace cannot reach {host}'s ovs-vswitchd from {self.host}")
        env = {**os.environ, "OVS_RUNDIR": self.rundir}
        return run_tool(argv, env, f"read {self.bridge} on {self.host}")


@dataclass(frozen=True)
class LocalAgent:
    """What a trace on this host needs from its agent's config."""

    switch: HostSwitch
    store: str  # the cluster state's URL
    kubernetes_network: str  # the network NetworkPolicy applies to


def local_agent(path: str) -> LocalAgent:
    """This host's agent config at ``path``, read as the agent reads it (the same options,
    defaults and ``OS_AGENT__*`` environment); ValueError naming the file and the fix."""
    from oslo_config import cfg

    if not os.path.isfile(path):
        raise ValueError(
            f"there is no agent config at {path}; give the agent's --config-file with --config, "
            "or --lab L in a lab"
        )
    conf = cfg.ConfigOpts()
    agent_config.register(conf)
    try:
        conf(args=[], default_config_files=[path], project="ovs-overlay")
        values = agent_config.from_conf(conf, controller_port=0)
    except (cfg.Error, OSError) as exc:
        raise ValueError(f"the agent config {path} cannot be read ({exc}); fix it") from None
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    rundir = os.path.dirname(values.ovsdb_sock)
    return LocalAgent(
        HostSwitch(values.host, values.bridge, rundir), values.store, values.kubernetes_network
    )
