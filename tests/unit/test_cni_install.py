"""`ovs-overlayctl install-cni`: the plugin installed as a runtime runs it, including from a
container onto the node (the DaemonSet's init container): its own copy of its modules, the
node's interpreter, every file under the node's root."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ctl import cni_install


def run_plugin(path: str, command: str, stdin: dict, **env: str) -> tuple[int, dict]:
    """Exec the plugin as a runtime does: a bare environment, cwd /, config on stdin."""
    proc = subprocess.run(
        [path],
        input=json.dumps(stdin),
        capture_output=True,
        text=True,
        cwd="/",
        env={"PATH": "/usr/bin:/bin", "CNI_COMMAND": command, **env},
        timeout=30,
    )
    return proc.returncode, json.loads(proc.stdout)


def test_a_copied_plugin_runs_from_its_copy_alone(tmp_path):
    lib = tmp_path / "lib"
    path, conf, _ = cni_install.install(
        str(tmp_path / "bin"), str(tmp_path / "net.d"), "default", "/nonexistent/agent.sock",
        copy_to=str(lib),
    )  # fmt: skip
    assert sorted(
        os.path.relpath(os.path.join(d, f), lib) for d, _, fs in os.walk(lib) for f in fs
    ) == sorted(cni_install.PLUGIN_MODULES)
    config = json.loads(Path(conf).read_text())
    rc, out = run_plugin(path, "VERSION", config)
    assert rc == 0 and "1.0.0" in out["supportedVersions"], out
    # Its admission is in the copy too: a bad CNI_CONTAINERID is refused before the agent.
    rc, out = run_plugin(
        path, "ADD", {**config, **config["plugins"][0]},
        CNI_CONTAINERID="-bad", CNI_NETNS="/proc/self/ns/net", CNI_IFNAME="eth0",
    )  # fmt: skip
    assert rc == 1 and out["code"] == 4 and "CNI_CONTAINERID" in out["msg"], out


def test_from_a_container_every_path_written_is_the_nodes(tmp_path):
    root = tmp_path / "host"
    path, conf, _ = cni_install.install(
        "/opt/cni/bin", "/etc/cni/net.d", "default", "/run/ovs-overlay/agent.sock",
        host_root=str(root), python="/usr/bin/python3", copy_to="/opt/ovs-overlay/cni-plugin",
        shim=None,
    )  # fmt: skip
    assert (path, conf) == ("/opt/cni/bin/ovs-overlay", "/etc/cni/net.d/10-ovs-overlay.conflist")
    launcher = (root / "opt/cni/bin/ovs-overlay").read_text()
    assert launcher == (root / "opt/cni/bin/ovs-overlay-python").read_text()
    assert launcher.startswith("#!/usr/bin/python3 -S\n")
    assert "sys.path.insert(0, '/opt/ovs-overlay/cni-plugin')" in launcher
    assert sys.prefix not in launcher  # nothing of the container's installation
    assert (root / "opt/ovs-overlay/cni-plugin/cni/plugin.py").is_file()
    plugins = json.loads((root / "etc/cni/net.d/10-ovs-overlay.conflist").read_text())["plugins"]
    assert plugins == [
        {"type": "ovs-overlay", "network": "default", "agentSocket": "/run/ovs-overlay/agent.sock"}
    ]
