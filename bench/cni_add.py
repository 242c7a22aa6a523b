"""CNI ADD latency until the pod reaches a pod on another host; DEL latency; pods/s.

Run as root from the repo root:  .venv/bin/python bench/cni_add.py [--sequential 40]
[--store etcd] [--plugin ovs-overlay-python]

A 2-host lab, its cluster state in SQLite (default) or in one etcd member (``--store
etcd``, reached by the agents over the lab's underlay). An "anchor" pod runs on h2. Each
measured ADD execs the installed plugin exactly as a runtime does (env + stdin, new
process), then pings the anchor from the new pod until it answers (one ping process
sending a request every 2 ms, ``ping -c1 -w10 -i0.002``, so the measure has 2 ms
granularity): the time from exec to the first answer is "ADD to reachable" (it includes
h2's agent learning the new pod, since the answer must come back). "ADD" alone is exec
to the plugin's exit. For the throughput run it also prints the CPU each process spent
per pod (from /proc, and the plugins' rusage): where a pod start goes.  ``--plugin``
picks which installed executable runtimes would exec: the C shim the agent answers
(``ovs-overlay``, the default) or the Python plugin (``ovs-overlay-python``), for an A/B
of the two on the same code and machine.
"""

from __future__ import annotations

import argparse
import os
import resource
import secrets
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ctl import cni_install  # noqa: E402
from lab import agent_proc, lab, naming, netns, ovs_host, pods  # noqa: E402

PLUGIN = cni_install.PLUGIN_NAME  # set from --plugin


def plugin(name: str, command: str, container: str) -> float:
    start = time.perf_counter()
    rc, out = pods.cni_exec(
        lab.LabPaths(naming.DEFAULT_STATE_ROOT, name), "h1", command, container, plugin=PLUGIN
    )
    if rc != 0:
        raise RuntimeError(f"{command} {container}: {out}")
    return time.perf_counter() - start


def add_until_reachable(name: str, container: str, anchor_ip: str) -> tuple[float, float]:
    netns.create_namespace(container)
    start = time.perf_counter()
    add = plugin(name, "ADD", container)
    if subprocess.run(
        ["ping", "-n", "-q", "-c1", "-w10", "-i0.002", anchor_ip],
        capture_output=True,
        preexec_fn=lambda: netns.enter_namespace(container),
    ).returncode:
        raise RuntimeError(f"{container} never reached {anchor_ip}")
    return add, time.perf_counter() - start


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a running process (fields 14 and 15 of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def daemons(name: str) -> dict[str, int]:
    paths = lab.LabPaths(naming.DEFAULT_STATE_ROOT, name)
    found = {}
    for host in ("h1", "h2"):
        hp = paths.host(host)
        found[f"{host} agent"] = agent_proc.agent_pid(hp)
        for daemon in ("ovs-vswitchd", "ovsdb-server"):
            found[f"{host} {daemon}"] = ovs_host.daemon_pid(hp, daemon)
    return found


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def row(label: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (
        f"| {label} | {len(ms)} | {pct(ms, 50):.0f} | {pct(ms, 95):.0f} | {pct(ms, 99):.0f} "
        f"| {max(ms):.0f} |"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sequential", type=int, default=40)
    p.add_argument("--parallel", type=int, default=10)
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--throughput-pods", type=int, default=100)
    p.add_argument("--store", choices=lab.STORES, default="sqlite")
    p.add_argument(
        "--plugin",
        choices=(cni_install.PLUGIN_NAME, cni_install.PYTHON_PLUGIN_NAME),
        default=cni_install.PLUGIN_NAME,
    )
    args = p.parse_args()
    global PLUGIN
    PLUGIN = args.plugin
    name = "b" + secrets.token_hex(3)
    made: list[str] = []
    try:
        lab.up(name, 2, store=args.store)
        anchor = pods.pod_add(name, "h2", "anchor")["ip"]

        def ns(tag: str) -> str:
            made.append(f"{name}-h1-{tag}")
            return made[-1]

        seq = [add_until_reachable(name, ns(f"s{i}"), anchor) for i in range(args.sequential)]
        par = []
        with ThreadPoolExecutor(max_workers=args.parallel) as pool:
            for b in range(args.batches):
                batch = [ns(f"p{b}x{i}") for i in range(args.parallel)]
                par += list(pool.map(lambda c: add_until_reachable(name, c, anchor), batch))
        dels = [plugin(name, "DEL", c) for c in made]
        for c in made:
            netns.delete_namespace(c)
        made.clear()

        batch = [ns(f"t{i}") for i in range(args.throughput_pods)]
        for c in batch:
            netns.create_namespace(c)
        procs = daemons(name)
        cpu_before = {k: cpu_seconds(pid) for k, pid in procs.items()}
        plugins_before = children_cpu()
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.parallel) as pool:
            list(pool.map(lambda c: plugin(name, "ADD", c), batch))
        rate = len(batch) / (time.perf_counter() - start)
        per_pod = {k: (cpu_seconds(pid) - cpu_before[k]) / len(batch) for k, pid in procs.items()}
        per_pod["plugin processes"] = (children_cpu() - plugins_before) / len(batch)
    finally:
        for c in made:
            netns.delete_namespace(c)
        lab.down(name)
    print(f"store: {args.store}, plugin: {args.plugin}\n")
    print("| measure | n | p50 ms | p95 ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|---:|---:|")
    print(row("ADD, sequential", [a for a, _ in seq]))
    print(row("ADD to reachable, sequential", [r for _, r in seq]))
    print(row(f"ADD, {args.parallel} in parallel", [a for a, _ in par]))
    print(row(f"ADD to reachable, {args.parallel} in parallel", [r for _, r in par]))
    print(row("DEL, sequential", dels))
    print(f"\n{args.throughput_pods} pods ADDed with {args.parallel} at a time: {rate:.1f} pods/s")
    print("\n| CPU per pod (throughput run) | ms |")
    print("|---|---:|")
    for what, seconds in per_pod.items():
        print(f"| {what} | {seconds * 1000:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
