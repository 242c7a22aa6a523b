"""ovs-overlayctl entry point."""

from __future__ import annotations

import argparse
import logging
import sys

from ctl import (
    cni_install,
    endpoint_commands,
    flow_commands,
    host_commands,
    k8s_commands,
    lab_commands,
    network_commands,
    policy_commands,
    status_commands,
    trace_commands,
)
from lab.containerd import ContainerdError
from lab.etcd_members import EtcdLabError
from lab.lab import LabError
from ovsdb.client import OvsdbUnavailable
from store.kv import KvError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ovs-overlayctl", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = parser.add_subparsers(dest="command", required=True)
    lab_commands.add_parser(sub)
    network_commands.add_parser(sub)
    host_commands.add_parser(sub)
    endpoint_commands.add_parser(sub)
    cni_install.add_parser(sub)
    status_commands.add_parser(sub)
    flow_commands.add_parser(sub)
    trace_commands.add_parser(sub)
    k8s_commands.add_parser(sub)
    policy_commands.add_parser(sub)
    ref = sub.add_parser(
        "config-reference", help="print the agent's options as markdown (docs/config.md)"
    )
    ref.set_defaults(func=cmd_config_reference)
    return parser


def cmd_config_reference(args) -> int:
    from controller import config

    sys.stdout.write(config.reference())
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except (
        LabError,
        EtcdLabError,
        ContainerdError,
        ValueError,
        KvError,
        OvsdbUnavailable,
        FileExistsError,
        PermissionError,
    ) as exc:
        print(f"ovs-overlayctl: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # anything else still ends as one line; -v shows the traceback
        logging.getLogger("ovs-overlayctl").debug("failed", exc_info=True)
        print(
            f"ovs-overlayctl: {type(exc).__name__}: {exc} (run with -v for details)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
