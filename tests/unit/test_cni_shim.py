"""The compiled CNI shim (cni/shim.c) where no agent answers it: it hands every request to
the Python plugin installed beside it, stdin and environment intact, so its answers are
the plugin's byte for byte; an agent that takes a request and goes silent gets code 11,
without the request being made twice.  (With a live agent: tests/lab/test_cni.py.)"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading

import pytest

from ctl import cni_install

ENV = {"CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0"}


@pytest.fixture(scope="module")
def bin_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cni-bin")
    _, _, how = cni_install.install(str(d), None, "default", "")
    assert how.startswith("the shim (compiled here)"), how
    return d


def conf(sock: str, **over) -> str:
    c = {"cniVersion": "1.0.0", "name": "n", "type": "ovs-overlay", "agentSocket": sock}
    c.update(over)
    return json.dumps(c)


def run(path, command: str, stdin: str, **env: str) -> tuple[int, str, str]:
    proc = subprocess.run(
        [str(path)],
        input=stdin.encode(),
        capture_output=True,
        env={"PATH": "/usr/bin:/bin", "CNI_COMMAND": command, **ENV, **env},
        cwd="/",
        timeout=60,
    )
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def test_it_compiles_without_a_warning(tmp_path):
    proc = subprocess.run(
        ["cc", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(tmp_path / "shim")]
        + [cni_install.SHIM_SOURCE],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    "command,stdin,env",
    [
        ("VERSION", '{"cniVersion": "0.4.0"}', {}),
        ("ADD", conf("/nonexistent/agent.sock"), {}),  # no agent: 11 naming the socket
        ("ADD", conf("/nonexistent/agent.sock"), {"CNI_CONTAINERID": "-bad"}),
        ("ADD", "{not json", {}),
        ("ADD", "", {}),
        ("DEL", conf("/nonexistent/a\\u0067ent.sock"), {}),  # escaped: not read by the shim
        ("ADD", conf("/nonexistent/agent.sock", name='n\x01\t"\\ é'), {}),  # control chars
        ("ADD", conf("/nonexistent/agent.sock", padding="x" * 600_000), {}),  # too big to send
        ("CHECK", conf("/nonexistent/agent.sock", prevResult={"agentSocket": "/x"}), {}),
        ("FROB", conf("/nonexistent/agent.sock"), {"CNI_ARGS": "IP=1.2.3.4;X=\u00e9"}),
    ],
)
def test_without_an_agent_its_answer_is_the_python_plugins(bin_dir, command, stdin, env):
    shim = run(bin_dir / "ovs-overlay", command, stdin, **env)
    python = run(bin_dir / "ovs-overlay-python", command, stdin, **env)
    assert shim == python
    plugin = subprocess.run(
        [sys.executable, "-m", "cni.plugin"],
        input=stdin.encode(),
        capture_output=True,
        env={"PATH": "/usr/bin:/bin", "CNI_COMMAND": command, **ENV, **env},
    )
    assert shim[:2] == (plugin.returncode, plugin.stdout.decode())


def test_with_no_python_plugin_beside_it_it_says_how_to_mend_the_install(tmp_path, bin_dir):
    lone = tmp_path / "ovs-overlay"
    lone.write_bytes((bin_dir / "ovs-overlay").read_bytes())
    lone.chmod(0o755)
    rc, out, _ = run(lone, "ADD", conf("/nonexistent/agent.sock"))
    assert rc == 1
    assert json.loads(out)["code"] == 5 and "ovs-overlayctl install-cni" in json.loads(out)["msg"]


class _Agent:
    """A unix socket that reads each request whole and answers ``answer`` (None: closes
    without a word, as an agent that died mid-request)."""

    def __init__(self, path: str, answer: bytes | None):
        self.requests: list[dict] = []
        self._answer = answer
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(path)
        self._sock.listen()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with conn:
                chunks = []
                while chunk := conn.recv(65536):
                    chunks.append(chunk)
                self.requests.append(json.loads(b"".join(chunks)))
                if self._answer is not None:
                    conn.sendall(self._answer)

    def close(self) -> None:
        self._sock.close()


def test_a_silent_agent_gets_code_11_and_the_request_is_not_made_again(tmp_path, bin_dir):
    path = str(tmp_path / "agent.sock")
    agent = _Agent(path, None)
    try:
        rc, out, _ = run(bin_dir / "ovs-overlay", "ADD", conf(path), CNI_ARGS="K8S_POD_NAME=a")
    finally:
        agent.close()
    assert rc == 1
    answer = json.loads(out)
    assert (
        answer["code"] == 11
        and f"the ovs-overlay agent at {path} is not answering" in answer["msg"]
    )
    # One request, the shim's: its CNI_* variables and stdin as the runtime gave them.
    [request] = agent.requests
    assert request == {
        "op": "cni",
        "env": {"CNI_COMMAND": "ADD", **ENV, "CNI_ARGS": "K8S_POD_NAME=a"},
        "stdin": conf(path),
    }


def test_an_answer_it_cannot_read_hands_the_request_to_the_python_plugin(tmp_path, bin_dir):
    """An agent answering "fallback" (or anything but the shim's header): the Python plugin
    serves the request itself, over the socket."""
    path = str(tmp_path / "agent.sock")
    agent = _Agent(path, b'{"ok": false, "code": 7, "error": "no such op"}')
    try:
        rc, out, _ = run(bin_dir / "ovs-overlay", "ADD", conf(path))
    finally:
        agent.close()
    assert (rc, json.loads(out)["msg"]) == (1, "no such op")
    assert [r["op"] for r in agent.requests] == ["cni", "attach"]


def test_the_exit_code_and_stdout_are_the_agents(tmp_path, bin_dir):
    path = str(tmp_path / "agent.sock")
    agent = _Agent(path, b'ovs-overlay-cni 1 3\n{"any": "bytes"}\n')
    try:
        rc, out, _ = run(bin_dir / "ovs-overlay", "DEL", conf(path))
    finally:
        agent.close()
    assert (rc, out) == (3, '{"any": "bytes"}\n')
    assert os.path.exists(path)
