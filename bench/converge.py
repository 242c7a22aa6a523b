"""Convergence and scale of the agents on an etcd lab: host join, one agent at scale, soak.

Run as root from the repo root::

    .venv/bin/python bench/converge.py join [--sizes 5 10 20] [--repeat 3]
    .venv/bin/python bench/converge.py scale [--peers 500] [--endpoints 10000] [--changes 100]
    .venv/bin/python bench/converge.py soak [--cycles 10000] [--workers 4] [--every 1000]

Every mode builds its own lab with ``--store etcd`` and one etcd member, and removes it.

- ``join``: a lab of N-1 hosts, then ``lab host add`` makes host N.  The clock starts when
  the new host's ``hosts/hN`` record appears in etcd (read every 10 ms from the
  operator's namespace).  Every other host's clock stops when its ovs-vswitchd has the
  tunnel classifier flow with ``tun_src=<new host's IP>`` (read from vswitchd's OpenFlow
  log: ``SwitchLog``); the new host's clock stops at its agent's log line "generation G
  in place" (its first full sync, built from the store it listed after registering),
  checked afterwards against br-int: one ``tun_src`` flow per other host.  "join" is the
  latest of these, per run.
- ``scale``: one lab host (agent, real ovs-vswitchd).  The bench writes PEERS hosts
  (``hosts/peerNNN``, plain keys, tunnel IPs 198.18.2.1 onwards) and ENDPOINTS remote
  endpoints spread over them (``endpoints/default/peerNNN/ATT``) straight into etcd in
  transactions of 100 puts, and polls ``ovs-ofctl dump-aggregate br-int`` until br-int
  has every flow (the count before, plus one tunnel classifier flow per peer and two
  flows, ARP and L2, per endpoint).  Then a cold start: the agent is killed (SIGKILL)
  and started with all of it in the store; the time until its first full sync is in
  place.  The agent's RSS (VmRSS) after each.  Then CHANGES more endpoints, one at a
  time: from just before the store write until vswitchd has the endpoint's L2 flow
  (l2_forward, ``dl_dst=MAC``; ``SwitchLog``).
- ``soak``: one lab host; CYCLES CNI ADD + DEL pairs through the installed plugin (as a
  runtime execs it; a new container ID every cycle, WORKERS at a time, each worker in a
  namespace of its own), the agent's RSS sampled every EVERY cycles.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import secrets
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from controller.netns import namespace_path  # noqa: E402
from lab import agent_proc, lab, naming, netns, pods, running  # noqa: E402
from lab import etcd_members as etcd  # noqa: E402
from openflow.tables import L2_FORWARD  # noqa: E402
from store import open_kv  # noqa: E402
from store.kv import Put  # noqa: E402

TXN_OPS = 100  # etcd refuses a transaction of more than --max-txn-ops (128) operations
PEER_BASE = 0xC6120201  # 198.18.2.1: peers' tunnel IPs, clear of lab hosts and etcd members
ENDPOINT_BASE = 0x64408000  # 100.64.128.0: remote endpoints, inside the default network


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def ipv4(n: int) -> str:
    return ".".join(str((n >> s) & 255) for s in (24, 16, 8, 0))


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/{pid}/status has no VmRSS")


def agent_pid(name: str, host: str = "h1") -> int:
    pid = agent_proc.agent_pid(lab.LabPaths(naming.DEFAULT_STATE_ROOT, name).host(host))
    if pid is None:
        raise RuntimeError(f"the agent of {host} in lab {name} is not running")
    return pid


def flow_count(name: str, host: str = "h1") -> int:
    out = netns.run_in_namespace(
        naming.host_namespace(name, host),
        ["ovs-ofctl", "-O", "OpenFlow13", "dump-aggregate", naming.INTEGRATION_BRIDGE],
        env=lab.host_env(name, host),
    ).stdout
    return int(re.search(r"flow_count=(\d+)", out).group(1))


class SwitchLog:
    """When flows reach a host's ovs-vswitchd, from its own log.

    ``ovs-ofctl monitor`` would report flow changes as events, but OVS 3.1's prints an
    OpenFlow 1.3 (ONF) monitor's updates only when it exits (seen here: the initial reply
    comes at once, updates at SIGTERM, with a pipe, ``stdbuf -oL`` or a pty), and polling
    ``dump-flows`` on many hosts costs a process per poll.  So vswitchd logs every
    OpenFlow message (``vlog/set vconn:file:dbg``, switched on only around the changes
    measured, never during a big full sync) and the bench reads the log: the time a flow
    is on br-int is the first barrier reply vswitchd sends after the FLOW_MOD that adds it
    (ms timestamps, vswitchd's own clock, which is the machine's)."""

    def __init__(self, name: str, host: str, pattern: str):
        self._path = os.path.join(
            lab.LabPaths(naming.DEFAULT_STATE_ROOT, name).host(host).logdir, "ovs-vswitchd.log"
        )
        self._flow = re.compile(r"received: OFPT_FLOW_MOD .*: ADD .*" + pattern)
        netns.run_in_namespace(
            naming.host_namespace(name, host),
            ["ovs-appctl", "vlog/set", "vconn:file:dbg"],
            env=lab.host_env(name, host),
        )
        self._offset = os.path.getsize(self._path)
        self._pending: set[str] = set()
        self.seen: dict[str, float] = {}  # the pattern's first group -> time on br-int

    def scan(self) -> dict[str, float]:
        """Read what vswitchd logged since the last scan."""
        with open(self._path, errors="replace") as f:
            f.seek(self._offset)
            data = f.read()
        complete = data.rfind("\n") + 1  # a line being written is read next time
        self._offset += len(data[:complete].encode(errors="replace"))
        for line in data[:complete].splitlines():
            m = self._flow.search(line)
            if m:
                self._pending.add(m.group(1))
            elif "sent (Success): OFPT_BARRIER_REPLY" in line and self._pending:
                stamp = datetime.datetime.strptime(line[:23], "%Y-%m-%dT%H:%M:%S.%f")
                t = stamp.replace(tzinfo=datetime.timezone.utc).timestamp()
                for key in self._pending:
                    self.seen.setdefault(key, t)
                self._pending.clear()
        return self.seen


def agent_log_time(name: str, host: str, pattern: str) -> float | None:
    """Wall time of the first line of the agent's log that matches ``pattern``, if any."""
    path = os.path.join(
        lab.LabPaths(naming.DEFAULT_STATE_ROOT, name).host(host).logdir, "agent.log"
    )
    wanted = re.compile(r"^time=(\S+) .*" + pattern)  # controller/logformat.py, UTC
    with open(path, errors="replace") as f:
        for line in f:
            m = wanted.match(line)
            if m:
                return datetime.datetime.fromisoformat(m.group(1)).timestamp()
    return None


