"""1000 CNI ADD/DEL cycles with injected failures, and nothing leaked at the end.

Each cycle is what a runtime (kubelet with containerd) does for a pod sandbox: make the
pod's netns, exec the installed plugin with ADD, then DEL.  A runtime whose ADD failed
calls DEL for that attachment; a DEL that failed because the agent is away (CNI code 11)
is retried until it succeeds.  Cycles alternate between the two hosts of a lab, four
workers per host.  Failures are injected on a fixed schedule (SEED, KILLS):

- the netns is deleted before DEL (the runtime removed it first; 30% of the cycles):
  DEL must succeed;
- DEL is repeated: a second DEL, then one with an empty CNI_NETNS (containerd; 30%):
  no-ops;
- ten times (after 50, 140, ... 860 cycles, h1 and h2 in turn) the agent is frozen
  (SIGSTOP) the moment an ADD is inside it (its veth exists, its answer has not come),
  killed (SIGKILL) and started again.  The ADDs in flight fail with code 11 or were
  answered just before; either way the runtime's DEL, retried until the agent is back,
  or the restarted agent's reconcile cleans up.  Two pods per host live through it all:
  after every restart CHECK passes on each and each reaches one on the other host.

Any failure while the agent was up is a bug and fails the test, and so does an address
given to two pods at once.  At the end each host has no pod veth and no pod port, the
store no address and no endpoint record, and br-int the same flows and groups as before
the churn (the live pods are checked the same way before they are deleted last).
"""

from __future__ import annotations

import collections
import os
import random
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass

import pytest

from controller.endpoints import host_port_name
from lab import agent_proc, lab, naming, netns, pods
from tests.helpers import (
    flows,
    groups,
    host_paths,
    host_veths,
    pod_ports,
    running_lab,
    store_pods,
)

pytestmark = pytest.mark.lab

CYCLES = 1000
SEED = 1000
HOSTS = ("h1", "h2")
WORKERS_PER_HOST = 4
P_NETNS_FIRST = 0.3  # the runtime deletes the netns before DEL
P_REPEAT_DEL = 0.3  # DEL again, then DEL with an empty CNI_NETNS
# (cycles done, host): an agent SIGKILLed while an ADD is inside it, then started again.
KILLS = tuple((50 + 90 * k, HOSTS[k % len(HOSTS)]) for k in range(10))
assert all(done < CYCLES - 50 for done, _ in KILLS)  # ADDs still run when each kill comes
LIVE_PER_HOST = 2  # pods that stay attached through the whole churn
DEL_DEADLINE = 60.0  # how long a runtime retries a DEL refused because the agent is away
SETTLE = 15.0  # for the other host's agent to follow the store (it learns within ms)
MID_ADD_DEADLINE = 30.0


@dataclass(frozen=True)
class Cycle:
    index: int
    host: str
    netns_first: bool
    repeat_del: bool


def schedule() -> list[Cycle]:
    rng = random.Random(SEED)
    return [
        Cycle(i, HOSTS[i % len(HOSTS)], rng.random() < P_NETNS_FIRST, rng.random() < P_REPEAT_DEL)
        for i in range(CYCLES)
    ]


def why(out: dict | None) -> str:
    """What a failed plugin call says happened."""
    msg = (out or {}).get("msg", "")
    if "is not answering" not in msg:
        return f"agent error: {msg}"
    if "Connection refused" in msg or "No such file" in msg:
        return "agent down"
    if "Expecting value" in msg or "reset" in msg or "Broken pipe" in msg:
        return "cut mid-request"  # the agent died while serving it
    return f"not answering: {msg}"


class ChurnError(AssertionError):
    pass


def ping_count(namespace: str, ip: str, count: int) -> tuple[int, int]:
    """Echoes sent and answered (each waits up to 2 s)."""
    out = netns.run_in_namespace(
        namespace, ["ping", "-c", str(count), "-i", "0.2", "-W", "2", "-q", ip], check=False
    ).stdout
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    if m is None:
        raise ChurnError(f"ping from {namespace} printed no summary: {out}")
    return int(m.group(1)), int(m.group(2))


