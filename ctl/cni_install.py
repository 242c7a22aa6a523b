"""Installing the CNI plugin where runtimes look for it.

Runtimes exec plugins with their own PATH, so the installed file starts with the
absolute path of this environment's interpreter (the one ovs-overlay is installed
in) rather than ``/usr/bin/env python3``.

Runtimes exec the plugin on every verb, so its start-up is pod-start latency.  The
launcher runs the interpreter with ``-S`` (no ``site``: with an editable install,
site's path hooks alone cost 15 ms of the 35 a plain start takes) and puts the
directory holding the ``cni`` package on ``sys.path`` itself; the plugin needs the
standard library only.
"""

from __future__ import annotations

import json
import os
import sys

import cni

PLUGIN_NAME = "ovs-overlay"
CONFLIST_NAME = "10-ovs-overlay.conflist"

LAUNCHER = """#!{python} -S
# ovs-overlay CNI plugin, installed by 'ovs-overlayctl install-cni'.
import os
import sys
sys.path.insert(0, {source!r})
from cni.plugin import main
code = main()
sys.stdout.flush()
os._exit(code)  # no interpreter teardown: 2-4 ms of every runtime call
"""


def install(
    bin_dir: str,
    conf_dir: str | None,
    network: str,
    agent_socket: str,
    cni_version: str = "1.0.0",
    name: str = "ovs-overlay",
) -> tuple[str, str | None]:
    """Write the plugin into ``bin_dir`` and (if given) a conflist into ``conf_dir``."""
    os.makedirs(bin_dir, exist_ok=True)
    path = os.path.join(bin_dir, PLUGIN_NAME)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(LAUNCHER.format(python=sys.executable, source=_package_root()))
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)  # a runtime exec'ing it meanwhile sees the old or the new file
    conf_path = None
    if conf_dir is not None:
        os.makedirs(conf_dir, exist_ok=True)
        conf_path = os.path.join(conf_dir, CONFLIST_NAME)
        with open(conf_path, "w") as f:
            json.dump(conflist(network, agent_socket, cni_version, name), f, indent=2)
    return path, conf_path


def _package_root() -> str:
    """The directory that holds the ``cni`` and ``controller`` packages."""
    return os.path.dirname(os.path.dirname(os.path.abspath(cni.__file__)))


def conflist(network: str, agent_socket: str, cni_version: str, name: str) -> dict:
    return {
        "cniVersion": cni_version,
        "name": name,
        "plugins": [
            {"type": PLUGIN_NAME, "network": network, "agentSocket": agent_socket},
        ],
    }


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("install-cni", help="install the CNI plugin and a conflist")
    p.add_argument("--bin-dir", default="/opt/cni/bin")
    p.add_argument("--conf-dir", default="/etc/cni/net.d")
    p.add_argument("--network", default="default")
    p.add_argument("--agent-socket", default="/run/ovs-overlay/agent.sock")
    p.set_defaults(func=cmd_install)


def cmd_install(args) -> int:
    path, conf_path = install(args.bin_dir, args.conf_dir, args.network, args.agent_socket)
    print(f"installed {path}")
    print(f"wrote {conf_path}")
    return 0