# -- join -----------------------------------------------------------------------------------


def one_join(size: int) -> dict[str, float]:
    name = "j" + secrets.token_hex(3)
    new_host, new_ip = naming.host_name(size), naming.underlay_ip(size)
    others = [naming.host_name(i) for i in range(1, size)]
    logs: dict[str, SwitchLog] = {}
    stop = threading.Event()
    registered: list[float] = []
    try:
        lab.up(name, size - 1, store="etcd")
        pattern = rf"(tun_src={re.escape(new_ip)})[ ,]"
        logs = {host: SwitchLog(name, host, pattern) for host in others}
        watcher = threading.Thread(
            target=watch_registration,
            args=(name, new_host, stop, registered),
            daemon=True,
        )
        watcher.start()
        time.sleep(0.1)
        begin = time.time()
        running.host_add(name)
        returned = time.time()
        deadline = time.monotonic() + 30
        seen: dict[str, float] = {}
        while time.monotonic() < deadline:
            for host, log in logs.items():
                if host not in seen and log.scan():
                    seen[host] = min(log.seen.values())
            if len(seen) == len(others) and registered:
                break
            time.sleep(0.05)
        else:
            missing = sorted(set(others) - seen.keys())
            raise RuntimeError(
                f"hosts {missing} never got a flow from {new_ip} in 30 s; watch: {registered}"
            )
        if not isinstance(registered[0], float):
            raise RuntimeError(f"the watch on hosts/ failed: {registered[0]!r}")
        ready = agent_log_time(name, new_host, "generation \\d+ in place")
        connected = agent_log_time(name, new_host, "switch .* connected")
        peers = set(naming.underlay_ip(i) for i in range(1, size))
        flows = lab.dump_flows(name, new_host)
        have = {ip for ip in peers if any(f"tun_src={ip}," in f for f in flows)}
        if have != peers or ready is None:
            raise RuntimeError(f"{new_host} lacks flows from {sorted(peers - have)}")
        start = registered[0]
        return {
            "join": max(max(seen.values()), ready) - start,
            "others": max(seen.values()) - start,
            "new": ready - start,
            "new_connected": connected - start,
            "host_add": returned - begin,
            "registered_after": start - begin,
        }
    finally:
        stop.set()
        lab.down(name)