class Pinger:
    """10 echoes a second from one live pod to another for the whole churn."""

    IN_FLIGHT = 5  # echoes of the last half second: maybe unanswered yet when stopped

    def __init__(self, src: str, ip: str, label: str):
        self.label = label
        self.proc = subprocess.Popen(
            ["ping", "-i", "0.1", "-W", "5", ip],
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=lambda: netns.enter_namespace(src),
        )

    def stop(self) -> tuple[int, int]:
        """(echoes sent, answered), the last IN_FLIGHT sent not counted: ping exits at
        SIGINT without waiting for the answers still on their way, which under load
        counted an echo in flight as lost."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=30)
        m = re.search(r"(\d+) packets transmitted", out)
        if not m:
            return (0, 0)
        sent = int(m.group(1)) - self.IN_FLIGHT
        answered = {int(seq) for seq in re.findall(r"bytes from .* icmp_seq=(\d+) ", out)}
        return sent, len({seq for seq in answered if seq <= sent})


@pytest.fixture(scope="module")
def churn_lab():
    with running_lab(len(HOSTS)) as name:
        yield name


class Runtime:
    """A runtime's CNI calls on a lab, with the faults injected and everything counted."""

    def __init__(self, name: str):
        self.name = name
        self.paths = lab.LabPaths(naming.DEFAULT_STATE_ROOT, name)
        self.lock = threading.Lock()
        self.done = threading.Condition(self.lock)
        self.cycles_done = 0
        self.up = {h: threading.Event() for h in HOSTS}
        for event in self.up.values():
            event.set()
        self.epoch = dict.fromkeys(HOSTS, 0)  # bumped (under lock) before each kill
        self.adding = {h: set() for h in HOSTS}  # containers whose ADD is in flight
        self.held: dict[str, str] = {}  # address -> container, while attached
        self.created: set[str] = set()  # pod namespaces made and not yet deleted
        self.stats: collections.Counter = collections.Counter()
        self.add_failures: collections.Counter = collections.Counter()
        self.kills: list[dict] = []
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.live: list[tuple[str, str, dict]] = []  # (host, container, ADD result)

    def fail(self, msg: str) -> None:
        with self.lock:
            self.errors.append(msg)
        self.stop.set()

    def count(self, what: str, n: int = 1) -> None:
        with self.lock:
            self.stats[what] += n

    # -- the plugin, as a runtime runs it ---------------------------------------------

    def call(self, host: str, command: str, container: str, **kw) -> tuple[int, dict, bool]:
        """Exec the plugin; also says whether the agent was away at some point of the call."""
        with self.lock:
            epoch, up = self.epoch[host], self.up[host].is_set()
        rc, out = pods.cni_exec(self.paths, host, command, container, **kw)
        with self.lock:
            away = not up or self.epoch[host] != epoch
        return rc, out, away

    def delete(self, host: str, container: str, netns_path: str | None = None) -> None:
        """DEL until it succeeds, retrying only while the agent is away (CNI code 11)."""
        deadline = time.monotonic() + DEL_DEADLINE
        tries = 0
        while True:
            rc, out, away = self.call(host, "DEL", container, netns_path=netns_path)
            tries += 1
            if rc == 0:
                if out is not None:
                    raise ChurnError(f"DEL of {container} printed {out}")
                if tries > 1:
                    self.count("DELs retried until the agent was back")
                    self.count("DEL retries", tries - 1)
                return
            cause = why(out)
            if out is None or out.get("code") != 11 or not away:
                raise ChurnError(
                    f"DEL of {container} on {host} failed while its agent was up: {out}"
                )
            self.count(f"DEL failed ({cause})")
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.up[host].wait(remaining):
                raise ChurnError(
                    f"DEL of {container} on {host} still failing after {DEL_DEADLINE:.0f}s: {out}"
                )

    def make_netns(self, container: str) -> None:
        netns.create_namespace(container)
        with self.lock:
            self.created.add(container)

    def drop_netns(self, container: str) -> None:
        netns.delete_namespace(container)
        with self.lock:
            self.created.discard(container)

    # -- one cycle -----------------------------------------------------------------------

    def cycle(self, spec: Cycle) -> None:
        host = spec.host
        container = pods.pod_namespace(self.name, host, f"c{spec.index:04d}")
        self.make_netns(container)
        with self.lock:
            self.adding[host].add(container)
        try:
            rc, out, away = self.call(host, "ADD", container)
        finally:
            with self.lock:
                self.adding[host].discard(container)
        ip = None
        if rc == 0:
            ip = out["ips"][0]["address"].split("/")[0]
            with self.lock:
                other = self.held.get(ip)
                self.held[ip] = container
            if other is not None:
                raise ChurnError(f"ADD of {container} got {ip}, which {other} still holds")
            self.count("ADD ok, though the agent was killed meanwhile" if away else "ADD ok")
        else:
            if out is None or out.get("code") != 11 or not away:
                raise ChurnError(
                    f"ADD of {container} on {host} failed while its agent was up: {out}"
                )
            with self.lock:
                self.add_failures[(out["code"], why(out))] += 1
        if ip is not None:  # the address is the pod's until its DEL begins
            with self.lock:
                del self.held[ip]
        if spec.netns_first:
            self.drop_netns(container)
            self.count("netns deleted before DEL")
        self.delete(host, container)
        if spec.repeat_del:
            self.delete(host, container)
            self.delete(host, container, netns_path="")
            self.count("DEL repeated (again, then with empty CNI_NETNS)")
        if not spec.netns_first:
            self.drop_netns(container)

    def worker(self, queue: collections.deque) -> None:
        while not self.stop.is_set():
            with self.lock:
                if not queue:
                    return
                spec = queue.popleft()
            try:
                self.cycle(spec)
            except Exception as exc:
                self.fail(f"cycle {spec.index} on {spec.host}: {exc}")
                return
            with self.done:
                self.cycles_done += 1
                self.done.notify_all()

    # -- agent kills ---------------------------------------------------------------------

    def freeze_mid_add(self, host: str, pid: int) -> None:
        """SIGSTOP the host's agent (``pid``, from its pidfile) the moment an ADD is inside
        it: its veth exists and its answer has not come.  The SIGKILL that follows lands
        exactly there."""
        deadline = time.monotonic() + MID_ADD_DEADLINE
        with netns.open_namespace(naming.host_namespace(self.name, host)) as ns:
            while not self.stop.is_set():
                with self.lock:
                    adding = list(self.adding[host])
                if any(ns.link_lookup(ifname=host_port_name(c, "eth0")) for c in adding):
                    os.kill(pid, signal.SIGSTOP)
                    try:
                        with self.lock:
                            adding = list(self.adding[host])
                        hit = any(ns.link_lookup(ifname=host_port_name(c, "eth0")) for c in adding)
                    except BaseException:
                        os.kill(pid, signal.SIGCONT)
                        raise
                    if hit:
                        return
                    # Frozen just after that ADD was answered: let it run, aim again.
                    os.kill(pid, signal.SIGCONT)
                    self.count("agent freezes that missed an ADD (resumed)")
                if time.monotonic() > deadline:
                    raise ChurnError(f"no ADD was inside {host}'s agent for {MID_ADD_DEADLINE}s")
                self.stop.wait(0.002)

    def killer(self) -> None:
        try:
            for threshold, host in KILLS:
                with self.done:
                    self.done.wait_for(
                        lambda t=threshold: self.cycles_done >= t or self.stop.is_set()
                    )
                if self.stop.is_set():
                    return
                paths = host_paths(self.name, host)
                pid = agent_proc.agent_pid(paths)
                if pid is None:
                    raise ChurnError(f"{host}'s agent is not running")
                self.freeze_mid_add(host, pid)
                with self.lock:
                    self.up[host].clear()
                    self.epoch[host] += 1
                    adding = sorted(self.adding[host])
                with netns.open_namespace(naming.host_namespace(self.name, host)) as ns:
                    inside = [c for c in adding if ns.link_lookup(ifname=host_port_name(c, "eth0"))]
                if agent_proc.stop(paths, signal.SIGKILL) != pid:
                    raise ChurnError(f"{host}'s agent {pid} was not the one killed")
                started = time.monotonic()
                lab.agent_control(self.name, host, "start")
                self.up[host].set()
                self.kills.append(
                    {
                        "host": host,
                        "after": threshold,
                        "ADDs in flight": len(adding),
                        "with their veth made": len(inside),
                        "restart s": round(time.monotonic() - started, 2),
                    }
                )
                self.check_live()
        except Exception as exc:
            self.fail(f"killer: {exc}")

    # -- the pods that live through it all --------------------------------------------------

    def add_live(self) -> None:
        for host in HOSTS:
            for k in range(LIVE_PER_HOST):
                container = pods.pod_namespace(self.name, host, f"live{k}")
                self.make_netns(container)
                rc, out, _ = self.call(host, "ADD", container)
                assert rc == 0, out
                self.live.append((host, container, out))
                self.held[out["ips"][0]["address"].split("/")[0]] = container

    def check_live(self) -> None:
        """Every live pod is whole (CHECK) and reaches a live pod on the other host."""
        for host, container, _ in self.live:
            rc, out, _ = self.call(host, "CHECK", container)
            if rc != 0:
                raise ChurnError(f"CHECK of live pod {container} failed: {out}")
        for i, (_, src, _) in enumerate(self.live):
            _, dst, result = self.live[(i + LIVE_PER_HOST) % len(self.live)]
            ip = result["ips"][0]["address"].split("/")[0]
            sent, received = ping_count(src, ip, 3)
            self.count("live-pod pings sent after restarts", sent)
            self.count("live-pod pings lost after restarts", sent - received)
            if received != sent:
                raise ChurnError(
                    f"live pod {src} reached live pod {dst} ({ip}) {received} of {sent} times"
                )

    def live_macs(self) -> list[str]:
        return [result["interfaces"][1]["mac"] for _, _, result in self.live]


