"""The upstream NetworkPolicy e2e model and cases (kubernetes/kubernetes
test/e2e/network/netpol: model.go, network_policy.go, reachability.go), as data shared by
the evaluator's and the compiler's tests (and the lab's, later).

Namespaces x, y, z; pods a, b, c in each, labelled ``pod=<name>``, each with the named
container ports ``serve-<port>-<proto>`` for ports 80 and 81 and TCP, UDP and SCTP
(model.go).  Each case is the policies one upstream test creates and, per probed port
and protocol, the truth table it expects, written with upstream's own verbs
(``expect_peer``, ``expect_all_ingress``...) on all nine pods.  Upstream runs most cases
on a subset of the pods; where the full matrix needs a line upstream did not write (a
pod it left out), the line says so.  Loopback is allowed (upstream ignores it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from netpol import model
from netpol.state import PodAddress, PolicyState

NAMESPACES = ("x", "y", "z")
PODS = ("a", "b", "c")
ALL = tuple(f"{ns}/{p}" for ns in NAMESPACES for p in PODS)


def ip_of(key: str) -> str:
    ns, pod = key.split("/")
    return f"100.64.{NAMESPACES.index(ns) + 1}.{PODS.index(pod) + 10}"


def pod_object(key: str, labels: dict | None = None) -> dict:
    ns, name = key.split("/")
    ports = [
        {"name": f"serve-{port}-{proto.lower()}", "containerPort": port, "protocol": proto}
        for port in (80, 81)
        for proto in ("TCP", "UDP", "SCTP")
    ]
    return {
        "metadata": {"name": name, "namespace": ns, "labels": labels or {"pod": name}},
        "spec": {"containers": [{"name": "c", "ports": ports}]},
    }


def policy(name: str, ns: str, selector: dict, ingress=None, egress=None) -> dict:
    """GenNetworkPolicyWithNameAndPodSelector with SetSpecIngressRules/SetSpecEgressRules:
    each direction given (even with no rules) is in policyTypes."""
    spec: dict = {"podSelector": selector, "policyTypes": []}
    if ingress is not None:
        spec["ingress"] = ingress
        spec["policyTypes"].append("Ingress")
    if egress is not None:
        spec["egress"] = egress
        spec["policyTypes"].append("Egress")
    return {"metadata": {"name": name, "namespace": ns}, "spec": spec}


def pod_label(name: str) -> dict:
    return {"matchLabels": {"pod": name}}


def ns_name(name: str) -> dict:
    return {"matchLabels": {model.NAME_LABEL: name}}


def ns_not_in(name: str) -> dict:
    return {"matchExpressions": [{"key": model.NAME_LABEL, "operator": "NotIn", "values": [name]}]}


class Reachability:
    """Upstream's expected truth table (reachability.go), default all allowed."""

    def __init__(self) -> None:
        self.table = {(f, t): True for f in ALL for t in ALL}

    def expect(self, src: str, dst: str, ok: bool) -> Reachability:
        self.table[src, dst] = ok
        return self

    def expect_peer(self, src=("", ""), dst=("", ""), ok=False) -> Reachability:
        """Peer{Namespace, Pod} matchers, empty matching everything."""
        for f in ALL:
            for t in ALL:
                if _peer(src, f) and _peer(dst, t):
                    self.table[f, t] = ok
        return self

    def expect_all_ingress(self, pod: str, ok: bool) -> Reachability:
        return self.expect_peer(dst=tuple(pod.split("/")), ok=ok)

    def expect_all_egress(self, pod: str, ok: bool) -> Reachability:
        return self.expect_peer(src=tuple(pod.split("/")), ok=ok)

    def expected(self) -> dict[tuple[str, str], bool]:
        """With AllowLoopback applied: a pod always reaches itself."""
        return {k: v or k[0] == k[1] for k, v in self.table.items()}


def _peer(peer: tuple[str, str], key: str) -> bool:
    ns, pod = key.split("/")
    return peer[0] in ("", ns) and peer[1] in ("", pod)


