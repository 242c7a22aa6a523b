"""NetworkPolicy in the lab: the time from ``ovs-overlayctl apply`` until every host
enforces a policy, by real connections and by the flows on each br-int; and pod-to-pod
TCP across hosts with a policy that allows the flow against no policy.

Run as root from the repo root:

    .venv/bin/python bench/policy_lab.py [--runs 10] [--seconds 5] [--repeat 3]
        [--only enforce|throughput]

Enforcement: a 3-host lab; in the Kubernetes namespace ``bench`` a server pod (label
role=server, TCP server on 80) and a client pod (role=client) on each host.  Each run
makes four transitions, each timed from the start of the ``ovs-overlayctl apply`` (or
``delete``) process:

    deny        apply default deny ingress for role=server     -> clients' connections fail
    allow       apply ingress from role=client on TCP 80      -> they succeed again
    -allow      delete the allow policy                       -> they fail
    -deny       delete the deny policy                        -> they succeed

Probes: each host's client probes the next host's server (h1 -> h2 -> h3 -> h1: every
host's ingress, probed from every host; every pair would triple the probes' load on a
2-core machine and slow what is measured).  The prober starts a new TCP connection
(SO_LINGER 0, so no TIME_WAIT piles up) every ``--interval`` (20 ms) with a 0.9 s timeout;
a denied SYN is dropped, so a failure is a timeout.  A pair is enforced at the start of
the first five attempts in a row with the new outcome after which the old one never came
twice in a row; lone old outcomes after it are counted and printed (about one allowed
attempt in a thousand fails under this machine's load, with no change pending too);
"probes" is the last pair's.  The agents' side: ``ovs-ofctl dump-flows br-int`` with a
cookie mask (openflow/cookies.py), polled on each host (20 ms apart), until the flows
are there (or gone): the isolation flows (Feature.POLICY_ISOLATION) for deny, the allow
rule's own flows (object_mask(POLICY_RULE, its id)) for allow; "flows" is the end of the
first poll that sees it, on the last host.  "written" is when the command printed its
object's line (right after the store write; PYTHONUNBUFFERED), so "after write" is the
agents' part and the rest is the command's start (Python, imports, opening the store).
Every time is printed per run; the table gives p50/p99/max (with 10 runs, p99 is the
max).

Throughput: in the same lab kind (a fresh 3-host lab), ``iperf3 -t SECONDS`` from a
client pod on h1 to a server pod on h2, alternating "no policy" and "allow policy" (the
allow policy plus the default deny: the server is isolated and the flow allowed by a
rule; its counter is checked to have moved), ``--repeat`` times each; with each run the
CPU the two hosts' ovs-vswitchd spent per GB received (the userspace datapath runs
there, conntrack included), which the machine's load changes far less than throughput.
``--only throughput --no-policy`` measures the no-policy case alone: run it from a
checkout of the pipeline before policy was wired (3b6b3b9) to see what the always-on
conntrack costs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from controller.netns import namespace_path  # noqa: E402
from lab import lab, naming, netns, ovs_host, pods  # noqa: E402
from openflow.cookies import Feature, feature_mask, object_mask  # noqa: E402

HOSTS = ("h1", "h2", "h3")
NS = "bench"
PORT = 80
# A connection attempt that has not connected by then was dropped.  250 ms was too short
# on this 2-core machine under load (an allowed attempt now and then timed out while the
# prober waited for the CPU).  It stays under TCP's first SYN retry (1 s): an attempt is
# one SYN, judged once; at 1.0 s a retried SYN sometimes beat the timeout, and an attempt
# started before a change passed by its retry after it.
PROBE_TIMEOUT = 0.9
POLL_PAUSE = 0.02  # between one host's polls: each is an ovs-ofctl process
CTL = [sys.executable, "-m", "ctl.main"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DENY = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "deny", "namespace": NS},
    "spec": {"podSelector": {"matchLabels": {"role": "server"}}, "policyTypes": ["Ingress"]},
}


def allow(port: int) -> dict:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "allow-clients", "namespace": NS},
        "spec": {
            "podSelector": {"matchLabels": {"role": "server"}},
            "ingress": [
                {
                    "from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                    "ports": [{"port": port, "protocol": "TCP"}],
                }
            ],
        },
    }


# Accepts and closes, whatever the client did (a reset included), with a deep backlog.
SERVER = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(4096)
print("ready", flush=True)
while True:
    try:
        c, _ = s.accept(); c.close()
    except OSError:
        pass
"""

