"""The same agent app under Ryu 4.34's ryu-manager (through controller.ryu_launcher)."""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess

import pytest

from lab import agent_proc, lab, naming, netns
from tests.helpers import host_paths, ovs, scrape

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RYU_PYTHON = os.path.join(REPO, ".venv-ryu", "bin", "python")


def test_the_app_runs_under_ryu_manager_and_installs_the_pipeline():
    if not os.path.exists(RYU_PYTHON):
        pytest.fail(".venv-ryu is missing; './quickstart.sh test' builds it")
    name = "t" + secrets.token_hex(3)
    proc = None
    try:
        lab.up(name, 1)
        paths = host_paths(name)
        agent_proc.stop(paths)  # the os-ken agent goes; generation 1 stays on br-int
        env = {**paths.env(), "PYTHONPATH": REPO}
        with open(os.path.join(paths.logdir, "agent.log"), "ab") as log:
            proc = subprocess.Popen(
                [
                    RYU_PYTHON,
                    "-m",
                    "controller.ryu_launcher",
                    "--config-file",
                    agent_proc.config_path(paths),
                ],
                stdout=log,
                stderr=log,
                env=env,
                preexec_fn=lambda: netns.enter_namespace(naming.host_namespace(name, "h1")),
            )
        agent_proc.wait_ready(paths, proc)
        with open(os.path.join(paths.logdir, "agent.log")) as f:
            # In the agent's key=value format: the app installs it on ryu-manager's handlers.
            assert 'msg="starting the agent under ryu"' in f.read()
        assert scrape(name, "h1")[("ovs_overlay_ready", ())] == 1  # metrics under Ryu too
        flows = ovs(
            name, "h1", "ovs-ofctl", "-O", "OpenFlow13", "--no-stats", "dump-flows", "br-int"
        )
        # Each flow's own cookie (a learn action names the learned flows' cookie too).
        cookies = re.findall(r"^\s*cookie=(0x[0-9a-f]+)", flows, re.M)
        generations = {int(c, 16) & 0xFFFFFFFF for c in cookies}
        assert generations == {2}  # Ryu's agent replaced os-ken's generation 1
        assert "table=250" in flows
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        lab.down(name)
