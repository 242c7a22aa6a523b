"""What the agent's pipeline state costs in memory: the cluster cache and the engine at
PEERS peers and ENDPOINTS remote endpoints, loaded as an agent's cold start loads them
(one listing of a real SQLite store, then the engine), then a full sync's flows built
and encoded as the reconciler sends them.  No switch, no os-ken: the state alone.

    .venv/bin/python -m bench.agent_memory [--peers 500] [--endpoints 10000] [--trace]

Prints VmRSS growth per step (after gc and glibc's malloc_trim, as the agent does after
a burst) and, with --trace, tracemalloc's top lines for the state that stays.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import tracemalloc

from bench.converge import endpoint, peer
from controller import heap
from controller.cluster_cache import ClusterCache
from openflow import encode
from openflow.diff import FlowAdd, replace_generation
from openflow.incremental import Engine
from store import open_cluster
from store.kv import Put

TXN_OPS = 100


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--peers", type=int, default=500)
    ap.add_argument("--endpoints", type=int, default=10_000)
    ap.add_argument("--trace", action="store_true", help="tracemalloc's top lines")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cluster = open_cluster(f"sqlite:///{os.path.join(tmp, 'cluster.db')}")
        cluster.create_network("default", 5001, "100.64.0.0/10")
        ops = [
            Put(f"hosts/{h}", json.dumps({"tunnel_ip": ip}))
            for h, ip in map(peer, range(args.peers))
        ]
        ops += [Put(k, v) for k, v, _ in (endpoint(i, args.peers) for i in range(args.endpoints))]
        for at in range(0, len(ops), TXN_OPS):
            cluster.kv.txn([], ops[at : at + TXN_OPS])
        del ops
        engine = Engine(tunnel_ofport=1, generation=2)

        def submit(changes) -> int:
            engine.apply(changes, messages=False)
            return 0

        heap.release()
        if args.trace:
            tracemalloc.start()
        base = rss_mb()
        start = time.perf_counter()
        cache = ClusterCache(cluster, "h1", "198.18.0.1", submit)
        cache.load()
        loaded = time.perf_counter() - start
        heap.release()
        after_load = rss_mb()
        snapshot = tracemalloc.take_snapshot() if args.trace else None
        start = time.perf_counter()
        size = count = 0
        for message in replace_generation([], engine.iter_flows(), engine.groups(), None):
            if isinstance(message, FlowAdd):
                size += len(encode.flow_add(message.flow, count))
                count += 1
        synced = time.perf_counter() - start
        heap.release()
        after_sync = rss_mb()
        cluster.close()
    print(f"{args.peers} peers, {args.endpoints} remote endpoints, {count} flows")
    print(f"load (list + engine): {loaded:.2f} s, RSS +{after_load - base:.1f} MB")
    print(f"full sync (build + encode {size / 1e6:.1f} MB): {synced:.2f} s, ", end="")
    print(f"RSS {after_sync - after_load:+.1f} MB after it")
    if snapshot is not None:
        stats = snapshot.statistics("lineno")
        print(f"tracemalloc after load: {sum(s.size for s in stats) / 1e6:.1f} MB; top lines:")
        for stat in stats[:15]:
            frame = stat.traceback[0]
            where = f"{os.path.relpath(frame.filename)}:{frame.lineno}"
            print(f"  {stat.size / 1e6:6.2f} MB {stat.count:7d}  {where}")


if __name__ == "__main__":
    main()
