"""ovs-overlayctl entry point.

Each command lives in a module of its own (``COMMANDS``), and only the module of the
command on the command line is imported: ``apply`` or ``get`` against a store needs
YAML and the store, not the lab, OVSDB's client (eventlet), pyroute2 or os-ken, whose
imports took 0.6-3 s of every run (docs/benchmarks.md, "ovs-overlayctl start").  Help,
a missing or an unknown command import every module, to list them all.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Command -> the module whose ``add_parser(subparsers)`` defines it, in the order help
# lists them.  One module may define several commands (k8s_commands: apply, delete, get).
COMMANDS = {
    "lab": "ctl.lab_commands",
    "network": "ctl.network_commands",
    "host": "ctl.host_commands",
    "endpoint": "ctl.endpoint_commands",
    "install-cni": "ctl.cni_install",
    "status": "ctl.status_commands",
    "flows": "ctl.flow_commands",
    "trace": "ctl.trace_commands",
    "apply": "ctl.k8s_commands",
    "delete": "ctl.k8s_commands",
    "get": "ctl.k8s_commands",
    "policy": "ctl.policy_commands",
}
CONFIG_REFERENCE = "config-reference"  # defined here: it only prints the agent's options

# Errors a command reports as one line (its message says what to fix), by module and
# class: a class whose module the command never imported cannot have been raised.
EXPECTED_ERRORS = (
    ("lab.lab", "LabError"),
    ("lab.etcd_members", "EtcdLabError"),
    ("lab.containerd", "ContainerdError"),
    ("ovsdb.client", "OvsdbUnavailable"),
    ("store.kv", "KvError"),
)
GLOBAL_FLAGS = ("-v", "--verbose")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of ``command`` alone (its module imported), or of every command."""
    parser = argparse.ArgumentParser(prog="ovs-overlayctl", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = parser.add_subparsers(dest="command", required=True)
    if command in COMMANDS:
        modules = [COMMANDS[command]]
    elif command == CONFIG_REFERENCE:
        modules = []
    else:
        modules = list(dict.fromkeys(COMMANDS.values()))
    for module in modules:
        importlib.import_module(module).add_parser(sub)
    if command not in COMMANDS:
        ref = sub.add_parser(
            CONFIG_REFERENCE, help="print the agent's options as markdown (docs/config.md)"
        )
        ref.set_defaults(func=cmd_config_reference)
    return parser


def command_of(argv: list[str]) -> str | None:
    """The command ``argv`` names: its first word after the global flags (None: help was
    asked for, or no command is there)."""
    for word in argv:
        if word in GLOBAL_FLAGS:
            continue
        return None if word.startswith("-") else word
    return None


def cmd_config_reference(args) -> int:
    from controller import config

    sys.stdout.write(config.reference())
    return 0


def expected_errors() -> tuple[type[BaseException], ...]:
    """The error classes reported in one line, of the modules loaded now."""
    loaded = tuple(
        getattr(sys.modules[module], name)
        for module, name in EXPECTED_ERRORS
        if module in sys.modules
    )
    return (ValueError, FileExistsError, PermissionError, *loaded)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(command_of(argv)).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except Exception as exc:
        if isinstance(exc, expected_errors()):
            print(f"ovs-overlayctl: {exc}", file=sys.stderr)
            return 1
        # Anything else still ends as one line; -v shows the traceback.
        logging.getLogger("ovs-overlayctl").debug("failed", exc_info=True)
        print(
            f"ovs-overlayctl: {type(exc).__name__}: {exc} (run with -v for details)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
