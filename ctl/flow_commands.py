"""``ovs-overlayctl flows``: br-int's flows by table and feature, with their counters, stale
generations and unknown cookies flagged (ctl/flow_report.py).

The flows are read with ``ovs-ofctl --names dump-flows`` over br-int's management socket
in the host's OVS run directory (a lab host's with ``--lab L --host hN``), and the
bridge's generation from OVSDB: the CLI observes, like an operator at a shell, and never
changes the switch.

The policy rules' flows are also summed per rule (netpol/hits.py).  A rule id is named
from the policy state in the store, which is what every agent compiles (the ids are the
compiler's, netpol.compile.rule_ids, as ``trace`` names them): the lab's store with
``--lab``, else the store of this host's agent config (``--config``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Mapping
from contextlib import closing

from ctl import flow_report, lab_host
from ctl.ovs_tools import run_tool
from ctl.policy_commands import DEFAULT_NETWORK
from ctl.trace_hosts import DEFAULT_AGENT_CONFIG, local_agent
from lab import naming
from lab.lab import open_lab_cluster
from netpol.evaluate import RuleRef
from netpol.hits import rule_names
from ovsdb.client import OvsdbClient
from store import open_cluster
from store.policy_records import read_policy_state

DEFAULT_RUNDIR = "/var/run/openvswitch"
GENERATION_KEY = "ovs-overlay-generation"  # controller/agent.py writes it


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "flows", help="br-int's flows by table and feature, with counters; stale ones flagged"
    )
    p.add_argument("--lab", help="a lab (with --host): that host's br-int")
    p.add_argument("--host", help="with --lab: the lab host (h1, h2, ...)")
    p.add_argument("--state-dir", help=f"where labs live (default {naming.DEFAULT_STATE_ROOT})")
    p.add_argument("--bridge", default=naming.INTEGRATION_BRIDGE, help="default: %(default)s")
    p.add_argument(
        "--ovs-rundir",
        help=f"OVS's run directory (its sockets) on this host (default {DEFAULT_RUNDIR})",
    )
    p.add_argument("--table", help="only this table (name)")
    p.add_argument(
        "--feature",
        help="only this feature (e.g. l2_remote, arp_responder, unknown)",
    )
    p.add_argument(
        "--policy",
        metavar="NAMESPACE/NAME",
        help="only this NetworkPolicy's rules: their flows and hits",
    )
    p.add_argument(
        "--config",
        help="without --lab: this host's agent config, whose store names the policy rules "
        f"(default {DEFAULT_AGENT_CONFIG})",
    )
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")
    p.set_defaults(func=cmd_flows)


def cmd_flows(args: argparse.Namespace) -> int:
    table = None if args.table is None else flow_report.table_filter(args.table)
    feature = None if args.feature is None else flow_report.feature_filter(args.feature)
    policy = None if args.policy is None else flow_report.policy_filter(args.policy)
    env, db_sock = _where(args)
    generation = read_generation(db_sock, args.bridge)
    flows = flow_report.parse_dump(dump_flows(args.bridge, env), generation)
    names: Mapping[int, RuleRef] = {}
    if policy is not None or flow_report.has_rule_flows(flows):
        try:
            names = policy_rule_names(args)
        except ValueError as exc:
            if policy is not None:
                raise
            print(f"ovs-overlayctl: policy rules shown by id: {exc}", file=sys.stderr)
    rep = flow_report.report(args.bridge, generation, flows, table, feature, names, policy)
    if args.output == "json":
        print(json.dumps(dataclasses.asdict(rep), indent=2))
    else:
        print("\n".join(flow_report.render(rep)))
    return 0


def _where(args: argparse.Namespace) -> tuple[dict[str, str], str]:
    """The OVS tools' environment and OVSDB's socket for the host the options name."""
    if args.lab:
        if args.ovs_rundir:
            raise ValueError("--ovs-rundir and --lab both name the host; give one of them")
        paths = lab_host.host_paths(args.lab, args.host, args.state_dir)
        return paths.env(), paths.db_sock
    if args.host:
        raise ValueError("--host names a lab host; give --lab too (or --ovs-rundir here)")
    rundir = args.ovs_rundir or DEFAULT_RUNDIR
    return {**os.environ, "OVS_RUNDIR": rundir}, os.path.join(rundir, "db.sock")


def policy_rule_names(args: argparse.Namespace) -> dict[int, RuleRef]:
    """Rule id -> rule of the policy state in the store the agents compile from."""
    if args.lab:
        if args.config:
            raise ValueError("--config names this host's agent and --lab a lab; give one of them")
        state_dir = args.state_dir or naming.DEFAULT_STATE_ROOT
        opened = open_lab_cluster(args.lab, state_dir)
        network = DEFAULT_NETWORK  # the lab's agents keep the default
    else:
        agent = local_agent(args.config or DEFAULT_AGENT_CONFIG)
        opened = closing(open_cluster(agent.store))
        network = agent.kubernetes_network
    with opened as cluster:
        state, _ = read_policy_state(cluster.kv, network)
    return rule_names(state)


def read_generation(db_sock: str, bridge: str) -> int | None:
    """The generation the agent last installed on ``bridge`` (None: none ever did)."""
    if not os.path.exists(db_sock):
        raise ValueError(
            f"there is no ovsdb-server socket at {db_sock}; start Open vSwitch there, or name "
            "its run directory with --ovs-rundir (a lab host with --lab L --host hN)"
        )
    with OvsdbClient(db_sock, timeout=5) as client:
        info = client.bridge_info(bridge)
    if info is None:
        raise ValueError(f"there is no bridge {bridge} in the OVSDB at {db_sock}; check --bridge")
    value = info.external_ids.get(GENERATION_KEY)
    return int(value) if value is not None and value.isdigit() else None


def dump_flows(bridge: str, env: dict[str, str]) -> str:
    argv = ["ovs-ofctl", "-O", "OpenFlow13", "--names", "dump-flows", bridge]
    return run_tool(argv, env, f"dump {bridge}'s flows")
