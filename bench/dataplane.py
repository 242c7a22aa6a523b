"""Pod-to-pod TCP across two lab hosts, and pod to the outside through egress: our pipeline
against a one-NORMAL-flow baseline, and how many flows a host carries as pods and hosts grow.

Run as root from the repo root:  .venv/bin/python bench/dataplane.py [--seconds 5] [--repeat 3]

Throughput: a 2-host lab, one pod per host, ``iperf3 -t SECONDS`` from h1's pod to h2's, and
from h1's pod to the lab's outside (L-ext, 198.18.255.254) through h1's gateway and egress
SNAT (the host's nftables table stays in place for the baseline: only br-int differs; with
one NORMAL flow the pod's ARP for 100.64.0.1 is answered by the host's gateway port).
"pipeline" is the agents' br-int.  "NORMAL" is the same lab with the agents stopped, their
flows deleted, a fixed VXLAN port (remote_ip = the other host, key 5001) on each br-int and
the single flow ``actions=NORMAL``: the cheapest way OVS can carry the same packets.  The
pipeline runs first, then the baseline, on the same lab and pods.

Flow counts come from the pure pipeline (openflow.pipeline.build) for the given sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lab import agent_proc, lab, naming, netns, pods  # noqa: E402
from openflow import pipeline  # noqa: E402
from openflow.state import (  # noqa: E402
    Gateway,
    HostState,
    LocalPort,
    NetworkSpec,
    RemoteEndpoint,
)


def iperf(lab_name: str, src: dict, dst: dict, seconds: int) -> float:
    """Gbit/s received, from src's pod to dst's pod (or to a ``dst`` with ``ns``: any
    namespace's address)."""
    dst_ns = dst.get("ns") or pods.pod_namespace(lab_name, dst["host"], dst["pod"])
    server = subprocess.Popen(
        ["iperf3", "-s", "-1", "-B", dst["ip"]],
        stdout=subprocess.DEVNULL,
        preexec_fn=lambda: netns.enter_namespace(dst_ns),
    )
    try:
        for _ in range(100):
            if ":5201" in netns.run_in_namespace(dst_ns, ["ss", "-ltn"]).stdout:
                break
        out = netns.run_in_namespace(
            pods.pod_namespace(lab_name, src["host"], src["pod"]),
            ["iperf3", "-c", dst["ip"], "-t", str(seconds), "-J"],
            timeout=seconds + 30,
        ).stdout
    finally:
        server.wait(timeout=30)
    return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9


def to_normal(lab_name: str) -> None:
    """Replace the pipeline with a fixed VXLAN port and one NORMAL flow on both hosts."""
    for index, peer in ((1, 2), (2, 1)):
        host = naming.host_name(index)
        agent_proc.stop(lab.LabPaths(naming.DEFAULT_STATE_ROOT, lab_name).host(host))
        env = lab.host_env(lab_name, host)
        ns = naming.host_namespace(lab_name, host)
        for argv in (
            [
                "ovs-vsctl",
                "add-port",
                "br-int",
                "vx-base",
                "--",
                "set",
                "interface",
                "vx-base",
                "type=vxlan",
                f"options:remote_ip={naming.underlay_ip(peer)}",
                # no local_ip: the source comes from the agent's OVS route, as for ours
                "options:key=5001",
            ],
            ["ovs-ofctl", "-O", "OpenFlow13", "del-flows", "br-int"],
            ["ovs-ofctl", "-O", "OpenFlow13", "add-flow", "br-int", "priority=0,actions=NORMAL"],
        ):
            netns.run_in_namespace(ns, argv, env=env)


def throughput(seconds: int, repeat: int) -> None:
    name = "b" + secrets.token_hex(3)
    try:
        lab.up(name, 2)
        a = {**pods.pod_add(name, "h1", "p1"), "host": "h1", "pod": "p1"}
        b = {**pods.pod_add(name, "h2", "p1"), "host": "h2", "pod": "p1"}
        ext = {"ns": naming.ext_namespace(name), "ip": naming.EXT_IP}
        ours = [iperf(name, a, b, seconds) for _ in range(repeat)]
        ours_out = [iperf(name, a, ext, seconds) for _ in range(repeat)]
        to_normal(name)
        base = [iperf(name, a, b, seconds) for _ in range(repeat)]
        base_out = [iperf(name, a, ext, seconds) for _ in range(repeat)]
    finally:
        lab.down(name)
    for what, mine, normal in (("pod to pod", ours, base), ("pod to outside", ours_out, base_out)):
        mo, mb = statistics.median(mine), statistics.median(normal)
        print(f"| {what}: pipeline | {mo:.2f} | {', '.join(f'{x:.2f}' for x in mine)} |")
        print(f"| {what}: one NORMAL flow | {mb:.2f} | {', '.join(f'{x:.2f}' for x in normal)} |")
        print(f"\n{what}: ratio pipeline / NORMAL (medians): {mo / mb:.3f}\n")


def flow_counts() -> None:
    print("\n| local pods | remote pods | hosts | networks | flows | groups |")
    print("|---:|---:|---:|---:|---:|---:|")
    for local, remote, hosts, nets in [
        (1, 0, 2, 1),
        (10, 10, 2, 1),
        (10, 100, 10, 1),
        (50, 500, 10, 1),
        (50, 1000, 50, 1),
        (50, 1000, 50, 5),
        (100, 5000, 100, 1),
    ]:
        networks = tuple(NetworkSpec(f"n{i}", 5001 + i, 1 + i) for i in range(nets))
        peers = tuple(f"198.18.{1 + i // 250}.{1 + i % 250}" for i in range(hosts - 1))
        # Every host has a gateway in the first network; other hosts' are remote endpoints.
        state = HostState(
            tunnel_ofport=1,
            networks=networks,
            peers=peers,
            local=tuple(
                LocalPort(f"n{i % nets}", 10 + i, _mac(0, i), _ip(0, i)) for i in range(local)
            ),
            remote=tuple(
                RemoteEndpoint(f"n{i % nets}", peers[i % len(peers)], _mac(1, i), _ip(1, i))
                for i in range(remote)
            )
            + tuple(RemoteEndpoint("n0", p, _mac(2, i), _ip(2, i)) for i, p in enumerate(peers)),
            gateways=(Gateway("n0", 2, _mac(3, 0), _ip(3, 0), "100.64.0.1"),),
        )
        flows, groups = pipeline.build(state, 1)
        print(f"| {local} | {remote} | {hosts} | {nets} | {len(flows)} | {len(groups)} |")


def _mac(kind: int, i: int) -> str:
    return f"0a:58:{kind:02x}:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}"


def _ip(kind: int, i: int) -> str:
    return f"100.{64 + kind}.{i >> 8 & 255}.{i & 255}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    print("| data path | median Gbit/s | runs |")
    print("|---|---:|---|")
    throughput(args.seconds, args.repeat)
    flow_counts()
    return 0


if __name__ == "__main__":
    sys.exit(main())