# A new connection to each target every INTERVAL until told to stop on stdin, or until,
# after "go", every target's attempts of the last HOLD seconds had the WANT outcome.
# Prints every attempt: per target [[start, ok], ...] (CLOCK_MONOTONIC, shared by every
# namespace on the machine).
PROBER = r"""
import asyncio, json, socket, struct, sys, time
interval, timeout, hold, limit = map(float, sys.argv[1:5])
want = sys.argv[5] == "ok"
targets = json.loads(sys.argv[6])
done = [[] for _ in targets]
async def attempt(i, ip, port):
    loop = asyncio.get_running_loop()
    s = socket.socket(); s.setblocking(False)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    t = time.monotonic()
    try:
        await asyncio.wait_for(loop.sock_connect(s, (ip, port)), timeout)
        ok = True
    except (OSError, asyncio.TimeoutError):
        ok = False
    finally:
        s.close()
    done[i].append((t, ok))
def settled(go):
    for d in done:
        if not d:
            return False
        latest = max(t for t, ok in d)
        if latest - hold - timeout < go:
            return False
        if any(ok != want for t, ok in d if t >= latest - hold - timeout):
            return False
    return True
async def main():
    loop = asyncio.get_running_loop()
    go = loop.create_future()
    reader = asyncio.StreamReader(); proto = asyncio.StreamReaderProtocol(reader)
    await loop.connect_read_pipe(lambda: proto, sys.stdin)
    async def control():
        await reader.readline(); go.set_result(time.monotonic())
    asyncio.ensure_future(control())
    print("ready", flush=True)
    tasks = set()
    while True:
        for i, (ip, port) in enumerate(targets):
            t = asyncio.ensure_future(attempt(i, ip, port)); tasks.add(t)
            t.add_done_callback(tasks.discard)
        await asyncio.sleep(interval)
        if go.done():
            if settled(go.result()) or time.monotonic() > go.result() + limit:
                break
    await asyncio.gather(*tasks)
    print(json.dumps(done))
asyncio.run(main())
"""