def pipelines(name: str) -> dict[str, tuple[list[str], list[str]]]:
    return {h: (flows(name, h), groups(name, h)) for h in HOSTS}


def settled(name: str, macs: list[str]) -> dict:
    """br-int of every host once it has a tunnel ingress for every peer and an L2 flow for
    every pod in ``macs`` (the other hosts' agents learn both from the store)."""
    deadline = time.monotonic() + SETTLE
    while True:
        now = pipelines(name)
        text = {h: "\n".join(f) for h, (f, _) in now.items()}
        missing = [
            (h, want)
            for h in HOSTS
            for want in [
                f"tun_src={naming.underlay_ip(naming.host_index(p))}" for p in HOSTS if p != h
            ]
            + [f"dl_dst={mac} " for mac in macs]
            if want not in text[h]
        ]
        if not missing:
            return now
        assert time.monotonic() < deadline, f"flows never appeared: {missing}"
        time.sleep(0.1)


def back_to(name: str, baseline: dict) -> tuple[float, dict]:
    """Wait (up to SETTLE) until every host's flows and groups equal ``baseline`` again:
    the seconds it took and, per host that never got there, the flows and groups it has
    beyond the baseline and those it lacks.  The other host's agent follows the store, so
    its flows for a pod go a moment after the DEL that removed the pod returned."""
    started = time.monotonic()
    while True:
        now = pipelines(name)
        if now == baseline or time.monotonic() - started > SETTLE:
            break
        time.sleep(0.1)
    diff = {}
    for h in HOSTS:
        have = collections.Counter(now[h][0] + now[h][1])
        want = collections.Counter(baseline[h][0] + baseline[h][1])
        if have != want:
            diff[h] = {
                "extra": sorted((have - want).elements()),
                "missing": sorted((want - have).elements()),
            }
    return round(time.monotonic() - started, 2), diff


