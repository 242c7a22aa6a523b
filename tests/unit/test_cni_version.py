import json
import subprocess
import sys

import pytest

from cni import plugin

PLUGIN = [sys.executable, "-m", "cni.plugin"]


def run_plugin(env, stdin):
    proc = subprocess.run(PLUGIN, input=stdin, env=env, capture_output=True, text=True)
    return proc.returncode, json.loads(proc.stdout)


def test_version_lists_every_supported_version():
    code, out = run_plugin({"CNI_COMMAND": "VERSION"}, '{"cniVersion":"1.0.0"}')
    assert code == 0
    assert out["cniVersion"] == "1.0.0"
    assert {"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"} <= set(out["supportedVersions"])


def test_version_answers_in_the_latest_version_for_an_unknown_one():
    assert plugin.version_result({"cniVersion": "9.9.9"})["cniVersion"] == "1.1.0"


@pytest.mark.parametrize(
    "env,stdin,code",
    [
        ({}, "{}", plugin.ERR_INVALID_ENV),
        ({"CNI_COMMAND": "VERSION"}, "{not json", plugin.ERR_DECODE),
        ({"CNI_COMMAND": "VERSION"}, "[1]", plugin.ERR_DECODE),
        ({"CNI_COMMAND": "ADD"}, '{"cniVersion":"1.0.0"}', plugin.ERR_INVALID_ENV),
    ],
)
def test_errors_are_valid_cni_error_json(env, stdin, code):
    rc, out = run_plugin(env, stdin)
    assert rc != 0
    assert out["code"] == code
    assert out["cniVersion"] in plugin.SUPPORTED_VERSIONS
    assert out["msg"]


def test_plugin_imports_only_the_standard_library():
    # Runtimes exec the plugin for every verb: a heavy import would add to pod start.
    code = "import sys, cni.plugin; print(' '.join(sorted(sys.modules)))"
    mods = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    for heavy in ("pyroute2", "ovs", "ovsdbapp", "os_ken", "eventlet"):
        assert heavy not in mods
