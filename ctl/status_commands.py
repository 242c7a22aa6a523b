"""``ovs-overlayctl status``: one host's agent (through its socket) and the cluster it is in
(read from the store by the CLI itself), in one view.

The agent part comes from the agent's own ``status`` answer (controller/status.py): counts
from its engine, not a dump of br-int.  The cluster part is read from the store named by
``--store``/``--config``, by ``--lab``, or else by the agent's answer (so with the agent
down and no store named there is none).  Either part can be missing (the agent is down,
the store does not answer): what could be read is printed, the reason for the rest goes
to stderr as one sentence, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import json
import sys

from controller import api_client
from ctl import lab_host
from ctl.status_report import (
    AgentStatus,
    ClusterStatus,
    HostRow,
    NetworkRow,
    ShapeError,
    StatusReport,
    from_json,
    render,
)
from ctl.store_options import add_store_options, open_store, resolved_options
from lab import agent_proc
from store import ClusterState
from store.k8s_objects import NETWORK_POLICIES, K8sObjects
from store.kv import KvError

DEFAULT_SOCKET = "/run/ovs-overlay/agent.sock"  # controller/config.py's default
TIMEOUT = 5.0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "status", help="this host's agent (or a lab host's) and the cluster: hosts, networks"
    )
    p.add_argument(
        "--socket", help=f"the agent's socket (default {DEFAULT_SOCKET}; with --lab: the host's)"
    )
    p.add_argument("--host", help="with --lab: the lab host whose agent to ask (h1, h2, ...)")
    add_store_options(p)
    p.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    report = gather(args)
    if args.output == "json":
        print(json.dumps(report.to_json(), indent=2))
    elif lines := render(report):
        print("\n".join(lines))
    for error in (report.agent_error, report.cluster_error):
        if error:
            print(f"ovs-overlayctl: {error}", file=sys.stderr)
    return 0 if report.agent_error is None and report.cluster_error is None else 1


def gather(args: argparse.Namespace) -> StatusReport:
    opts = resolved_options(args)
    fix = "start ovs-overlay-agent, or give its socket with --socket"
    if opts["lab"]:
        if args.socket:
            raise ValueError("--socket and --lab name the agent twice; give one of them")
        paths = lab_host.host_paths(opts["lab"], args.host, opts["state_dir"])
        path = agent_proc.socket_path(paths)
        fix = f"start it with 'ovs-overlayctl lab agent start --lab {opts['lab']} {args.host}'"
    elif args.host:
        raise ValueError("--host names a lab host; give --lab too, or --socket for this host")
    else:
        path = args.socket or DEFAULT_SOCKET
    agent, agent_error = ask_agent(path, fix)
    cluster, cluster_error = None, None
    if opts["store"] or opts["lab"]:
        cluster, cluster_error = read_cluster(lambda: open_store(args))
    elif agent is not None:
        cluster, cluster_error = read_cluster(lambda: open_store(args, agent.store.url))
    return StatusReport(agent, agent_error, cluster, cluster_error)


def ask_agent(path: str, fix: str) -> tuple[AgentStatus | None, str | None]:
    """The agent's status, or why there is none (one sentence naming the socket and ``fix``)."""
    try:
        answer = api_client.call(path, "status", timeout=TIMEOUT)
    except FileNotFoundError:
        return None, f"no agent socket at {path}: the agent is not running there; {fix}"
    except ConnectionRefusedError:
        return None, f"nothing listens on {path}: the agent is not running; {fix}"
    except PermissionError:
        return None, f"{path} may be opened by root only; run ovs-overlayctl as root"
    except TimeoutError:
        return None, f"the agent at {path} did not answer in {TIMEOUT:.0f} s; see its log"
    except (OSError, ValueError) as exc:
        return None, f"the agent at {path} could not be asked ({exc}); see its log"
    if not answer.get("ok"):
        return None, f"the agent at {path} refused the status request: {answer.get('error')}"
    try:
        return from_json(AgentStatus, {"socket": path, **answer["result"]}, strict=False), None
    except ShapeError as exc:
        return None, (
            f"the agent at {path} answered a status this ovs-overlayctl cannot read ({exc}); "
            "use the ovs-overlayctl of the agent's version"
        )


def read_cluster(opener) -> tuple[ClusterStatus | None, str | None]:
    try:
        with opener() as cluster:
            return cluster_status(cluster), None
    except KvError as exc:  # a bad URL or option (ValueError) is the command's error
        return None, f"the cluster part could not be read: {exc}"  # it names the fix


def cluster_status(cluster: ClusterState) -> ClusterStatus:
    """Hosts and networks with block usage, and the NetworkPolicies stored: a full read,
    for the operator only."""
    hosts = tuple(
        HostRow(h.name, h.alive, h.tunnel_ip, h.lease_left, h.endpoints, h.blocks)
        for h in cluster.host_summaries()
    )
    networks = []
    for n in cluster.list_networks():
        blocks = cluster.list_blocks(n.name)
        networks.append(
            NetworkRow(
                name=n.name,
                vni=n.vni,
                index=n.index,
                cidr=n.cidr,
                mtu=n.mtu,
                gateway=n.gateway,
                egress=_egress(n),
                blocks=len(blocks),
                block_addresses=sum(2 ** (32 - int(b.cidr.split("/")[1])) for b in blocks),
                addresses_used=len(cluster.allocations(n.name)),
            )
        )
    policies = len(K8sObjects(cluster.kv).list(NETWORK_POLICIES))
    return ClusterStatus(hosts, tuple(networks), policies)


def _egress(network) -> str | None:
    """A network's egress setting where the record has one (a later feature adds it)."""
    value = getattr(network, "egress", None)
    return None if value is None else str(value)
