"""NetworkPolicy compile at scale, pure: the flows one host gets and the time to compute
them, 1,000 policies over 5,000 pods by default.  No switch, no store.

The cluster: 50 namespaces of 100 pods (labels app=<one of 10>, tier=<one of 3>,
a named container port ``http`` on 8080), pods spread evenly over ``--hosts`` hosts; the
host compiled is one of them, its pods a seeded random share.  The policies cycle
through the shapes clusters use: a namespace's default deny (ingress and egress), allow
from the same app on 8080, allow from namespaces of a team on a port range, allow to the
named port ``http`` from another tier, egress to an ipBlock with an except on 443,
egress to DNS pods on UDP and TCP 53.

    .venv/bin/python -m bench.policy [--pods 5000] [--policies 1000] [--hosts 50] [--runs 5]

It prints the flows by table, the conjunctions and what the same rules would cost as
the product of their clauses (flows without conjunctions), and the full compile's time.
Then the incremental compiler the agent runs (netpol/incremental.py): its first load,
and what one change costs it, by kind (``--changes`` of each, every one different): a
pod elsewhere coming, one going, one relabelled, a pod attached here (a CNI ADD), a
policy added, a namespace relabelled; and, at the end, its flows against the full
compile's (they must be equal).  The
lab part (apply to enforcement on every host, pod-to-pod TCP with a policy) is
bench/policy_lab.py.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections import Counter, defaultdict

from netpol import model
from netpol.compile import HostView, LocalPod, PolicyProgram, compile_policy
from netpol.incremental import (
    PolicyCompiler,
    SetLocalPod,
    SetNamespace,
    SetNetworkPolicy,
    SetPod,
    inputs_between,
)
from netpol.state import PodAddress, PolicyState
from openflow.model import Conjunction

NAMESPACES = 50
APPS, TIERS, TEAMS = 10, 3, 5


def cluster(n_pods: int, n_policies: int) -> PolicyState:
    namespaces = tuple(
        model.parse_namespace({"metadata": {"name": f"ns{i}", "labels": {"team": f"t{i % TEAMS}"}}})
        for i in range(NAMESPACES)
    )
    pods = []
    for i in range(n_pods):
        obj = {
            "metadata": {
                "name": f"pod{i}",
                "namespace": f"ns{i * NAMESPACES // n_pods}",
                "labels": {"app": f"app{i % APPS}", "tier": f"tier{i % TIERS}"},
            },
            "spec": {
                "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]
            },
        }
        ip = f"100.{64 + i // 65536}.{i // 256 % 256}.{i % 256}"
        pods.append(PodAddress(model.parse_pod(obj), ip))
    policies = tuple(model.parse_network_policy(_policy(j)) for j in range(n_policies))
    return PolicyState(namespaces, tuple(pods), policies)


def _policy(j: int) -> dict:
    ns = f"ns{j % NAMESPACES}"
    app = {"matchLabels": {"app": f"app{j // NAMESPACES % APPS}"}}
    shape = j // NAMESPACES % 6
    if shape == 0:
        spec = {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    elif shape == 1:
        spec = {
            "podSelector": app,
            "ingress": [{"from": [{"podSelector": app}], "ports": [{"port": 8080}]}],
        }
    elif shape == 2:
        team = {"matchLabels": {"team": f"t{j % TEAMS}"}}
        spec = {
            "podSelector": app,
            "ingress": [
                {"from": [{"namespaceSelector": team}], "ports": [{"port": 9000, "endPort": 9100}]}
            ],
        }
    elif shape == 3:
        tier = {"matchLabels": {"tier": f"tier{j % TIERS}"}}
        spec = {
            "podSelector": {"matchLabels": {"tier": f"tier{(j + 1) % TIERS}"}},
            "ingress": [
                {
                    "from": [{"podSelector": tier, "namespaceSelector": {}}],
                    "ports": [{"port": "http"}],
                }
            ],
        }
    elif shape == 4:
        spec = {
            "podSelector": app,
            "policyTypes": ["Egress"],
            "egress": [
                {
                    "to": [{"ipBlock": {"cidr": "198.18.0.0/15", "except": ["198.18.7.0/24"]}}],
                    "ports": [{"port": 443}],
                }
            ],
        }
    else:
        dns = {"matchLabels": {"app": "app0"}}
        spec = {
            "podSelector": {},
            "policyTypes": ["Egress"],
            "egress": [
                {
                    "to": [
                        {
                            "namespaceSelector": {"matchLabels": {model.NAME_LABEL: "ns0"}},
                            "podSelector": dns,
                        }
                    ],
                    "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53}],
                }
            ],
        }
    return {"metadata": {"name": f"np{j}", "namespace": ns}, "spec": spec}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pods", type=int, default=5000)
    ap.add_argument("--policies", type=int, default=1000)
    ap.add_argument("--hosts", type=int, default=50)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--changes", type=int, default=200)
    args = ap.parse_args()
    start = time.perf_counter()
    state = cluster(args.pods, args.policies)
    setup = time.perf_counter() - start
    share = random.Random(7).sample(state.pods, len(state.pods) // args.hosts)
    local = tuple(LocalPod(p.key, 10 + i) for i, p in enumerate(share))
    host = HostView(network=1, local=local)
    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        flows = compile_policy(state, host, generation=1)
        times.append(time.perf_counter() - start)
    by_table = Counter(f.table.name for f in flows)
    clause_sizes: dict[int, Counter] = defaultdict(Counter)
    for f in flows:
        for a in f.actions:
            if isinstance(a, Conjunction):
                clause_sizes[a.conj_id][a.clause] += 1
    product = sum(_product(c.values()) for c in clause_sizes.values())
    conj_flows = sum(1 for f in flows if f.actions and isinstance(f.actions[0], Conjunction))
    print(
        f"{args.pods} pods in {NAMESPACES} namespaces, {args.policies} policies; "
        f"this host: {len(local)} pods (1 of {args.hosts}); parsing the objects {setup:.2f} s"
    )
    print(f"flows: {len(flows)}  " + ", ".join(f"{t} {n}" for t, n in sorted(by_table.items())))
    print(
        f"conjunctions: {len(clause_sizes)}, their clause flows {conj_flows}; as the product "
        f"of their clauses (no conjunction) they would be {product} flows"
    )
    print(
        f"compile: median {statistics.median(times):.2f} s, min {min(times):.2f} s (n={len(times)})"
    )
    incremental(state, host, args.changes)


def incremental(state: PolicyState, host: HostView, n: int) -> None:
    """The agent's compiler: its first load, then ``n`` changes of each kind, timed one by
    one (what a change costs the host, with the flows it moves)."""
    compiler = PolicyCompiler(generation=1)
    start = time.perf_counter()
    compiler.update(inputs_between(None, PolicyProgram(state, host)))
    print(f"incremental: first load {time.perf_counter() - start:.2f} s, {len(compiler)} flows")
    start = time.perf_counter()
    compiler.regenerate(2)  # a full sync's new generation: every flow's cookie
    print(f"incremental: a full sync's new cookies {time.perf_counter() - start:.2f} s")
    rng = random.Random(11)
    pods = list(state.pods)
    fresh = iter(range(len(pods), 10**9))
    port = iter(range(10_000, 10**9))

    def new_pod(ns: str | None = None) -> PodAddress:
        i = next(fresh)
        ns = ns or f"ns{rng.randrange(NAMESPACES)}"
        labels = {"app": f"app{i % APPS}", "tier": f"tier{i % TIERS}"}
        obj = {
            "metadata": {"name": f"pod{i}", "namespace": ns, "labels": labels},
            "spec": {
                "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]
            },
        }
        return PodAddress(model.parse_pod(obj), f"100.{96 + i // 65536}.{i // 256 % 256}.{i % 256}")

    def relabel(p: PodAddress) -> PodAddress:
        labels = {**p.pod.labels, "app": f"app{rng.randrange(APPS)}"}
        pod = model.Pod(p.pod.namespace, p.pod.name, labels, p.pod.ports)
        return PodAddress(pod, p.ip)

    def add_here():
        p = new_pod()
        return [SetPod(p.key, p), SetLocalPod(p.key, next(port))]

    def new_policy():
        obj = _policy(next(fresh))
        obj["metadata"]["name"] += "-extra"
        np = model.parse_network_policy(obj)
        return [SetNetworkPolicy(np.key, np)]

    def relabel_namespace():
        i = rng.randrange(NAMESPACES)
        labels = {"team": f"t{rng.randrange(TEAMS)}"}
        ns = model.parse_namespace({"metadata": {"name": f"ns{i}", "labels": labels}})
        return [SetNamespace(ns.name, ns)]

    kinds = {
        "pod elsewhere comes": lambda: [SetPod((p := new_pod()).key, p)],
        "pod elsewhere goes": lambda: [SetPod(pods.pop(rng.randrange(len(pods))).key, None)],
        "pod relabelled": lambda: [SetPod((p := relabel(rng.choice(pods))).key, p)],
        "pod attached here": add_here,
        "policy added": new_policy,
        "namespace relabelled": relabel_namespace,
    }
    print(f"one change, {n} of each: median / p99 / max ms, flows moved (median, max)")
    for name, make in kinds.items():
        times, moved = [], []
        for _ in range(n):
            inputs = make()
            start = time.perf_counter()
            out = compiler.update(inputs)
            times.append((time.perf_counter() - start) * 1000)
            moved.append(len(out))
        times.sort()
        p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
        print(
            f"  {name:22s} {statistics.median(times):7.2f} / {p99:7.2f} / {times[-1]:7.2f}"
            f"   {statistics.median(moved):5.0f}, {max(moved)}"
        )
    want = compile_policy(*_parts(compiler.program()), generation=2)
    same = set(want) == set(compiler.flows())
    print(f"incremental flows equal the full compile's after every change: {same}")
    if not same:
        raise SystemExit("the incremental compiler disagrees with the full compile")


def _parts(program: PolicyProgram) -> tuple[PolicyState, HostView]:
    return program.state, program.view


def _product(sizes) -> int:
    out = 1
    for s in sizes:
        out *= s
    return out


if __name__ == "__main__":
    main()
