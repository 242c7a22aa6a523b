"""How long until traffic flows again after a part restarts.

Run as root from the repo root:  .venv/bin/python bench/restart.py [--repeat 5]

- ovs-vswitchd restart (lab.restart_vswitchd: flow-restore-wait set, vswitchd killed and
  started): time from the new vswitchd's start until the agent has replayed the pipeline
  and cleared flow-restore-wait (vswitchd forwards from that moment), polled every 5 ms.
- agent restart (kill -9, then start): time until the new agent reports ready (its new
  generation installed and the old one removed); traffic never stops meanwhile (the
  lab test sends 100 packets/s through it and loses none).
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lab import agent_proc, lab, naming, ovs_host, pods  # noqa: E402
from ovsdb.client import OvsdbClient  # noqa: E402


def vswitchd_restart(name: str) -> float:
    paths = lab.LabPaths(naming.DEFAULT_STATE_ROOT, name).host("h2")
    with OvsdbClient(paths.db_sock) as client:
        client.set_flow_restore_wait(True)
        ovs_host.kill_daemon(paths, "ovs-vswitchd")
        start = time.monotonic()
        ovs_host.start_vswitchd(paths, naming.host_namespace(name, "h2"))
        lab._configure_underlay_ip(naming.host_namespace(name, "h2"), 2)
        while client.flow_restore_wait():
            time.sleep(0.005)
        return time.monotonic() - start


def agent_restart(name: str) -> float:
    paths = lab.LabPaths(naming.DEFAULT_STATE_ROOT, name).host("h1")
    agent_proc.stop(paths, signal.SIGKILL)
    start = time.monotonic()
    proc = agent_proc.start(paths, naming.host_namespace(name, "h1"))
    agent_proc.wait_ready(paths, proc)
    return time.monotonic() - start


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    name = "b" + secrets.token_hex(3)
    try:
        lab.up(name, 2)
        pods.pod_add(name, "h1", "p1")
        b = pods.pod_add(name, "h2", "p1")
        results = {}
        for label, fn in (
            ("ovs-vswitchd restart", vswitchd_restart),
            ("agent kill -9 + start", agent_restart),
        ):
            runs = []
            for _ in range(args.repeat):
                runs.append(fn(name))
                if not lab.ping_from(pods.pod_namespace(name, "h1", "p1"), b["ip"], count=3):
                    raise RuntimeError(f"pods cannot reach each other after {label}")
            results[label] = runs
    finally:
        lab.down(name)
    print("| restart | median s | min–max s |")
    print("|---|---:|---:|")
    for label, runs in results.items():
        print(f"| {label} | {statistics.median(runs):.3f} | {min(runs):.3f}–{max(runs):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