def watch_registration(name: str, host: str, stop: threading.Event, out: list) -> None:
    """Append the time ``hosts/HOST`` appears (read every 10 ms from the operator
    namespace), or the exception that ended the polling.

    Polling, not a watch: an early version watched ``hosts/`` and in 2 of about 25 joins
    never saw the put.  The cause was the lab, not the watch: ``lab host add`` attached a
    port to the underlay bridge ``ul0`` with a lower MAC than its others, the bridge took
    that MAC, and etcd kept sending the watch's data to the operator address's old MAC
    (a silent receiver never makes etcd look it up again).  The bridge now has a MAC of its
    own (lab/netns.py create_bridge), and a watch's TCP keepalive would end such a stream
    (store/etcd.py).  Polling stays: it times when the record appears."""
    try:
        with etcd.in_operator_namespace(name):
            kv = open_kv(lab.LabPaths(naming.DEFAULT_STATE_ROOT, name).store_url)
            try:
                while not stop.is_set():
                    if kv.get(f"hosts/{host}") is not None:
                        out.append(time.time())
                        return
                    time.sleep(0.01)
            finally:
                kv.close()
    except Exception as exc:
        out.append(exc)


def join(args: argparse.Namespace) -> None:
    results: dict[int, list[dict[str, float]]] = {}
    for size in args.sizes:
        for _ in range(args.repeat):
            r = one_join(size)
            print(f"size {size}: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in r.items()))
            results.setdefault(size, []).append(r)
    print(
        "\n| hosts | runs | join p50 ms | join max ms | others max (p50) ms | new host (p50) ms "
        "| new host's switch connected (p50) ms | host add p50 s |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for size, runs in results.items():
        ms = {k: [r[k] * 1000 for r in runs] for k in runs[0]}
        print(
            f"| {size} | {len(runs)} | {pct(ms['join'], 50):.0f} | {max(ms['join']):.0f} "
            f"| {pct(ms['others'], 50):.0f} | {pct(ms['new'], 50):.0f} "
            f"| {pct(ms['new_connected'], 50):.0f} "
            f"| {pct(ms['host_add'], 50) / 1000:.2f} |"
        )


# -- scale ----------------------------------------------------------------------------------


def peer(i: int) -> tuple[str, str]:
    return f"peer{i:03d}", ipv4(PEER_BASE + i)


def endpoint(i: int, peers: int) -> tuple[str, str, str]:
    """(key, value, mac) of remote endpoint ``i``, on peer ``i % peers``."""
    host, _ = peer(i % peers)
    ip = ipv4(ENDPOINT_BASE + i)
    mac = "0a:59:" + ":".join(f"{int(b):02x}" for b in ip.split("."))
    container = f"bench{i:06d}"
    value = {"mac": mac, "ip": ip, "container_id": container, "ifname": "eth0"}
    return f"endpoints/default/{host}/{container}/eth0", json.dumps(value), mac


def wait_flows(name: str, want: int, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while True:
        have = flow_count(name)
        if have == want:
            return time.time()
        if time.monotonic() > deadline:
            raise RuntimeError(f"br-int has {have} flows, not {want}, after {timeout:.0f} s")
        time.sleep(0.05)


def scale(args: argparse.Namespace) -> None:
    name = "s" + secrets.token_hex(3)
    paths = lab.LabPaths(naming.DEFAULT_STATE_ROOT, name)
    try:
        lab.up(name, 1, store="etcd")
        base_flows, base_rss = flow_count(name), rss_mb(agent_pid(name))
        want = base_flows + args.peers + 2 * args.endpoints
        ops = [
            Put(f"hosts/{h}", json.dumps({"tunnel_ip": ip}))
            for h, ip in map(peer, range(args.peers))
        ]
        ops += [Put(k, v) for k, v, _ in (endpoint(i, args.peers) for i in range(args.endpoints))]
        with etcd.in_operator_namespace(name):
            kv = open_kv(paths.store_url)
            begin = time.time()
            for at in range(0, len(ops), TXN_OPS):
                kv.txn([], ops[at : at + TXN_OPS])
            written = time.time()
            converged = wait_flows(name, want, 120)
            live_rss = rss_mb(agent_pid(name))

            # Cold start: everything already in the store.
            host_paths = paths.host("h1")
            agent_proc.stop(host_paths, signal.SIGKILL)
            log = os.path.join(host_paths.logdir, "agent.log")
            marker = f"---- bench: cold start {secrets.token_hex(4)} ----"
            with open(log, "a") as f:
                f.write(marker + "\n")
            started = time.time()
            agent_proc.wait_ready(
                host_paths, agent_proc.start(host_paths, naming.host_namespace(name, "h1"))
            )
            ready = time.time()
            cold = log_after(log, marker)
            cold_flows = flow_count(name)
            cold_rss = rss_mb(agent_pid(name))

            # One more endpoint at a time.
            log = SwitchLog(name, "h1", rf"table:{L2_FORWARD.table_id} .*dl_dst=([0-9a-f:]{{17}})")
            lat = []
            for n in range(args.changes):
                key, value, mac = endpoint(args.endpoints + n, args.peers)
                t0 = time.time()
                kv.put(key, value)
                deadline = time.monotonic() + 10
                while mac not in log.scan():
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"endpoint {mac} never reached br-int")
                    time.sleep(0.002)
                lat.append(log.seen[mac] - t0)
            after_rss = rss_mb(agent_pid(name))
            final_flows = flow_count(name)
            kv.close()
    finally:
        lab.down(name)
    ms = [x * 1000 for x in lat]
    print(f"{args.peers} peers, {args.endpoints} remote endpoints, 1 local host, etcd (1 member)\n")
    print("| measure | value |")
    print("|---|---:|")
    print(f"| flows before / expected / after changes | {base_flows} / {want} / {final_flows} |")
    print(f"| store writes ({len(ops)} keys, {TXN_OPS} per txn) | {written - begin:.2f} s |")
    print(f"| live: first write → all flows on br-int | {converged - begin:.2f} s |")
    print(f"| live: last write → all flows on br-int | {converged - written:.2f} s |")
    for what, label in (
        ("started", "agent exec → agent started (log)"),
        ("connected", "agent exec → ovs-vswitchd connected (log)"),
        ("in_place", "agent exec → first full sync in place (log)"),
    ):
        if what in cold:
            print(f"| cold start: {label} | {cold[what][0] - started:.2f} s |")
    print(f"| cold start: the full sync's log line | {cold['in_place'][1].split(': ', 1)[-1]} |")
    print(f"| cold start: agent exec → ready (API) | {ready - started:.2f} s |")
    print(f"| flows after cold start | {cold_flows} |")
    print(
        f"| agent RSS: empty / after live load / after cold start / after {args.changes} "
        f"changes | {base_rss:.0f} / {live_rss:.0f} / {cold_rss:.0f} / {after_rss:.0f} MB |"
    )
    print(
        f"| one more endpoint → L2 flow on br-int, p50 / p99 / max ({len(ms)}) "
        f"| {pct(ms, 50):.1f} / {pct(ms, 99):.1f} / {max(ms):.1f} ms |"
    )


def log_after(log: str, marker: str) -> dict[str, tuple[float, str]]:
    """The first "switch connected", "started" and "generation G in place" lines of the
    agent's log after ``marker``: (wall time, line)."""
    wanted = {
        "started": re.compile(r"agent for host .* started"),
        "connected": re.compile(r"switch .* connected"),
        "in_place": re.compile(r"generation \d+ in place"),
    }
    found: dict[str, tuple[float, str]] = {}
    with open(log, errors="replace") as f:
        lines = f.read().split(marker, 1)[-1].splitlines()
    for line in lines:
        for what, pattern in wanted.items():
            if what not in found and pattern.search(line) and line.startswith("time="):
                stamp = datetime.datetime.fromisoformat(line[5:].split(" ", 1)[0])
                found[what] = (stamp.timestamp(), line.strip())  # controller/logformat.py
    if "in_place" not in found:
        raise RuntimeError(f"{log} has no full sync after {marker!r}")
    return found


# -- soak -----------------------------------------------------------------------------------


def soak(args: argparse.Namespace) -> None:
    name = "k" + secrets.token_hex(3)
    paths = lab.LabPaths(naming.DEFAULT_STATE_ROOT, name)
    spaces = [pods.pod_namespace(name, "h1", f"w{k}") for k in range(args.workers)]
    samples: list[tuple[int, float, float, int]] = []
    counter = iter(range(args.cycles))
    lock = threading.Lock()
    done = [0]
    failed = threading.Event()  # one worker's error stops the others
    try:
        lab.up(name, 1, store="etcd")
        for ns in spaces:
            netns.create_namespace(ns)
        begin = time.time()
        pid = agent_pid(name)
        samples.append((0, 0.0, rss_mb(pid), flow_count(name)))

        def worker(ns: str) -> None:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None or failed.is_set():
                    return
                container = f"soak{i:06d}"
                for command in ("ADD", "DEL"):
                    rc, out = pods.cni_exec(
                        paths, "h1", command, container, netns_path=namespace_path(ns)
                    )
                    if rc != 0:
                        failed.set()
                        raise RuntimeError(f"{command} {container}: {out}")
                with lock:
                    done[0] += 1
                    if done[0] % args.every == 0:
                        samples.append(
                            (done[0], time.time() - begin, rss_mb(pid), flow_count(name))
                        )
                        print(
                            f"{samples[-1][0]} cycles {samples[-1][1]:.0f} s "
                            f"RSS {samples[-1][2]:.1f} MB flows {samples[-1][3]}",
                            flush=True,
                        )

        with ThreadPoolExecutor(max_workers=args.workers) as pool:
            try:
                for f in [pool.submit(worker, ns) for ns in spaces]:
                    f.result()
            except BaseException:  # an error or ^C: the other workers stop after their cycle
                failed.set()
                raise
        if agent_pid(name) != pid:
            raise RuntimeError("the agent restarted during the soak")
    finally:
        for ns in spaces:
            if netns.namespace_exists(ns):
                netns.delete_namespace(ns)
        lab.down(name)
    print("\n| cycles | elapsed s | agent RSS MB | br-int flows |")
    print("|---:|---:|---:|---:|")
    for cycles, elapsed, rss, flows in samples:
        print(f"| {cycles} | {elapsed:.0f} | {rss:.1f} | {flows} |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="mode", required=True)
    j = sub.add_parser("join")
    j.add_argument("--sizes", type=int, nargs="+", default=[5, 10, 20])
    j.add_argument("--repeat", type=int, default=3)
    s = sub.add_parser("scale")
    s.add_argument("--peers", type=int, default=500)
    s.add_argument("--endpoints", type=int, default=10_000)
    s.add_argument("--changes", type=int, default=100)
    k = sub.add_parser("soak")
    k.add_argument("--cycles", type=int, default=10_000)
    k.add_argument("--workers", type=int, default=4)
    k.add_argument("--every", type=int, default=1000)
    args = p.parse_args()
    {"join": join, "scale": scale, "soak": soak}[args.mode](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