def leftovers(name: str, live: list[tuple[str, str, dict]], baseline: dict) -> dict:
    """Everything pods hold beyond the ``live`` ones, counted: host veths and OVS ports
    (per host), addresses and endpoint records in the store, and br-int's flows and groups
    beyond (or missing from) ``baseline``."""
    settle_s, diff = back_to(name, baseline)
    allocations, endpoints = store_pods(name)
    live_ports = {
        h: {out["interfaces"][0]["name"] for hh, _, out in live if hh == h} for h in HOSTS
    }
    live_ids = {f"{c}/eth0" for _, c, _ in live}
    found = {
        "veths": {h: sorted(host_veths(name, h) - live_ports[h]) for h in HOSTS},
        "OVS ports": {h: sorted(pod_ports(name, h) - live_ports[h]) for h in HOSTS},
        "addresses": sorted(ip for ip, a in allocations.items() if a not in live_ids),
        "endpoint records": sorted(e.attachment for e in endpoints if e.attachment not in live_ids),
        "flows and groups off the baseline": diff,
        "parts of live pods missing": sorted(
            (live_ids - set(allocations.values()))
            | (live_ids - {e.attachment for e in endpoints})
            | {p for h in HOSTS for p in live_ports[h] - host_veths(name, h)}
            | {p for h in HOSTS for p in live_ports[h] - pod_ports(name, h)}
        ),
    }
    counts = {
        what: sum(len(v) for v in found[what].values())
        if isinstance(found[what], dict)
        else len(found[what])
        for what in found
    }
    counts["flows and groups off the baseline"] = sum(
        len(d["extra"]) + len(d["missing"]) for d in diff.values()
    )
    return {"counts": counts, "found": found, "settle s": settle_s}


def orphans_reconciled(name: str) -> collections.Counter:
    """What the restarted agents' start-up reconcile removed, by kind (from their logs)."""
    found: collections.Counter = collections.Counter()
    marker = "removed an orphan left while the agent was away: "
    for h in HOSTS:
        log = os.path.join(host_paths(name, h).logdir, "agent.log")
        with open(log, errors="replace") as f:
            for line in f:
                if marker in line:
                    found[line.split(marker, 1)[1].split()[0]] += 1
    return found


