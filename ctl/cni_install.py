"""Installing the CNI plugin where runtimes look for it.

Runtimes exec plugins with their own PATH, so the installed file starts with the
absolute path of this environment's interpreter (the one ovs-overlay is installed
in) rather than ``/usr/bin/env python3``.

Runtimes exec the plugin on every verb, so its start-up is pod-start latency.  The
launcher runs the interpreter with ``-S`` (no ``site``: with an editable install,
site's path hooks alone cost 15 ms of the 35 a plain start takes) and puts the
directory holding the ``cni`` package on ``sys.path`` itself; the plugin needs the
standard library only.

Installed from a container (the DaemonSet's install-cni init container), the
container's interpreter and package directory do not exist on the node: there
``--host-root /host`` writes every file under the node's root mounted at /host,
``--copy-to DIR`` copies the plugin's own modules (stdlib-only: ``cni`` and the
API client) to DIR on the node, and ``--python`` names the node's interpreter.
"""

from __future__ import annotations

import json
import os
import shutil
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


# What the plugin imports besides the standard library (cni/plugin.py's imports).
PLUGIN_MODULES = ("cni/__init__.py", "cni/admission.py", "cni/plugin.py",
                  "controller/__init__.py", "controller/api_client.py")  # fmt: skip


def install(
    bin_dir: str,
    conf_dir: str | None,
    network: str,
    agent_socket: str,
    cni_version: str = "1.0.0",
    name: str = "ovs-overlay",
    *,
    host_root: str = "",
    python: str = sys.executable,
    copy_to: str | None = None,
) -> tuple[str, str | None]:
    """Write the plugin into ``bin_dir`` and (if given) a conflist into ``conf_dir``; the
    paths are the node's, written under ``host_root``.  With ``copy_to`` the plugin runs
    from its own copy there instead of this installation's package directory."""
    source = _package_root()
    if copy_to is not None:
        for module in PLUGIN_MODULES:
            target = _under(host_root, os.path.join(copy_to, module))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copyfile(os.path.join(source, module), target + ".tmp")
            os.replace(target + ".tmp", target)
        source = copy_to
    os.makedirs(_under(host_root, bin_dir), exist_ok=True)
    path = os.path.join(bin_dir, PLUGIN_NAME)
    tmp = _under(host_root, path) + ".tmp"
    with open(tmp, "w") as f:
        f.write(LAUNCHER.format(python=python, source=source))
    os.chmod(tmp, 0o755)
    os.replace(tmp, _under(host_root, path))  # a runtime exec'ing it sees old or new
    conf_path = None
    if conf_dir is not None:
        os.makedirs(_under(host_root, conf_dir), exist_ok=True)
        conf_path = os.path.join(conf_dir, CONFLIST_NAME)
        tmp = _under(host_root, conf_path) + ".tmp"
        with open(tmp, "w") as f:
            json.dump(conflist(network, agent_socket, cni_version, name), f, indent=2)
        os.replace(tmp, _under(host_root, conf_path))
    return path, conf_path


def _under(root: str, path: str) -> str:
    """``path`` of the node, as this process reaches it (under ``root``)."""
    return os.path.join(root, path.lstrip("/")) if root else path


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
    p.add_argument(
        "--host-root",
        default="",
        help="where the node's root is mounted (from a container: /host); the other paths "
        "are the node's",
    )
    p.add_argument(
        "--python",
        default=sys.executable,
        help="the node's Python 3.10+ that runs the plugin (default: this one)",
    )
    p.add_argument(
        "--copy-to",
        help="copy the plugin's modules (standard library only) to this directory of the node "
        "and run them from there (default: from this installation)",
    )
    p.set_defaults(func=cmd_install)


def cmd_install(args) -> int:
    path, conf_path = install(
        args.bin_dir,
        args.conf_dir,
        args.network,
        args.agent_socket,
        host_root=args.host_root,
        python=args.python,
        copy_to=args.copy_to,
    )
    print(f"installed {path}")
    print(f"wrote {conf_path}")
    return 0