@dataclass
class Case:
    name: str
    policies: list[dict]
    probes: list[tuple[int, str, Reachability]]
    pod_labels: dict[str, dict] = field(default_factory=dict)
    namespace_labels: dict[str, dict] = field(default_factory=dict)

    def state(self) -> PolicyState:
        namespaces = tuple(
            model.parse_namespace(
                {"metadata": {"name": ns, "labels": self.namespace_labels.get(ns, {"ns": ns})}}
            )
            for ns in NAMESPACES
        )
        pods = tuple(
            PodAddress(model.parse_pod(pod_object(k, self.pod_labels.get(k))), ip_of(k))
            for k in ALL
        )
        policies = tuple(model.parse_network_policy(p) for p in self.policies)
        return PolicyState(namespaces, pods, policies)


R = Reachability
X, Y, Z = ("x", ""), ("y", ""), ("z", "")
ANY = ("", "")
EVERYONE = {"podSelector": {}, "namespaceSelector": {}}
deny_ingress_x = policy("deny-ingress", "x", {}, ingress=[])
port = {"port": 81, "protocol": "TCP"}

CASES = [
    Case(
        "default-deny-ingress",
        [deny_ingress_x],
        [
            (80, "TCP", R().expect_peer(ANY, X, False)),
            (80, "UDP", R().expect_peer(ANY, X, False)),  # the UDP Context's copy
        ],
    ),
    Case(
        "default-deny-all",
        [policy("deny-all", "x", {}, ingress=[], egress=[])],
        [(80, "TCP", R().expect_peer(ANY, X, False).expect_peer(X, ANY, False))],
    ),
    Case(
        "allow from pods within server namespace based on PodSelector",
        [
            policy(
                "x-a-allows-x-b",
                "x",
                pod_label("a"),
                ingress=[{"from": [{"podSelector": pod_label("b")}]}],
            )
        ],
        [(80, "TCP", R().expect_all_ingress("x/a", False).expect("x/b", "x/a", True))],
    ),
    Case(
        "allow ingress traffic for a target",
        [
            policy("deny-all", "x", {}, ingress=[]),
            policy("allow-all-to-a", "x", pod_label("a"), ingress=[{"from": [EVERYONE]}]),
        ],
        [
            (
                80,
                "TCP",
                R()
                .expect_all_ingress("x/a", True)
                .expect_all_ingress("x/b", False)
                .expect_all_ingress("x/c", False),  # x/c: not in upstream's pods
            )
        ],
    ),
    Case(
        "allow ingress traffic from pods in all namespaces",
        [
            policy(
                "allow-from-another-ns",
                "x",
                pod_label("a"),
                ingress=[{"from": [{"namespaceSelector": {"matchLabels": {}}}]}],
            )
        ],
        [(80, "TCP", R())],
    ),
    Case(
        "allow traffic only from a different namespace, based on NamespaceSelector",
        [
            policy(
                "allow-client-a-via-ns-selector",
                "x",
                pod_label("a"),
                ingress=[{"from": [{"namespaceSelector": ns_name("y")}]}],
            )
        ],
        [(80, "TCP", R().expect_peer(X, ("x", "a"), False).expect_peer(Z, ("x", "a"), False))],
    ),
    Case(
        "PodSelector with MatchExpressions",
        [
            policy(
                "x-a-allows-x-b",
                "x",
                pod_label("a"),
                ingress=[
                    {
                        "from": [
                            {
                                "podSelector": {
                                    "matchExpressions": [
                                        {"key": "pod", "operator": "In", "values": ["b"]}
                                    ]
                                }
                            }
                        ]
                    }
                ],
            )
        ],
        [(80, "TCP", R().expect_all_ingress("x/a", False).expect("x/b", "x/a", True))],
    ),
    Case(
        "NamespaceSelector with MatchExpressions",
        [
            policy(
                "allow-ns-y-match-selector",
                "x",
                pod_label("a"),
                ingress=[
                    {
                        "from": [
                            {
                                "namespaceSelector": {
                                    "matchExpressions": [
                                        {"key": model.NAME_LABEL, "operator": "In", "values": ["y"]}
                                    ]
                                }
                            }
                        ]
                    }
                ],
            )
        ],
        [(80, "TCP", R().expect_peer(X, ("x", "a"), False).expect_peer(Z, ("x", "a"), False))],
    ),
    Case(
        "PodSelector or NamespaceSelector",
        [
            policy(
                "allow-ns-y-match-selector",
                "x",
                pod_label("a"),
                ingress=[
                    {
                        "from": [
                            {"namespaceSelector": ns_not_in("x")},
                            {"podSelector": pod_label("b")},
                        ]
                    }
                ],
            )
        ],
        [(80, "TCP", R().expect("x/a", "x/a", False).expect("x/c", "x/a", False))],
    ),
    Case(
        "PodSelector and NamespaceSelector",
        [
            policy(
                "allow-ns-y-podselector-and-nsselector",
                "x",
                pod_label("a"),
                ingress=[
                    {"from": [{"namespaceSelector": ns_not_in("x"), "podSelector": pod_label("b")}]}
                ],
            )
        ],
        [
            (
                80,
                "TCP",
                R()
                .expect_all_ingress("x/a", False)
                .expect("y/b", "x/a", True)
                .expect("z/b", "x/a", True),
            )
        ],
    ),
    Case(
        "Multiple PodSelectors and NamespaceSelectors",
        [
            policy(
                "allow-ns-y-z-pod-b-c",
                "x",
                pod_label("a"),
                ingress=[
                    {
                        "from": [
                            {
                                "namespaceSelector": ns_not_in("x"),
                                "podSelector": {
                                    "matchExpressions": [
                                        {"key": "pod", "operator": "In", "values": ["b", "c"]}
                                    ]
                                },
                            }
                        ]
                    }
                ],
            )
        ],
        [
            (
                80,
                "TCP",
                R()
                .expect_peer(X, ("x", "a"), False)
                .expect("y/a", "x/a", False)
                .expect("z/a", "x/a", False),  # z/a: not in upstream's pods
            )
        ],
    ),
    Case(
        "any PodSelectors",
        [
            policy(
                "allow-ns-x-pod-b-c",
                "x",
                pod_label("a"),
                ingress=[
                    {"from": [{"podSelector": pod_label("b")}, {"podSelector": pod_label("c")}]}
                ],
            )
        ],
        [
            (
                80,
                "TCP",
                R()
                .expect_all_ingress("x/a", False)
                .expect("x/b", "x/a", True)
                .expect("x/c", "x/a", True),
            )
        ],
    ),
    Case(
        "only from a pod in a different namespace based on PodSelector and NamespaceSelector",
        [
            policy(
                "allow-ns-y-pod-a-via-namespace-pod-selector",
                "x",
                pod_label("a"),
                ingress=[
                    {"from": [{"namespaceSelector": ns_name("y"), "podSelector": pod_label("a")}]}
                ],
            )
        ],
        [
            (80, "TCP", R().expect_all_ingress("x/a", False).expect("y/a", "x/a", True)),
            (80, "UDP", R().expect_all_ingress("x/a", False).expect("y/a", "x/a", True)),
        ],
    ),
    Case(
        "Ports",
        [
            policy(
                "allow-client-a-via-ns-selector",
                "x",
                pod_label("a"),
                ingress=[{"from": [{"namespaceSelector": ns_name("y")}], "ports": [port]}],
            )
        ],
        [
            (
                81,
                "TCP",
                R()
                .expect_peer(X, ("x", "a"), False)
                .expect_peer(Y, ("x", "a"), True)
                .expect_peer(Z, ("x", "a"), False),
            ),
            (80, "TCP", R().expect_all_ingress("x/a", False)),  # the stacked test's port 80
        ],
    ),
    Case(
        "Ports, UDP",
        [
            policy(
                "allow-ingress-on-port-81-ns-x",
                "x",
                pod_label("a"),
                ingress=[
                    {
                        "from": [{"namespaceSelector": ns_name("y")}],
                        "ports": [{"port": 81, "protocol": "UDP"}],
                    }
                ],
            )
        ],
        [(81, "UDP", R().expect_peer(X, ("x", "a"), False).expect_peer(Z, ("x", "a"), False))],
    ),
    Case(
        "multiple, stacked policies with overlapping podSelectors",
        [
            policy(
                "allow-client-a-via-ns-selector",
                "x",
                pod_label("a"),
                ingress=[{"from": [{"namespaceSelector": ns_name("y")}], "ports": [port]}],
            ),
            policy(
                "allow-client-a-via-ns-selector-80",
                "x",
                pod_label("a"),
                ingress=[
                    {
                        "from": [{"namespaceSelector": ns_name("y")}],
                        "ports": [{"port": 80, "protocol": "TCP"}],
                    }
                ],
            ),
        ],
        [
            (
                p,
                "TCP",
                R()
                .expect_peer(X, ("x", "a"), False)
                .expect_peer(Y, ("x", "a"), True)
                .expect_peer(Z, ("x", "a"), False),
            )
            for p in (80, 81)
        ],
    ),
    Case(
        "allow-all",
        [policy("allow-all", "x", {}, ingress=[{}])],
        [(80, "TCP", R()), (81, "TCP", R())],
    ),
    Case(
        "ingress access on one named port",
        [policy("allow-all", "x", {}, ingress=[{"ports": [{"port": "serve-81-tcp"}]}])],
        [(81, "TCP", R()), (80, "TCP", R().expect_peer(ANY, X, False))],
    ),
    Case(
        "ingress access from namespace on one named port",
        [
            policy(
                "allow-client-a-via-ns-selector-80",
                "x",
                pod_label("a"),
                ingress=[
                    {
                        "from": [{"namespaceSelector": ns_name("y")}],
                        "ports": [{"port": "serve-80-tcp", "protocol": "TCP"}],
                    }
                ],
            )
        ],
        [
            (80, "TCP", R().expect_peer(X, ("x", "a"), False).expect_peer(Z, ("x", "a"), False)),
            (81, "TCP", R().expect_all_ingress("x/a", False)),
        ],
    ),
    Case(
        "egress access on one named port",
        [policy("allow-egress", "x", {}, egress=[{"ports": [{"port": "serve-80-tcp"}]}])],
        [(80, "TCP", R()), (81, "TCP", R().expect_peer(X, ANY, False))],
    ),
    Case(
        "updated policy: deny all after allow all",
        [policy("allow-all-mutate-to-deny-all", "x", {}, ingress=[])],
        [(81, "TCP", R().expect_peer(ANY, X, False))],
    ),
    Case(
        "ingress access from updated namespace (before the label)",
        [
            policy(
                "allow-client-a-via-ns-selector",
                "x",
                pod_label("a"),
                ingress=[{"from": [{"namespaceSelector": {"matchLabels": {"ns2": "updated"}}}]}],
            )
        ],
        [(80, "TCP", R().expect_all_ingress("x/a", False))],
    ),
    Case(
        "ingress access from updated namespace (after the label)",
        [
            policy(
                "allow-client-a-via-ns-selector",
                "x",
                pod_label("a"),
                ingress=[{"from": [{"namespaceSelector": {"matchLabels": {"ns2": "updated"}}}]}],
            )
        ],
        [(80, "TCP", R().expect_all_ingress("x/a", False).expect_peer(Y, ANY, True))],
        namespace_labels={"y": {"ns": "y", "ns2": "updated"}},
    ),
    Case(
        "ingress access from updated pod (after the label)",
        [
            policy(
                "allow-client-a-via-pod-selector",
                "x",
                pod_label("a"),
                ingress=[
                    {"from": [{"podSelector": {"matchLabels": {"pod": "b", "pod2": "updated"}}}]}
                ],
            )
        ],
        [(80, "TCP", R().expect_all_ingress("x/a", False).expect("x/b", "x/a", True))],
        pod_labels={"x/b": {"pod": "b", "pod2": "updated"}},
    ),
    Case(
        "deny ingress from pods on other namespaces",
        [
            policy(
                "deny-empty-policy",
                "x",
                {},
                ingress=[{"from": [{"podSelector": {"matchLabels": {}}}]}],
            )
        ],
        [(80, "TCP", R().expect_peer(Y, X, False).expect_peer(Z, X, False))],
    ),
    Case(
        "deny ingress access to updated pod (after the label)",
        [
            policy(
                "deny-ingress-via-label-selector",
                "x",
                {"matchLabels": {"target": "isolated"}},
                ingress=[],
            )
        ],
        [(80, "TCP", R().expect_all_ingress("x/a", False))],
        pod_labels={"x/a": {"pod": "a", "target": "isolated"}},
    ),
    Case(
        "deny egress from pods based on PodSelector",
        [policy("deny-egress-pod-a", "x", pod_label("a"), egress=[])],
        [(80, "TCP", R().expect_all_egress("x/a", False))],
    ),
    Case(
        "deny egress from all pods in a namespace",
        [policy("deny-egress-ns-x", "x", {}, egress=[])],
        [(80, "TCP", R().expect_peer(X, ANY, False))],
    ),
    Case(
        "Ingress, Egress specified together",
        [
            policy(
                "allow-client-a-via-pod-selector",
                "x",
                pod_label("a"),
                ingress=[{"from": [{"podSelector": pod_label("b")}]}],
                egress=[{"ports": [{"port": 80}]}],
            )
        ],
        [
            (80, "TCP", R().expect_all_ingress("x/a", False).expect("x/b", "x/a", True)),
            (
                81,
                "TCP",
                R()
                .expect_all_ingress("x/a", False)
                .expect_all_egress("x/a", False)
                .expect("x/b", "x/a", True),
            ),
        ],
    ),
    Case(
        "denying of egress traffic on the client side (even if the server allows it)",
        [
            policy(
                "allow-to-ns-y-pod-a",
                "x",
                pod_label("a"),
                egress=[
                    {"to": [{"namespaceSelector": ns_name("y"), "podSelector": pod_label("a")}]}
                ],
            ),
            policy(
                "allow-from-xa-on-ya-match-selector",
                "y",
                pod_label("a"),
                ingress=[
                    {"from": [{"namespaceSelector": ns_name("x"), "podSelector": pod_label("a")}]}
                ],
            ),
            policy(
                "allow-from-xa-on-yb-match-selector",
                "y",
                pod_label("b"),
                ingress=[
                    {"from": [{"namespaceSelector": ns_name("x"), "podSelector": pod_label("a")}]}
                ],
            ),
        ],
        [
            (
                80,
                "TCP",
                R()
                .expect_peer(("x", "a"), ANY, False)
                .expect_peer(ANY, ("y", "a"), False)
                .expect_peer(("x", "a"), ("y", "a"), True)
                .expect_peer(ANY, ("y", "b"), False),
            )
        ],
    ),
    Case(
        "egress to a server in a different namespace based on PodSelector and NamespaceSelector",
        [
            policy(
                "allow-to-ns-y-pod-a",
                "x",
                pod_label("a"),
                egress=[
                    {"to": [{"namespaceSelector": ns_name("y"), "podSelector": pod_label("a")}]}
                ],
            )
        ],
        [(80, "TCP", R().expect_all_egress("x/a", False).expect("x/a", "y/a", True))],
    ),
    Case(
        "ingress allowing any port on a specific protocol",
        [
            policy(
                "allow-ingress-by-proto",
                "x",
                pod_label("a"),
                ingress=[{"ports": [{"protocol": "TCP"}]}],
            )
        ],
        [(80, "TCP", R()), (80, "UDP", R().expect_peer(ANY, ("x", "a"), False))],
    ),
    Case(
        "multiple ingress policies, allow-all taking precedence (before it)",
        [policy("allow-ingress-port-80", "x", {}, ingress=[{"ports": [{"port": 80}]}])],
        [(81, "TCP", R().expect_peer(ANY, X, False))],
    ),
    Case(
        "multiple ingress policies, allow-all taking precedence",
        [
            policy("allow-ingress-port-80", "x", {}, ingress=[{"ports": [{"port": 80}]}]),
            policy("allow-ingress", "x", {}, ingress=[{}]),
        ],
        [(81, "TCP", R())],
    ),
    Case(
        "multiple egress policies, allow-all taking precedence (before it)",
        [policy("allow-egress-port-80", "x", {}, egress=[{"ports": [{"port": 80}]}])],
        [(81, "TCP", R().expect_peer(X, ANY, False))],
    ),
    Case(
        "multiple egress policies, allow-all taking precedence",
        [
            policy("allow-egress-port-80", "x", {}, egress=[{"ports": [{"port": 80}]}]),
            policy("allow-egress", "x", {}, egress=[{}]),
        ],
        [(81, "TCP", R())],
    ),
    Case("policies deleted", [], [(80, "TCP", R())]),
    Case(
        "egress access to server in CIDR block",
        [
            policy(
                "allow-client-a-via-cidr-egress-rule",
                "x",
                pod_label("a"),
                egress=[{"to": [{"ipBlock": {"cidr": ip_of("y/b") + "/32"}}]}],
            )
        ],
        [(80, "TCP", R().expect_all_egress("x/a", False).expect("x/a", "y/b", True))],
    ),
    Case(
        "except clause while egress access to server in CIDR block",
        [
            policy(
                "allow-client-a-via-cidr-egress-rule",
                "x",
                pod_label("a"),
                # makeLargeCIDRForIP: the pod's address under a /4
                egress=[
                    {
                        "to": [
                            {
                                "ipBlock": {
                                    "cidr": ip_of("x/b") + "/4",
                                    "except": [ip_of("x/b") + "/32"],
                                }
                            }
                        ]
                    }
                ],
            )
        ],
        [(80, "TCP", R().expect("x/a", "x/b", False))],
    ),
    Case(
        "an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed (after the update)",
        [
            policy(
                "allow-client-a-via-cidr-egress-rule",
                "x",
                pod_label("a"),
                egress=[{"to": [{"ipBlock": {"cidr": ip_of("x/b") + "/32"}}]}],
            )
        ],
        [(80, "TCP", R().expect_all_egress("x/a", False).expect("x/a", "x/b", True))],
    ),
    Case(
        "ingress and egress policies controlled independently",
        [
            policy("allow-egress-for-target", "x", pod_label("a"), egress=[{}]),
            policy("deny-ingress-via-label-selector", "x", pod_label("a"), ingress=[]),
        ],
        [(80, "TCP", R().expect_all_ingress("x/a", False))],
    ),
    Case(
        "not mistakenly treat 'protocol: SCTP' as 'protocol: TCP'",
        [
            deny_ingress_x,
            policy(
                "allow-only-sctp-ingress-on-port-81",
                "x",
                pod_label("a"),
                ingress=[{"ports": [{"port": 81, "protocol": "SCTP"}]}],
            ),
        ],
        [(81, "TCP", R().expect_peer(ANY, X, False))],
    ),
    Case(
        "isolate pods selected by a policy allowing SCTP",
        [
            policy(
                "allow-only-sctp-ingress-on-port-80",
                "x",
                pod_label("a"),
                ingress=[{"ports": [{"port": 80, "protocol": "SCTP"}]}],
            )
        ],
        [(81, "TCP", R().expect_all_ingress("x/a", False))],
    ),
    Case(
        "no TCP when a policy specifies only UDP",
        [
            policy(
                "allow-only-udp-ingress-on-port-81",
                "x",
                pod_label("a"),
                ingress=[{"ports": [{"port": 81, "protocol": "UDP"}]}],
            )
        ],
        [(81, "TCP", R().expect_all_ingress("x/a", False)), (81, "UDP", R())],
    ),
    Case(
        "NamespaceSelector with MatchExpressions using default ns label (egress)",
        [
            policy(
                "allow-ns-y-match-selector-for-immutable-ns-label",
                "x",
                pod_label("a"),
                egress=[
                    {
                        "to": [
                            {
                                "namespaceSelector": {
                                    "matchExpressions": [
                                        {
                                            "key": model.NAME_LABEL,
                                            "operator": "NotIn",
                                            "values": ["y"],
                                        }
                                    ]
                                }
                            }
                        ]
                    }
                ],
            )
        ],
        [(80, "TCP", R().expect_peer(("x", "a"), Y, False))],
    ),
    # endPort (not in today's upstream suite; the API reference's semantics): a range
    # admits its ends and what is between, nothing else.
    Case(
        "endPort range 80-81",
        [
            policy(
                "allow-80-81",
                "x",
                pod_label("a"),
                ingress=[{"ports": [{"port": 80, "endPort": 81}]}],
            )
        ],
        [(80, "TCP", R()), (81, "TCP", R()), (81, "UDP", R().expect_all_ingress("x/a", False))],
    ),
    Case(
        "endPort range 79-80",
        [
            policy(
                "allow-79-80",
                "x",
                pod_label("a"),
                ingress=[{"ports": [{"port": 79, "endPort": 80}]}],
            )
        ],
        [(80, "TCP", R()), (81, "TCP", R().expect_all_ingress("x/a", False))],
    ),
]
