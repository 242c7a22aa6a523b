"""``docker run`` on an ovs-overlay network until the container is reachable from
another host; ``docker rm``.

Run as root from the repo root:  .venv/bin/python bench/docker_run.py [--runs 30]

A 2-host lab (SQLite store) with Debian's dockerd on both hosts (``lab docker start``),
one Docker network ``blue`` on each onto the lab's network ``default``.  Each run is
``docker run -d --network blue --ip ADDR`` on h1 ("run": the docker CLI's exit, dockerd's
whole start of the container: its IpamDriver and NetworkDriver calls to the agent, the
sandbox, runc), then at once a ping from h2's namespace (the node, reaching containers
from its gateway address as it reaches pods), one request every 2 ms until the first
answer (``ping -c1 -w10 -i0.002``: 2 ms granularity): "reachable" is from the run's
start to that answer (it includes h2's agent learning the container's endpoint).  A ping
started before the container exists measures Linux's ARP retry instead (1 s: its first
ARP goes unanswered), so it starts after.  Then ``docker rm -f``, timed.  The containers
run one after another.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lab import docker, lab, naming  # noqa: E402

HOSTS = ("h1", "h2")
NETWORK = "blue"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    name = "b" + secrets.token_hex(3)
    lab.up(name, len(HOSTS))
    try:
        paths = {}
        for host in HOSTS:
            docker.control(name, host, "start")
            paths[host] = docker.DockerPaths.of_host(
                lab.LabPaths(naming.DEFAULT_STATE_ROOT, name).host(host)
            )
            docker.cli(
                paths[host],
                *("network", "create", "-d", "ovs-overlay", "--ipam-driver", "ovs-overlay"),
                *("--subnet", naming.DEFAULT_CIDR),
                *("--ipam-opt", f"network={naming.DEFAULT_NETWORK}"),
                *("--opt", f"network={naming.DEFAULT_NETWORK}", NETWORK),
            )
        run, reach, rm = [], [], []
        h2 = naming.host_namespace(name, "h2")
        for i in range(args.runs):
            ip = f"100.64.250.{10 + i}"
            start = time.perf_counter()
            docker.cli(
                paths["h1"],
                *("run", "-d", "--name", f"c{i}", "--network", NETWORK, "--ip", ip),
                *(docker.IMAGE, "sleep", "3600"),
            )
            run.append(time.perf_counter() - start)
            pinger = subprocess.Popen(
                ["ip", "netns", "exec", h2, "ping", "-n", "-q", "-c1", "-w10", "-i0.002", ip],
                stdout=subprocess.DEVNULL,
            )
            if pinger.wait() != 0:
                raise SystemExit(f"container c{i} at {ip} never answered h2")
            reach.append(time.perf_counter() - start)
            start = time.perf_counter()
            docker.cli(paths["h1"], "rm", "-f", f"c{i}")
            rm.append(time.perf_counter() - start)
        for label, values in (
            ("docker run (CLI exit)", run),
            ("docker run to reachable from h2", reach),
            ("docker rm -f", rm),
        ):
            print(f"{label:32s} {_summary(values)}")
    finally:
        lab.down(name)


def _summary(seconds: list[float]) -> str:
    ms = sorted(s * 1000 for s in seconds)
    p95 = ms[min(len(ms) - 1, int(len(ms) * 0.95))]
    p50 = statistics.median(ms)
    return f"p50 {p50:6.0f} ms  p95 {p95:6.0f} ms  max {ms[-1]:6.0f} ms (n={len(ms)})"


if __name__ == "__main__":
    main()
