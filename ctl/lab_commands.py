"""``ovs-overlayctl lab ...``: build, inspect and remove one-machine labs."""

from __future__ import annotations

import argparse
import itertools
import sys

from lab import lab, naming


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("lab", help="one-machine multi-host lab")
    p.add_argument(
        "--state-dir",
        default=naming.DEFAULT_STATE_ROOT,
        help="where labs keep their files (default: %(default)s)",
    )
    sub = p.add_subparsers(dest="lab_command", required=True)

    up = sub.add_parser("up", help="build a lab")
    up.add_argument("--name", required=True)
    up.add_argument("--hosts", type=int, default=3)
    up.add_argument("--tunnel-type", default="vxlan", choices=["vxlan", "geneve", "gre"])
    up.set_defaults(func=cmd_up)

    down = sub.add_parser("down", help="remove a lab and everything it made")
    down.add_argument("--name", required=True)
    down.set_defaults(func=cmd_down)

    st = sub.add_parser("status", help="show a lab's hosts, daemons and bridges")
    st.add_argument("--lab")
    st.set_defaults(func=cmd_status)

    ls = sub.add_parser("list", help="list labs")
    ls.set_defaults(func=cmd_list)

    ex = sub.add_parser("exec", help="run a command in a lab host (OVS tools address its daemons)")
    ex.add_argument("--lab", required=True)
    ex.add_argument("host")
    ex.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD ...")
    ex.set_defaults(func=cmd_exec)

    demo = sub.add_parser("demo", help="lab up, show it, prove underlay reachability, lab down")
    demo.add_argument("--name", default="demo")
    demo.add_argument("--hosts", type=int, default=3)
    demo.set_defaults(func=cmd_demo)


def cmd_up(args) -> int:
    print_status(lab.up(args.name, args.hosts, args.state_dir, args.tunnel_type))
    return 0


def cmd_down(args) -> int:
    if not lab.exists(args.name, args.state_dir):
        raise lab.LabError(f"no lab named {args.name}; 'ovs-overlayctl lab list' shows the labs")
    for line in lab.down(args.name, args.state_dir):
        print(f"removed {line}")
    return 0


def cmd_status(args) -> int:
    names = [args.lab] if args.lab else lab.list_labs(args.state_dir)
    if not names:
        print("no labs")
    for name in names:
        print_status(lab.status(name, args.state_dir))
    return 0


def cmd_list(args) -> int:
    for name in lab.list_labs(args.state_dir):
        print(name)
    return 0


def cmd_exec(args) -> int:
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    lab.exec_in_host(args.lab, args.host, argv, args.state_dir)
    return 0  # not reached: exec replaced this process


def cmd_demo(args) -> int:
    print(f"== lab up --name {args.name} --hosts {args.hosts}")
    try:
        status = lab.up(args.name, args.hosts, args.state_dir)
        print_status(status)
        print("== underlay reachability (ping from every host to every other host's br-phy IP)")
        failures = 0
        for src, dst in itertools.permutations(status.hosts, 2):
            ok = lab.ping(args.name, src.name, dst.underlay_ip)
            failures += not ok
            print(f"  {src.name} -> {dst.name} {dst.underlay_ip}: {'ok' if ok else 'FAILED'}")
    finally:
        print(f"== lab down --name {args.name}")
        removed = lab.down(args.name, args.state_dir)
        print(f"  removed {len(removed)} items; no {args.name}-* namespace or daemon remains")
    if failures:
        print(f"demo failed: {failures} pings unanswered", file=sys.stderr)
        return 1
    print("demo ok")
    return 0


def print_status(status: lab.LabStatus) -> None:
    print(
        f"lab {status.name}: {len(status.hosts)} hosts, tunnel {status.tunnel_type}, "
        f"state {status.state_dir}"
    )
    rows = [
        ("host", "namespace", "underlay ip", "bridges (datapath)", "ovsdb-server", "ovs-vswitchd")
    ]
    for h in status.hosts:
        rows.append(
            (
                h.name,
                h.namespace if h.namespace_present else f"{h.namespace} (MISSING)",
                f"{h.underlay_ip}/{naming.underlay_prefixlen()}",
                ", ".join(f"{b} ({dp})" for b, dp in h.bridges.items()) or "-",
                *(f"pid {pid}" if pid else "DOWN" for pid in h.daemons.values()),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
