"""Running an OVS tool (``ovs-ofctl``, ``ovs-appctl``) against this host's daemons, for the
commands that observe the switch: a missing tool, a hung vswitchd or a refusal is one
sentence naming the fix, never a traceback."""

from __future__ import annotations

import subprocess

TIMEOUT = 30.0


def run_tool(argv: list[str], env: dict[str, str], doing: str) -> str:
    """``argv``'s stdout; ValueError saying it could not do ``doing`` ("dump br-int's
    flows") and why.  ``env`` carries OVS_RUNDIR, where the daemons' sockets are."""
    tool = argv[0]
    try:
        done = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False
        )
    except FileNotFoundError:
        raise ValueError(f"{tool} is not installed; install openvswitch-common") from None
    except subprocess.TimeoutExpired:
        raise ValueError(
            f"{tool} did not {doing} in {TIMEOUT:.0f} s; is ovs-vswitchd busy?"
        ) from None
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise ValueError(
            f"{tool} could not {doing} ({why}); check that ovs-vswitchd runs "
            f"with its sockets in {env.get('OVS_RUNDIR')}"
        )
    return done.stdout