def ctl(lab_name: str, verb: str, objects: list[dict]) -> float:
    """Runs ``ovs-overlayctl VERB --lab L -f -``; returns when its last object was written
    (the line it prints after each write, unbuffered)."""
    docs = "".join(f"---\n{json.dumps(o)}\n" for o in objects)
    proc = subprocess.Popen(
        [*CTL, verb, "--lab", lab_name, "-f", "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    proc.stdin.write(docs)
    proc.stdin.close()
    for _ in objects:
        proc.stdout.readline()
    written = time.monotonic()
    proc.stdout.read()
    if proc.wait():
        raise RuntimeError(f"ovs-overlayctl {verb}: {proc.stderr.read().strip()}")
    return written


def in_pod(netns_name: str, script: str, *argv: str, stdin=None) -> subprocess.Popen:
    return subprocess.Popen(
        ["nsenter", f"--net={namespace_path(netns_name)}", "--", sys.executable, "-c", script]
        + list(argv),
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def dump_flows(lab_name: str, host: str, mask: tuple[int, int]) -> str:
    """The host's br-int flows under a cookie mask; ovs-ofctl reaches the host's
    ovs-vswitchd by its unix socket (OVS_RUNDIR in the host's env), no namespace needed."""
    return subprocess.run(
        [
            "ovs-ofctl",
            "-O",
            "OpenFlow13",
            "dump-flows",
            "br-int",
            f"cookie={mask[0]:#x}/{mask[1]:#x}",
        ],
        env=lab.host_env(lab_name, host),
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def flow_count(lab_name: str, host: str, mask: tuple[int, int]) -> int:
    """Flows on the host's br-int under a cookie mask."""
    out = dump_flows(lab_name, host, mask)
    return sum(1 for line in out.splitlines() if "cookie=" in line)


class FlowWatch:
    """Polls one host's br-int until the masked flows are present (or absent): the end of
    the first poll that saw it, and the polls' durations."""

    def __init__(self, lab_name: str, host: str, mask: tuple[int, int], present: bool):
        self.seen: float | None = None
        self.polls: list[float] = []
        self._stop = threading.Event()
        self._args = (lab_name, host, mask, present)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        lab_name, host, mask, present = self._args
        while not self._stop.is_set() and self.seen is None:
            start = time.monotonic()
            n = flow_count(lab_name, host, mask)
            end = time.monotonic()
            self.polls.append(end - start)
            if (n > 0) == present:
                self.seen = end
            else:
                self._stop.wait(POLL_PAUSE)

    def stop(self, timeout: float) -> None:
        self._thread.join(timeout)
        self._stop.set()
        self._thread.join()


def settled_at(attempts: list[list], want: bool, run: int = 5) -> tuple[float | None, int]:
    """The start of the first ``run`` attempts in a row with ``want`` after which the old
    outcome never won twice in a row, and how many single old outcomes came after it (a
    lone failed connection among allowed ones is a lost or slow SYN, and happens with no
    change pending too; a lone allowed one among denied ones would be a leak)."""
    ordered = sorted(attempts)
    at, streak, odd = None, 0, 0
    for i, (_, ok) in enumerate(ordered):
        if ok == want:
            streak += 1
            if streak == run and at is None:
                at = ordered[i - run + 1][0]
            continue
        streak = 0
        lone = at is not None and i + 1 < len(ordered) and ordered[i + 1][1] == want
        lone = lone and (i == 0 or ordered[i - 1][1] == want)
        if lone:
            odd += 1
        else:
            at, odd = None, 0
    return at, odd


def transition(lab_name, clients, servers, verb, objects, want_ok, mask, present, args):
    """One change: probers running before it, the apply timed, the probes' and the flows'
    enforcement times after its start (seconds), and the apply command's own time."""
    probers = [
        in_pod(
            c["netns"],
            PROBER,
            str(args.interval),
            str(PROBE_TIMEOUT),
            "0.5",
            "15",
            "ok" if want_ok else "fail",
            json.dumps([(s["ip"], PORT)]),
            stdin=subprocess.PIPE,
        )
        for c, s in ring(clients, servers)
    ]
    try:
        for p in probers:
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError(f"a prober did not start: {p.stderr.read()}")
        time.sleep(0.5)  # attempts before the change: the old outcome holds
        start = time.monotonic()
        for p in probers:
            p.stdin.write("go\n")
            p.stdin.flush()
        watches = [FlowWatch(lab_name, h, mask, present) for h in HOSTS]
        written = ctl(lab_name, verb, objects) - start
        applied = time.monotonic() - start
        results = [json.loads(p.communicate(timeout=60)[0]) for p in probers]
        for w in watches:
            w.stop(15)
    finally:
        for p in probers:
            if p.poll() is None:
                p.kill()  # the PID we started
                p.wait()
    pairs = []
    blips = 0  # attempts before the change with its outcome (a slow allowed one, say)
    after = 0  # lone attempts after enforcement with the old outcome
    for (client, server), per_target in zip(ring(clients, servers), results, strict=True):
        for attempts in per_target:
            before = [ok for t, ok in attempts if t < start]
            if not before:
                raise RuntimeError(f"{client['name']} -> {server['name']}: no probe before")
            blips += sum(1 for ok in before if ok == want_ok)
            at, odd = settled_at(attempts, want_ok)
            after += odd
            if at is None or at < start:
                raise RuntimeError(f"{client['name']} -> {server['name']}: never settled")
            pairs.append(at - start)
    if any(w.seen is None for w in watches):
        raise RuntimeError(f"{verb}: the flows never reached every host")
    flows = [w.seen - start for w in watches]
    polls = [p for w in watches for p in w.polls]
    return {
        "written": written,
        "apply": applied,
        "probes": max(pairs),
        "probes_first": min(pairs),
        "flows": max(flows),
        "poll": statistics.median(polls),
        "blips": blips,
        "after": after,
        "probes after write": max(pairs) - written,
        "flows after write": max(flows) - written,
    }


def ring(clients: list[dict], servers: list[dict]) -> list[tuple[dict, dict]]:
    """Each host's client probes the next host's server: every host's ingress, probed
    from every host, at a third of the load of every pair."""
    return [(c, servers[(i + 1) % len(servers)]) for i, c in enumerate(clients)]


def rule_id(policy: dict) -> int:
    """The allow rule's id as every agent computes it (netpol/compile.py rule_ids) when
    the bench's policies are the only ones."""
    from netpol import model
    from netpol.compile import rule_ids
    from netpol.state import PolicyState

    parsed = tuple(model.parse_network_policy(p) for p in (DENY, policy))
    ids = rule_ids(PolicyState((), (), parsed))
    return next(rid for ref, rid in ids.items() if ref.policy.endswith("allow-clients"))


def model_pods(lab_name: str, port: int) -> tuple[list[dict], list[dict]]:
    clients, servers = [], []
    for i, host in enumerate(HOSTS, start=1):
        for role, made in (("server", servers), ("client", clients)):
            name = f"{role[0]}{i}"
            att = pods.pod_add(
                lab_name,
                host,
                name,
                k8s=f"{NS}/{name}",
                labels=[f"role={role}"],
                ports=[f"serve:{port}/TCP"],
            )
            netns_name = pods.pod_namespace(lab_name, host, name)
            made.append({"name": name, "host": host, "ip": att["ip"], "netns": netns_name})
    return clients, servers


def enforcement(args) -> None:
    name = "b" + secrets.token_hex(3)
    servers_procs = []
    try:
        lab.up(name, len(HOSTS))
        clients, servers = model_pods(name, PORT)
        for s in servers:
            proc = in_pod(s["netns"], SERVER, str(PORT))
            servers_procs.append(proc)
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError(f"the server in {s['name']} did not start")
        allow_policy = allow(PORT)
        isolation = feature_mask(Feature.POLICY_ISOLATION)
        rule = object_mask(Feature.POLICY_RULE, rule_id(allow_policy))
        steps = [
            ("deny", "apply", [DENY], False, isolation, True),
            ("allow", "apply", [allow_policy], True, rule, True),
            ("-allow", "delete", [allow_policy], False, rule, False),
            ("-deny", "delete", [DENY], True, isolation, False),
        ]
        results: dict[str, list[dict]] = {s[0]: [] for s in steps}
        for run in range(args.runs):
            for label, verb, objects, want_ok, mask, present in steps:
                r = transition(name, clients, servers, verb, objects, want_ok, mask, present, args)
                results[label].append(r)
                print(
                    f"run {run} {label}: written {r['written'] * 1000:.0f} ms, "
                    f"apply {r['apply'] * 1000:.0f} ms, probes "
                    f"{r['probes_first'] * 1000:.0f}-{r['probes'] * 1000:.0f} ms, flows "
                    f"{r['flows'] * 1000:.0f} ms (poll {r['poll'] * 1000:.0f} ms)"
                    + (f", {r['blips']} attempts before it had its outcome" if r["blips"] else "")
                    + (f", {r['after']} lone old outcomes after it" if r["after"] else ""),
                    flush=True,
                )
    finally:
        for proc in servers_procs:
            proc.kill()  # the PID we started
            proc.wait()
        lab.down(name)
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}, {os.getloadavg()[1]:.1f}")
    print("\n| change | n | what | p50 ms | p99 ms | max ms |")
    print("|---|---:|---|---:|---:|---:|")
    every = {w: [] for w in WHAT}
    for label, rs in results.items():
        for what in WHAT:
            values = [r[what] for r in rs]
            every[what] += values
            print(_row(label, what, values))
    for what, values in every.items():
        print(_row("all", what, values))


# From the apply's start: its write done, its exit, the last probed pair's enforcement,
# the last host's flows; then the same two after the write.
WHAT = ("written", "apply", "probes", "flows", "probes after write", "flows after write")


def _row(label: str, what: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (
        f"| {label} | {len(ms)} | {what} | {pct(ms, 50):.0f} | {pct(ms, 99):.0f} | {max(ms):.0f} |"
    )


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def vswitchd_cpu(lab_name: str, hosts: tuple[str, ...]) -> float:
    """User + system CPU seconds the hosts' ovs-vswitchd have spent (where the userspace
    datapath, conntrack included, runs): fields 14 and 15 of /proc/PID/stat."""
    total = 0.0
    for host in hosts:
        hp = lab.LabPaths(naming.DEFAULT_STATE_ROOT, lab_name).host(host)
        with open(f"/proc/{ovs_host.daemon_pid(hp, 'ovs-vswitchd')}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def iperf(lab_name: str, src: dict, dst: dict, seconds: int) -> tuple[float, float]:
    """Gbit/s received, from src's pod to dst's pod, and the two hosts' ovs-vswitchd CPU
    seconds per GB received (a cost the machine's load does not change as it changes
    throughput)."""
    hosts = (src["host"], dst["host"])
    server = subprocess.Popen(
        ["iperf3", "-s", "-1", "-B", dst["ip"]],
        stdout=subprocess.DEVNULL,
        preexec_fn=lambda: netns.enter_namespace(dst["netns"]),
    )
    try:
        for _ in range(100):
            if ":5201" in netns.run_in_namespace(dst["netns"], ["ss", "-ltn"]).stdout:
                break
        cpu = vswitchd_cpu(lab_name, hosts)
        out = netns.run_in_namespace(
            src["netns"],
            ["iperf3", "-c", dst["ip"], "-t", str(seconds), "-J"],
            timeout=seconds + 30,
        ).stdout
        cpu = vswitchd_cpu(lab_name, hosts) - cpu
    finally:
        server.wait(timeout=30)
    received = json.loads(out)["end"]["sum_received"]
    return received["bits_per_second"] / 1e9, cpu / (received["bytes"] / 1e9)


def throughput(args) -> None:
    name = "b" + secrets.token_hex(3)
    got: dict[str, list[float]] = {"no policy": [], "allow policy": []}
    cpu: dict[str, list[float]] = {"no policy": [], "allow policy": []}

    def measure(what: str) -> None:
        gbps, cpu_per_gb = iperf(name, client, server, args.seconds)
        got[what].append(gbps)
        cpu[what].append(cpu_per_gb)

    try:
        lab.up(name, len(HOSTS))
        clients, servers = model_pods(name, 5201)
        client, server = clients[0], servers[1]  # h1 -> h2
        allow_policy = allow(5201)
        rule = object_mask(Feature.POLICY_RULE, rule_id(allow_policy))
        for _ in range(args.repeat):
            measure("no policy")
            if args.no_policy:
                continue
            ctl(name, "apply", [DENY, allow_policy])
            _wait_flows(name, rule, True)
            before = rule_packets(name, server["host"], rule)
            measure("allow policy")
            if rule_packets(name, server["host"], rule) == before:
                raise RuntimeError("the allow rule's flows counted no packet: not the policy path")
            ctl(name, "delete", [DENY, allow_policy])
            _wait_flows(name, feature_mask(Feature.POLICY_ISOLATION), False)
    finally:
        lab.down(name)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}, {os.getloadavg()[1]:.1f}\n")
    print("| h1 pod -> h2 pod | median Gbit/s | runs (alternating) | vswitchd CPU s/GB, median |")
    print("|---|---:|---|---:|")
    for what, values in got.items():
        if values:
            runs = ", ".join(f"{x:.2f}" for x in values)
            print(
                f"| {what} | {statistics.median(values):.2f} | {runs} "
                f"| {statistics.median(cpu[what]):.2f} |"
            )
    if got["allow policy"]:
        ratio = statistics.median(got["allow policy"]) / statistics.median(got["no policy"])
        print(f"\nratio allow policy / no policy (medians): {ratio:.3f}")
        pairs = [p / n for n, p in zip(got["no policy"], got["allow policy"], strict=True)]
        print(
            f"median of the runs' own ratios (each policy run / the run before it): "
            f"{statistics.median(pairs):.3f}"
        )
        per_gb = statistics.median(cpu["no policy"]) / statistics.median(cpu["allow policy"])
        print(f"vswitchd CPU per GB, no policy / allow policy (medians): {per_gb:.3f}")


def rule_packets(lab_name: str, host: str, mask: tuple[int, int]) -> int:
    """Packets the rule's flows on the host's br-int counted (new connections only: the
    rest of a connection passes as established)."""
    out = dump_flows(lab_name, host, mask)
    return sum(int(m) for m in re.findall(r"n_packets=(\d+)", out))


def _wait_flows(lab_name: str, mask: tuple[int, int], present: bool) -> None:
    watches = [FlowWatch(lab_name, h, mask, present) for h in HOSTS]
    for w in watches:
        w.stop(15)
    if any(w.seen is None for w in watches):
        raise RuntimeError("the policy's flows did not reach every host within 15 s")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--interval", type=float, default=0.02)
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--only", choices=("enforce", "throughput"))
    p.add_argument("--no-policy", action="store_true", help="throughput without policy only")
    args = p.parse_args()
    if args.only != "throughput":
        enforcement(args)
    if args.only != "enforce":
        throughput(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
