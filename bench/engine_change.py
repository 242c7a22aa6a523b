"""One change at scale in the pure pipeline: the full build + diff (what every change cost
before the incremental engine) against the engine's apply, at 500 peers and 10,000 remote
endpoints by default.  No switch, no store: the pure computation only.

    .venv/bin/python -m bench.engine_change [--peers 500] [--endpoints 10000] [--changes 100]
"""

from __future__ import annotations

import argparse
import ipaddress
import statistics
import time

from openflow import pipeline
from openflow.diff import diff
from openflow.incremental import Engine, Peer, Remove, Upsert
from openflow.state import HostState, LocalPort, NetworkSpec, RemoteEndpoint

NET = NetworkSpec("default", 5001, 1)


def _peer(i: int) -> str:
    return str(ipaddress.IPv4Address("198.18.0.2") + i)


def _endpoint(i: int, peers: int) -> RemoteEndpoint:
    addr = ipaddress.IPv4Address("100.64.0.0") + 256 + i
    mac = "0a:58:" + ":".join(f"{b:02x}" for b in addr.packed)
    return RemoteEndpoint("default", _peer(i % peers), mac, str(addr))


def _pct(samples: list[float], q: float) -> float:
    return sorted(samples)[min(len(samples) - 1, int(q * len(samples)))] * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--peers", type=int, default=500)
    ap.add_argument("--endpoints", type=int, default=10_000)
    ap.add_argument("--changes", type=int, default=100)
    args = ap.parse_args()
    locals_ = tuple(
        LocalPort("default", 10 + i, f"0a:00:00:00:00:{i:02x}", f"100.64.0.{10 + i}")
        for i in range(20)
    )
    remote = [_endpoint(i, args.peers) for i in range(args.endpoints)]
    peers = tuple(sorted(_peer(i) for i in range(args.peers)))

    # Before: every change rebuilt and diffed everything.
    state = HostState(1, (NET,), peers, locals_, tuple(remote))
    installed = pipeline.build(state, 1)
    full = []
    for n in range(min(args.changes, 20)):
        extra = _endpoint(args.endpoints + n, args.peers)
        start = time.perf_counter()
        new = HostState(1, (NET,), peers, locals_, (*state.remote, extra))
        desired = pipeline.build(new, 1)
        diff(*installed, *desired)
        full.append(time.perf_counter() - start)
        state, installed = new, desired

    # After: the engine.
    engine = Engine(tunnel_ofport=1, generation=1)
    start = time.perf_counter()
    engine.apply(
        [Upsert("networks/default", NET, (0,))]
        + [Upsert(f"hosts/{ip}", Peer(ip), (0,)) for ip in peers]
        + [Upsert(f"port/{p.ofport}", p, (0,)) for p in locals_]
        + [Upsert(f"endpoints/{i}", ep, (1, i)) for i, ep in enumerate(remote)]
    )
    load = time.perf_counter() - start
    inc = []
    for n in range(args.changes):
        key = f"endpoints/new{n}"
        start = time.perf_counter()
        engine.apply([Upsert(key, _endpoint(args.endpoints + n, args.peers), (2, n))])
        inc.append(time.perf_counter() - start)
        if n % 2:
            engine.apply([Remove(key)])
    print(f"{args.peers} peers, {args.endpoints} remote endpoints, {len(engine.flows())} flows")
    print(
        f"full build + diff per change: p50 {_pct(full, 0.5):.1f} ms, "
        f"p99 {_pct(full, 0.99):.1f} ms (n={len(full)})"
    )
    print(f"engine, initial load of everything: {load * 1000:.0f} ms")
    print(
        f"engine, one change: p50 {_pct(inc, 0.5):.3f} ms, p99 {_pct(inc, 0.99):.3f} ms, "
        f"mean {statistics.mean(inc) * 1000:.3f} ms (n={len(inc)})"
    )


if __name__ == "__main__":
    main()
