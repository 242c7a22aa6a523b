"""The NetworkPolicy spec read literally: is this one connection allowed, and why.

This is the oracle the compiler is held to (tests/unit/test_netpol_compile.py runs the
compiled flows through the switch simulator and compares), and what ``policy check``
answers from.  It follows the API reference and the upstream e2e suite
(kubernetes/kubernetes test/e2e/network/netpol):

- A pod no policy selects for a direction (its namespace, its pod selector, the
  direction in ``policyTypes``) is not isolated in it: everything passes that way.
- An isolated pod admits only what some rule of some policy selecting it allows; rules
  and policies union, nothing denies.
- A connection needs both: egress allowed at its source and ingress at its destination.
  An address that is no pod has no policy of its own (nothing isolates it).
- A peer: pod and namespace selectors in one entry both hold (AND), two entries are
  alternatives (OR); no namespace selector means the policy's namespace; an ipBlock
  matches addresses, pods' addresses included (as upstream's "should enforce except
  clause while egress access to server in CIDR block" shows), minus its excepts.
- Ports: a number, a range to endPort, every port of the protocol, or a name, which is
  the destination pod's container port of that name and protocol (for ingress the
  selected pod's own, for egress the peer's); a name nothing resolves matches nothing.
- A pod reaching itself is allowed whatever the policies.  Upstream leaves loopback
  undefined (network_policy.go ignores it, kubernetes#95879) and its model says
  "loopback logic follows no policy" (reachability.go, AllowLoopback); on our data path
  such a packet never reaches the switch (the pod's own kernel loops it back).
"""

from __future__ import annotations

from dataclasses import dataclass

from netpol.model import NetworkPolicy, Peer, Pod, PolicyPort, Rule
from netpol.state import PodAddress, PolicyState, in_block

Endpoint = PodAddress | str  # a pod, or an address that is no pod's

INGRESS, EGRESS = "Ingress", "Egress"


@dataclass(frozen=True, order=True)
class RuleRef:
    """One rule: ``policy`` (namespace/name), its direction and index in that list."""

    policy: str
    direction: str
    index: int

    def __str__(self) -> str:
        return f"{self.policy} {self.direction.lower()}[{self.index}]"


@dataclass(frozen=True)
class DirectionVerdict:
    """One direction's verdict: ``isolated_by`` the policies selecting the pod for it
    (empty: not isolated, allowed), ``allowed_by`` every rule that allows, in order."""

    allowed: bool
    isolated_by: tuple[str, ...] = ()
    allowed_by: tuple[RuleRef, ...] = ()

    def explain(self, direction: str, pod: str | None) -> str:
        if pod is None:
            return f"{direction.lower()}: no pod, no policy"
        if not self.isolated_by:
            return f"{direction.lower()}: no policy selects {pod}"
        if self.allowed_by:
            return f"{direction.lower()}: allowed by {self.allowed_by[0]}"
        policies = ", ".join(self.isolated_by)
        return f"{direction.lower()}: {pod} isolated by {policies}, no rule allows"


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    egress: DirectionVerdict
    ingress: DirectionVerdict
    reason: str


_OPEN = DirectionVerdict(True)


def evaluate(state: PolicyState, src: Endpoint, dst: Endpoint, protocol: str, port: int) -> Verdict:
    """Is a new ``protocol`` connection from ``src`` to ``dst``'s ``port`` allowed?"""
    if isinstance(src, PodAddress) and isinstance(dst, PodAddress) and src.key == dst.key:
        return Verdict(True, _OPEN, _OPEN, f"{src.key} reaching itself: always allowed")
    egress = _egress(state, src, dst, protocol, port)
    ingress = _ingress(state, src, dst, protocol, port)
    src_name = src.key if isinstance(src, PodAddress) else None
    dst_name = dst.key if isinstance(dst, PodAddress) else None
    reason = "; ".join((egress.explain(EGRESS, src_name), ingress.explain(INGRESS, dst_name)))
    return Verdict(egress.allowed and ingress.allowed, egress, ingress, reason)


def _egress(state: PolicyState, src: Endpoint, dst: Endpoint, proto: str, port: int):
    if not isinstance(src, PodAddress):
        return _OPEN
    target = dst.pod if isinstance(dst, PodAddress) else None
    return _direction(state, src, EGRESS, dst, proto, port, target)


def _ingress(state: PolicyState, src: Endpoint, dst: Endpoint, proto: str, port: int):
    if not isinstance(dst, PodAddress):
        return _OPEN
    return _direction(state, dst, INGRESS, src, proto, port, dst.pod)


def _direction(state, pod: PodAddress, direction, peer: Endpoint, proto, port, target):
    """``pod``'s verdict in ``direction`` on a connection with ``peer``; named ports
    resolve on ``target`` (the destination pod, or None for an address)."""
    isolating = [
        p for p in state.policies if direction in p.policy_types and state.selects(p, pod.pod)
    ]
    if not isolating:
        return _OPEN
    allowed = tuple(
        RuleRef(p.key, direction, i)
        for p in isolating
        for i, rule in enumerate(p.ingress if direction == INGRESS else p.egress)
        if rule_allows(state, p, rule, peer, proto, port, target)
    )
    return DirectionVerdict(bool(allowed), tuple(p.key for p in isolating), allowed)


def rule_allows(
    state: PolicyState,
    policy: NetworkPolicy,
    rule: Rule,
    peer: Endpoint,
    protocol: str,
    port: int,
    target: Pod | None,
) -> bool:
    """One rule admits the peer on this protocol and port (empty lists: every peer,
    every port)."""
    if rule.peers and not any(peer_matches(state, policy, p, peer) for p in rule.peers):
        return False
    return not rule.ports or any(port_matches(pp, protocol, port, target) for pp in rule.ports)


def peer_matches(state: PolicyState, policy: NetworkPolicy, peer: Peer, endpoint: Endpoint) -> bool:
    if peer.ip_block is not None:
        ip = endpoint.ip if isinstance(endpoint, PodAddress) else endpoint
        return in_block(ip, peer.ip_block.cidr, peer.ip_block.except_)
    return isinstance(endpoint, PodAddress) and state.peer_selects(policy, peer, endpoint.pod)


def port_matches(pp: PolicyPort, protocol: str, port: int, target: Pod | None) -> bool:
    if pp.protocol != protocol:
        return False
    if pp.port is None:
        return True
    if isinstance(pp.port, str):
        return target is not None and any(
            c.name == pp.port and c.protocol == protocol and c.port == port for c in target.ports
        )
    return pp.port <= port <= (pp.end_port or pp.port)
