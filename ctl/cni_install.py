"""Installing the CNI plugin where runtimes look for it.

Runtimes exec plugins with their own PATH, so the installed file starts with the
absolute path of this environment's interpreter (the one ovs-overlay is installed
in) rather than ``/usr/bin/env python3``.

Runtimes exec the plugin on every verb, so its start-up is pod-start latency.  The
launcher runs the interpreter with ``-S`` (no ``site``: with an editable install,
site's path hooks alone cost 15 ms of the 35 a plain start takes) and puts the
directory holding the ``cni`` package on ``sys.path`` itself; the plugin needs the
standard library only.

The plugin runtimes exec is the compiled shim (cni/shim.c, about a millisecond a call):
it hands the request to the agent, which answers with the plugin's own code, and execs
the Python plugin installed beside it (``ovs-overlay-python``) when the agent cannot
answer.  The shim is compiled here with the node's C compiler, or copied prebuilt
(``--shim PATH``: the DaemonSet's image carries one); with neither, or ``--no-shim``,
``ovs-overlay`` is the Python plugin itself, slower to start and otherwise the same.

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
import subprocess
import sys
import tempfile

import cni

PLUGIN_NAME = "ovs-overlay"
PYTHON_PLUGIN_NAME = "ovs-overlay-python"  # what the shim execs (cni/shim.c PYTHON_PLUGIN)
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


SHIM_BUILD = "build"
SHIM_SOURCE = os.path.join(os.path.dirname(os.path.abspath(cni.__file__)), "shim.c")

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
    shim: str | None = SHIM_BUILD,
) -> tuple[str, str | None, str]:
    """Write the plugin into ``bin_dir`` and (if given) a conflist into ``conf_dir``; the
    paths are the node's, written under ``host_root``.  With ``copy_to`` the Python plugin
    runs from its own copy there instead of this installation's package directory.
    ``shim``: SHIM_BUILD (compile it if a C compiler is here), a prebuilt binary's path,
    or None (the Python plugin only).  Returns the plugin's path, the conflist's, and a
    sentence saying which plugin runtimes will exec."""
    source = _package_root()
    if copy_to is not None:
        for module in PLUGIN_MODULES:
            target = _under(host_root, os.path.join(copy_to, module))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copyfile(os.path.join(source, module), target + ".tmp")
            os.replace(target + ".tmp", target)
        source = copy_to
    os.makedirs(_under(host_root, bin_dir), exist_ok=True)
    launcher = LAUNCHER.format(python=python, source=source)
    # The Python plugin first: a shim already installed may exec it meanwhile.
    _write(_under(host_root, os.path.join(bin_dir, PYTHON_PLUGIN_NAME)), launcher.encode())
    path = os.path.join(bin_dir, PLUGIN_NAME)
    binary, how = _shim_binary(shim)
    _write(_under(host_root, path), launcher.encode() if binary is None else binary)
    conf_path = None
    if conf_dir is not None:
        os.makedirs(_under(host_root, conf_dir), exist_ok=True)
        conf_path = os.path.join(conf_dir, CONFLIST_NAME)
        tmp = _under(host_root, conf_path) + ".tmp"
        with open(tmp, "w") as f:
            json.dump(conflist(network, agent_socket, cni_version, name), f, indent=2)
        os.replace(tmp, _under(host_root, conf_path))
    return path, conf_path, how


def _write(path: str, data: bytes) -> None:
    """An executable written whole: a runtime exec'ing it sees the old file or the new."""
    with open(path + ".tmp", "wb") as f:
        f.write(data)
    os.chmod(path + ".tmp", 0o755)
    os.replace(path + ".tmp", path)


def _shim_binary(shim: str | None) -> tuple[bytes | None, str]:
    """The shim's bytes (None: install the Python plugin as ``ovs-overlay``) and why."""
    if shim is None:
        return None, "the Python plugin (--no-shim)"
    if shim != SHIM_BUILD:
        with open(shim, "rb") as f:
            return f.read(), f"the shim from {shim}, the Python plugin beside it"
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None, (
            "the Python plugin: no C compiler to build the shim (install gcc, or pass "
            "--shim with a prebuilt one, for a pod start ~20 ms faster)"
        )
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "shim")
        proc = subprocess.run(
            [compiler, "-O2", "-o", out, SHIM_SOURCE],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"compiling {SHIM_SOURCE} failed: {proc.stderr.strip()}")
        with open(out, "rb") as f:
            return f.read(), "the shim (compiled here), the Python plugin beside it"


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
    shim = p.add_mutually_exclusive_group()
    shim.add_argument(
        "--shim",
        default=SHIM_BUILD,
        metavar="PATH",
        help="a prebuilt shim (cni/shim.c) to install as the plugin (default: compile it "
        "with this machine's C compiler, if any)",
    )
    shim.add_argument(
        "--no-shim",
        dest="shim",
        action="store_const",
        const=None,
        help="install the Python plugin as the plugin",
    )
    p.set_defaults(func=cmd_install)


def cmd_install(args) -> int:
    path, conf_path, how = install(
        args.bin_dir,
        args.conf_dir,
        args.network,
        args.agent_socket,
        host_root=args.host_root,
        python=args.python,
        copy_to=args.copy_to,
        shim=args.shim,
    )
    print(f"installed {path}: {how}")
    print(f"wrote {conf_path}")
    return 0
