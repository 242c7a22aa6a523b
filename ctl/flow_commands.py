"""``ovs-overlayctl flows``: br-int's flows by table and feature, with their counters, stale
generations and unknown cookies flagged (ctl/flow_report.py).

The flows are read with ``ovs-ofctl --names dump-flows`` over br-int's management socket
in the host's OVS run directory (a lab host's with ``--lab L --host hN``), and the
bridge's generation from OVSDB: the CLI observes, like an operator at a shell, and never
changes the switch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

from ctl import flow_report, lab_host
from ctl.ovs_tools import run_tool
from lab import naming
from ovsdb.client import OvsdbClient

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
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")
    p.set_defaults(func=cmd_flows)


def cmd_flows(args: argparse.Namespace) -> int:
    table = None if args.table is None else flow_report.table_filter(args.table)
    feature = None if args.feature is None else flow_report.feature_filter(args.feature)
    env, db_sock = _where(args)
    generation = read_generation(db_sock, args.bridge)
    flows = flow_report.parse_dump(dump_flows(args.bridge, env), generation)
    rep = flow_report.report(args.bridge, generation, flows, table, feature)
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