def test_1000_add_del_cycles_with_failures_leak_nothing(churn_lab):
    name = churn_lab
    rt = Runtime(name)
    started = time.monotonic()
    report: dict[str, object] = {}
    pingers: list[Pinger] = []
    try:
        empty = settled(name, [])
        rt.add_live()
        with_live = settled(name, rt.live_macs())
        rt.check_live()
        plan = schedule()
        queues = {h: collections.deque(c for c in plan if c.host == h) for h in HOSTS}
        threads = [
            threading.Thread(target=rt.worker, args=(queues[h],), name=f"cni-{h}-{w}")
            for h in HOSTS
            for w in range(WORKERS_PER_HOST)
        ]
        threads.append(threading.Thread(target=rt.killer, name="killer"))
        ip = {c: out["ips"][0]["address"].split("/")[0] for _, c, out in rt.live}
        pods_ = [c for _, c, _ in rt.live]  # h1-live0, h1-live1, h2-live0, h2-live1
        pingers = [
            Pinger(pods_[0], ip[pods_[1]], "h1 to h1 (same host)"),
            Pinger(pods_[2], ip[pods_[3]], "h2 to h2 (same host)"),
            Pinger(pods_[1], ip[pods_[3]], "h1 to h2 (VXLAN)"),
        ]
        churn_start = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        report["churn s"] = round(time.monotonic() - churn_start, 1)
        echoes = {p.label: p.stop() for p in pingers}
        report["live-pod echoes during the churn (sent, answered)"] = echoes
        assert not rt.errors, rt.errors[:5]
        assert rt.cycles_done == CYCLES
        assert len(rt.kills) == len(KILLS)
        # Some ADDs were cut inside the agent (not only refused while it was down).
        assert any(cause == "cut mid-request" for _, cause in rt.add_failures), rt.add_failures
        # Pods nobody touches lose nothing, across hosts too.  Before the agent kept the
        # tunnels' route in OVS (controller/underlay.py), every veth made or removed here
        # cost 1-3% of the VXLAN echoes (docs/architecture.md).
        for label, (sent, answered) in echoes.items():
            assert sent > 0 and answered == sent, (label, sent, answered)

        # The churn is over: only the live pods remain, whole, and br-int is as before.
        left = leftovers(name, rt.live, with_live)
        report["left after the churn, beside the live pods"] = left["counts"]
        report["s until br-int was back to its baseline (with the live pods)"] = left["settle s"]
        assert left["counts"] == dict.fromkeys(left["counts"], 0), left["found"]
        rt.check_live()

        # And with the live pods gone, nothing at all.
        for host, container, _ in rt.live:
            rt.delete(host, container)
            rt.drop_netns(container)
        rt.live = []
        left = leftovers(name, [], empty)
        ours = [
            ns
            for ns in netns.list_namespaces()
            if ns.startswith(f"{name}-h") and ns.count("-") == 2
        ]
        report["left at the end"] = {**left["counts"], "pod namespaces": len(ours)}
        report["s until br-int was back to its baseline (no pods)"] = left["settle s"]
        report["flows, groups per host (= baseline)"] = {
            h: (len(empty[h][0]), len(empty[h][1])) for h in HOSTS
        }
        assert left["counts"] == dict.fromkeys(left["counts"], 0), left["found"]
        assert ours == []
    finally:
        rt.stop.set()
        for p in pingers:
            if p.proc.poll() is None:
                p.proc.kill()
                p.proc.wait()
        for container in sorted(rt.created):
            netns.delete_namespace(container)
        print_report(name, rt, report, time.monotonic() - started)


def print_report(name: str, rt: Runtime, report: dict, total_s: float) -> None:
    print(
        f"\nchurn: {rt.cycles_done}/{CYCLES} ADD/DEL cycles on {len(HOSTS)} hosts, "
        f"{WORKERS_PER_HOST} workers each, seed {SEED}; test {total_s:.1f}s"
    )
    for what, value in report.items():
        print(f"  {what}: {value}")
    for what, n in sorted(rt.stats.items()):
        print(f"  {what}: {n}")
    for (code, cause), n in sorted(rt.add_failures.items()):
        print(f"  ADD failed, CNI code {code} ({cause}): {n}")
    for kill in rt.kills:
        print(f"  kill: {kill}")
    print(f"  orphans removed by the restarted agents' reconcile: {dict(orphans_reconciled(name))}")
    for error in rt.errors[:5]:
        print(f"  ERROR: {error}")
