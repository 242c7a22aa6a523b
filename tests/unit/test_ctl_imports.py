"""``ovs-overlayctl`` imports only the chosen command's module: ``apply`` and ``get`` on a
store must not pay for the lab, OVSDB's client (eventlet), pyroute2 or os-ken
(ctl/main.py).  Each case runs in a fresh interpreter: this one has them all loaded."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from ctl import main as ctl_main

HEAVY = ("eventlet", "os_ken", "ovsdbapp", "pyroute2", "lab.lab", "controller.agent")
POLICY = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress]}
"""


def run_ctl(argv: list[str]) -> subprocess.CompletedProcess:
    """``main(argv)`` in a fresh interpreter; prints which HEAVY modules it loaded."""
    code = textwrap.dedent(
        f"""
        import sys
        from ctl.main import main
        rc = main({argv!r})
        print("loaded:", ",".join(m for m in {HEAVY!r} if m in sys.modules))
        sys.exit(rc)
        """
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


@pytest.mark.parametrize(
    "argv",
    [
        ["apply", "-f", "{manifest}"],
        ["get", "networkpolicies", "-A"],
        ["delete", "-f", "{manifest}"],
    ],
)
def test_store_commands_import_no_lab_ovsdb_or_os_ken(tmp_path, argv):
    manifest = tmp_path / "policy.yaml"
    manifest.write_text(POLICY)
    store = f"sqlite://{tmp_path}/state.db"
    if argv[0] != "apply":  # something to get and delete
        assert run_ctl(["apply", "--store", store, "-f", str(manifest)]).returncode == 0
    done = run_ctl([*(a.format(manifest=manifest) for a in argv), "--store", store])
    assert done.returncode == 0, done.stderr
    assert "deny-all" in done.stdout
    assert done.stdout.splitlines()[-1] == "loaded: ", done.stdout


def test_help_and_errors_still_name_every_command(capsys):
    with pytest.raises(SystemExit):
        ctl_main.main(["--help"])
    listed = capsys.readouterr().out
    for command in (*ctl_main.COMMANDS, ctl_main.CONFIG_REFERENCE):
        assert command in listed
    with pytest.raises(SystemExit):
        ctl_main.main(["-v", "no-such-command"])
    assert "invalid choice: 'no-such-command'" in capsys.readouterr().err


def test_the_command_is_the_first_word_after_the_global_flags():
    assert ctl_main.command_of(["-v", "get", "pods"]) == "get"
    assert ctl_main.command_of(["--verbose", "--help"]) is None
    assert ctl_main.command_of([]) is None


def test_an_expected_error_of_a_loaded_module_is_one_line(tmp_path, capsys):
    """A command's own error (here a KvError class from store.kv, loaded by ``get``) ends
    as its message alone, without the class name."""
    bad = tmp_path / "missing" / "state.db"
    rc = ctl_main.main(["get", "pods", "--store", f"sqlite://{bad}"])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("ovs-overlayctl: ") and err.count("\n") == 1, err
