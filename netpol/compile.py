"""NetworkPolicy compiled to one host's flows: conntrack judges new connections only,
and conjunctive matches keep the flows to the sum of a rule's pods, peers and ports.

The tables (openflow/tables.py, docs/pipeline.md) sit between l2_forward's decision and
acting on it; a packet of the pods' network goes:

    policy_conntrack ─ ct(zone=network) ─► policy_state ─┬─ +est, +rel ─► host_conntrack
                                                         ├─ +inv: drop
                                                         └─ +new ─► egress_rules
    egress_rules:   a rule allows ─► ingress_rules
                    none ─► egress_isolation (isolated: drop) ─► ingress_rules
    ingress_rules:  a rule allows ─► policy_commit
                    none ─► ingress_isolation (isolated: drop) ─► policy_commit
    policy_commit:  ct(commit, zone=network) ─► host_conntrack

Egress is judged on the source's host (the packet enters from the pod's port:
``in_port``), ingress on the destination's (l2_forward decided the pod's port: ``reg1``),
both on one host when both pods are there.  A pod no policy isolates in a direction has
no flows there and passes; an isolated one passes only through a rule's flows, else its
isolation flow drops the packet.  The connection is committed once, after both verdicts,
so its later packets and its replies are +est: they pass whatever the policies say now
(docs/pipeline.md: a new policy does not cut established connections).

One rule of one policy (Antrea's design, pkg/agent/openflow/network_policy.go):
conjunction ``rule_id << 8 | group`` of up to three clauses, the pods it applies to
(on this host), its peers' addresses (pods by selector as /32s; ipBlocks, their excepts
cut out), its ports (ranges as masked matches).  A clause every packet meets (no peers
or no ports in the rule) is left out; a rule of pods only is ordinary flows.  A named
port splits the rule into one group per number it resolves to: for ingress, the local
pods that name it so; for egress, the peer pods that do (a name resolves on the
destination pod, so an address that is no pod never matches one).  At most 255 groups
per rule: more distinct numbers behind one name is not a real pod fleet; those beyond
match nothing (fail closed).

When several rules allow a connection OVS takes one of their conjunctions (which is not
defined); the verdict is the same.  Rule ids are stable: a hash of the policy, direction
and index, probed to the next free id on a collision, so hosts agree and a rule keeps its
id (its cookie, its counters) while other policies come and go.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from netpol.evaluate import EGRESS, INGRESS, RuleRef, peer_matches
from netpol.model import NetworkPolicy, Peer, Pod, PolicyPort, Rule
from netpol.state import PodAddress, PolicyState
from openflow.cookies import MAX_OBJECT_ID, Feature, cookie
from openflow.model import (
    CT_EST,
    CT_INV,
    CT_NEW,
    CT_REL,
    CT_TRK,
    ETH_TYPE_IP,
    IPPROTO_SCTP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    Conjunction,
    Ct,
    Flow,
    MatchField,
    match,
)
from openflow.registers import EGRESS_RULE, INGRESS_RULE, NETWORK, load, matching
from openflow.tables import (
    EGRESS_ISOLATION,
    EGRESS_RULES,
    HOST_CONNTRACK,
    INGRESS_ISOLATION,
    INGRESS_RULES,
    POLICY_COMMIT,
    POLICY_CONNTRACK,
    POLICY_STATE,
    Table,
)

PRIO_DEFAULT = 0
PRIO_NORMAL = 100
PRIO_CONJUNCTION = 200  # every clause flow: a conjunction's clauses share one priority
PRIO_ALLOW_ALL = 300  # a rule of pods only (no clause of peers or ports)
PRIO_SELF = 400  # a pod reaching itself (by way of the host: a Service to itself)
PRIO_INVALID = 200
PRIO_ESTABLISHED = 110

MAX_GROUPS = 255
_PROTO = {"TCP": IPPROTO_TCP, "UDP": IPPROTO_UDP, "SCTP": IPPROTO_SCTP}
_DST_PORT = {"TCP": "tcp_dst", "UDP": "udp_dst", "SCTP": "sctp_dst"}


@dataclass(frozen=True)
class LocalPod:
    """A pod attached on this host: its Kubernetes key (namespace/name) and its port."""

    key: str
    ofport: int


@dataclass(frozen=True)
class HostView:
    """What the compiler needs of one host: the dense index of the network Kubernetes
    pods are on (its conntrack zone; other networks' packets pass policy untouched), the
    pods attached here, and the host's own address in that network (its gateway's).

    The host reaches its own pods whatever the policies say: kubelet's liveness and
    readiness probes come from it, and a default deny of ingress must not kill every
    pod it selects (Antrea and Calico allow the node the same way; the upstream e2e
    suite, which probes pod to pod, never sees it)."""

    network: int
    local: tuple[LocalPod, ...]
    host_ip: str | None = None


@dataclass(frozen=True)
class PolicyProgram:
    """What one host's policy flows are compiled from, whole: the full compile's input,
    the oracle the agent's incremental compiler (netpol/incremental.py) is held to
    (``PolicyCompiler.program`` gives its inputs as one)."""

    state: PolicyState
    view: HostView

    def flows(self, generation: int) -> tuple[Flow, ...]:
        return compile_policy(self.state, self.view, generation)


@dataclass(frozen=True)
class RuleGroup:
    """One conjunction of a rule: applied to ``pods`` (ofports), with ``peers`` (addresses
    and CIDRs; None: any address) on ``ports`` ((protocol, value, mask), mask 0 every port of the
    protocol; None: any protocol and port)."""

    pods: tuple[int, ...]
    peers: tuple[str, ...] | None
    ports: tuple[tuple[str, int, int], ...] | None


def rule_ids(state: PolicyState) -> dict[RuleRef, int]:
    """Every rule's id (1 .. 2^24-1): a hash of the rule, probed on a collision in the
    rules' order, so every host computes the same ids."""
    refs = sorted(
        RuleRef(p.key, direction, i)
        for p in state.policies
        for direction, rules in ((INGRESS, p.ingress), (EGRESS, p.egress))
        for i in range(len(rules))
    )
    taken: dict[int, RuleRef] = {}
    out = {}
    for ref in refs:
        rid = rule_home(ref)
        while rid in taken:
            rid = rid % MAX_OBJECT_ID + 1
        taken[rid] = ref
        out[ref] = rid
    return out


def rule_home(ref: RuleRef) -> int:
    """The id a rule has unless an earlier rule holds it: a hash of its name."""
    name = f"{ref.policy}/{ref.direction}/{ref.index}".encode()
    digest = hashlib.blake2b(name, digest_size=4).digest()
    return int.from_bytes(digest, "big") % MAX_OBJECT_ID + 1


def compile_policy(state: PolicyState, host: HostView, generation: int) -> tuple[Flow, ...]:
    """Every policy flow ``host`` needs, sorted: pure and deterministic, so the agent
    diffs it against what the switch has like the rest of the pipeline."""
    pods = {p.key: p for p in state.pods}
    local = [(pods[lp.key], lp.ofport) for lp in host.local if lp.key in pods]
    ids = rule_ids(state)
    index = _Index(state)
    flows = list(fixed_flows(host.network, generation))
    if host.host_ip is not None:  # the node to its own pods: kubelet's probes
        node = match(eth_type=ETH_TYPE_IP, ipv4_src=host.host_ip)
        c = cookie(Feature.POLICY, generation)
        flows.append(Flow(INGRESS_RULES, PRIO_SELF, node, c, goto=POLICY_COMMIT))
    clauses: dict[tuple[Table, tuple[MatchField, ...]], set[Conjunction]] = defaultdict(set)
    allow_all: dict[tuple[Table, tuple[MatchField, ...]], int] = {}
    for direction in (EGRESS, INGRESS):
        isolated: dict[int, PodAddress] = {}
        for policy in state.policies:
            if direction not in policy.policy_types:
                continue
            applied = [(p, port) for p, port in local if state.selects(policy, p.pod)]
            if not applied:
                continue
            isolated.update({port: p for p, port in applied})
            rules = policy.egress if direction == EGRESS else policy.ingress
            for i, rule in enumerate(rules):
                rid = ids[RuleRef(policy.key, direction, i)]
                groups = rule_groups(
                    rule,
                    direction,
                    applied,
                    index.peer_addresses(policy, rule.peers),
                    lambda: index.peer_pods(policy, rule.peers),  # noqa: B023 (called at once)
                )
                for k, group in enumerate(groups[:MAX_GROUPS]):
                    for kind, table, fields, what in group_matches(direction, rid, k, group):
                        if kind == "allow":
                            allow_all[table, fields] = min(allow_all.get((table, fields), rid), rid)
                        else:
                            clauses[table, fields].add(what)
        flows += isolation_flows(direction, isolated, generation)
    for (table, fields), rid in sorted(allow_all.items(), key=_by_match):
        flows.append(allowed_flow(table, PRIO_ALLOW_ALL, fields, rid, generation))
    conj_ids: dict[Table, set[int]] = defaultdict(set)
    for (table, fields), conjs in sorted(clauses.items(), key=_by_match):
        actions = tuple(sorted(conjs, key=lambda c: (c.conj_id, c.clause)))
        conj_ids[table].update(c.conj_id for c in actions)
        c = cookie(Feature.POLICY_CLAUSE, generation)
        flows.append(Flow(table, PRIO_CONJUNCTION, fields, c, actions))
    for table, cids in conj_ids.items():
        for cid in sorted(cids):
            fields = match(conj_id=cid)
            flows.append(allowed_flow(table, PRIO_CONJUNCTION, fields, cid >> 8, generation))
    return tuple(sorted(flows, key=_flow_order))


def fixed_flows(network: int, gen: int) -> tuple[Flow, ...]:
    c = cookie(Feature.POLICY, gen)
    zone = NETWORK
    return (
        Flow(
            POLICY_CONNTRACK,
            PRIO_NORMAL,
            match(reg2=matching(NETWORK, network), eth_type=ETH_TYPE_IP),
            c,
            actions=(Ct(zone, table=POLICY_STATE),),
        ),
        Flow(POLICY_STATE, PRIO_INVALID, _ct_state(CT_INV), c),  # drop
        Flow(POLICY_STATE, PRIO_ESTABLISHED, _ct_state(CT_EST), c, goto=HOST_CONNTRACK),
        Flow(POLICY_STATE, PRIO_NORMAL, _ct_state(CT_REL), c, goto=HOST_CONNTRACK),
        Flow(POLICY_STATE, PRIO_NORMAL - 10, _ct_state(CT_NEW), c, goto=EGRESS_RULES),
        Flow(POLICY_STATE, PRIO_DEFAULT, (), c),  # drop: untracked cannot happen here
        Flow(EGRESS_RULES, PRIO_DEFAULT, (), c, goto=EGRESS_ISOLATION),
        Flow(EGRESS_ISOLATION, PRIO_DEFAULT, (), c, goto=INGRESS_RULES),
        Flow(INGRESS_RULES, PRIO_DEFAULT, (), c, goto=INGRESS_ISOLATION),
        Flow(INGRESS_ISOLATION, PRIO_DEFAULT, (), c, goto=POLICY_COMMIT),
        Flow(
            POLICY_COMMIT,
            PRIO_DEFAULT,
            match(eth_type=ETH_TYPE_IP),  # OVS refuses ct() in a flow not matching IP
            c,
            actions=(Ct(zone, commit=True),),
            goto=HOST_CONNTRACK,
        ),
    )


def _ct_state(bit: int) -> tuple[MatchField, ...]:
    return match(ct_state=(CT_TRK | bit, CT_TRK | bit))


def isolation_flows(direction: str, isolated: dict[int, PodAddress], gen: int):
    """An isolated pod's drop (what no rule allowed) and its way to itself."""
    c = cookie(Feature.POLICY_ISOLATION, gen)
    out = []
    for port, pod in sorted(isolated.items()):
        if direction == EGRESS:
            out.append(Flow(EGRESS_ISOLATION, PRIO_NORMAL, match(in_port=port), c))
            self_match = match(in_port=port, eth_type=ETH_TYPE_IP, ipv4_dst=pod.ip)
            out.append(Flow(EGRESS_RULES, PRIO_SELF, self_match, c, goto=INGRESS_RULES))
        else:
            out.append(Flow(INGRESS_ISOLATION, PRIO_NORMAL, match(reg1=port), c))
            self_match = match(reg1=port, eth_type=ETH_TYPE_IP, ipv4_src=pod.ip)
            out.append(Flow(INGRESS_RULES, PRIO_SELF, self_match, c, goto=POLICY_COMMIT))
    return out


def allowed_flow(table: Table, priority: int, fields, rid: int, gen: int) -> Flow:
    """A rule allowed the packet: its id into the direction's register (trace names the
    rule), on to the next verdict."""
    if table is EGRESS_RULES:
        return Flow(
            table,
            priority,
            fields,
            cookie(Feature.POLICY_RULE, gen, rid),
            actions=(load(EGRESS_RULE, rid),),
            goto=INGRESS_RULES,
        )
    return Flow(
        table,
        priority,
        fields,
        cookie(Feature.POLICY_RULE, gen, rid),
        actions=(load(INGRESS_RULE, rid),),
        goto=POLICY_COMMIT,
    )


def group_matches(direction: str, rid: int, k: int, group: RuleGroup, peers: bool = True):
    """Group ``k`` of rule ``rid`` as what it puts in its direction's table: ("allow",
    table, match, rid) for a rule of pods only, else ("clause", table, match,
    Conjunction) for each clause flow.  Shared by the full compile here and the
    incremental one (netpol/incremental.py), which adds them up differently and, with
    ``peers`` false, leaves the peers' clause out to add it address by address
    (``peer_clause``)."""
    table = EGRESS_RULES if direction == EGRESS else INGRESS_RULES
    pod_field = "in_port" if direction == EGRESS else "reg1"
    dims = [[match(**{pod_field: port}) for port in group.pods]]
    if group.peers is not None:  # always the second clause
        dims.append(
            [address_match(_peer_field(direction), a) for a in group.peers] if peers else []
        )
    if group.ports is not None:
        dims.append([_port_match(*p) for p in group.ports])
    if len(dims) == 1:
        for fields in dims[0]:
            yield ("allow", table, fields, rid)
        return
    cid = rid << 8 | k
    for clause, dim in enumerate(dims, start=1):
        conj = Conjunction(cid, clause, len(dims))
        for fields in dim:
            yield ("clause", table, fields, conj)


def peer_clause(direction: str, address: str, conj: Conjunction):
    """One peer address's clause flow of a group whose other clauses are ``conj``'s
    (``group_matches`` with ``peers`` false): the table, the match, its conjunction."""
    table = EGRESS_RULES if direction == EGRESS else INGRESS_RULES
    fields = address_match(_peer_field(direction), address)
    return table, fields, Conjunction(conj.conj_id, 2, conj.n_clauses)


def _peer_field(direction: str) -> str:
    return "ipv4_dst" if direction == EGRESS else "ipv4_src"


@functools.lru_cache(maxsize=1 << 16)
def address_match(name: str, address: str) -> tuple[MatchField, ...]:
    """A peer address (a.b.c.d or a CIDR) as a match on ``name`` (cached: many rules
    share peers)."""
    if "/" not in address:
        return match(eth_type=ETH_TYPE_IP, **{name: address})
    net = ipaddress.IPv4Network(address)
    if net.prefixlen == 32:
        return match(eth_type=ETH_TYPE_IP, **{name: str(net.network_address)})
    return match(eth_type=ETH_TYPE_IP, **{name: (str(net.network_address), str(net.netmask))})


def _port_match(protocol: str, value: int, mask: int) -> tuple[MatchField, ...]:
    fields: dict = {"eth_type": ETH_TYPE_IP, "ip_proto": _PROTO[protocol]}
    if mask:
        fields[_DST_PORT[protocol]] = value if mask == 0xFFFF else (value, mask)
    return match(**fields)


# -- a rule's groups -----------------------------------------------------------------------


def rule_groups(
    rule: Rule,
    direction: str,
    applied: list[tuple[PodAddress, int]],
    peers: tuple[str, ...] | None,
    destinations: Callable[[], Iterable[PodAddress]],
) -> list[RuleGroup]:
    """The rule as conjunctions: one of its numbered ports (or of every port), then one
    per number its named ports resolve to.  ``applied``: the local pods its policy
    selects, with their ports; ``peers``: its peers as addresses (None: any address);
    ``destinations``: the pods among its peers (every pod when it has none), asked only
    for a named port of an egress rule.  A rule whose peers are no address at all allows
    nothing and has none."""
    if peers == ():
        return []
    ofports = tuple(port for _, port in applied)
    numbered = tuple(
        sorted({r for pp in rule.ports if not isinstance(pp.port, str) for r in _ranges(pp)})
    )
    groups = []
    if not rule.ports or numbered:
        groups.append(RuleGroup(ofports, peers, numbered or None))
    named = [pp for pp in rule.ports if isinstance(pp.port, str)]
    if not named:
        return groups
    if direction == INGRESS:  # the selected pod's own container ports
        by_number: dict[tuple[str, int], set[int]] = defaultdict(set)
        for pod, port in applied:
            for proto, number in _resolve(pod.pod, named):
                by_number[proto, number].add(port)
        for (proto, number), pods in sorted(by_number.items()):
            groups.append(RuleGroup(tuple(sorted(pods)), peers, ((proto, number, 0xFFFF),)))
    else:  # the destination pod's: the peers that are pods and name the port
        by_dest: dict[tuple[str, int], set[str]] = defaultdict(set)
        for dest in destinations():
            for proto, number in _resolve(dest.pod, named):
                by_dest[proto, number].add(dest.ip)
        for (proto, number), ips in sorted(by_dest.items()):
            groups.append(RuleGroup(ofports, tuple(sorted(ips)), ((proto, number, 0xFFFF),)))
    return groups


def _resolve(pod: Pod, named: list[PolicyPort]) -> set[tuple[str, int]]:
    return {
        (pp.protocol, c.port)
        for pp in named
        for c in pod.ports
        if c.name == pp.port and c.protocol == pp.protocol
    }


class _Index:
    """One compile's memory of what selectors select: many policies share peers (the
    same namespace selector, the same labels), and each is worked out once."""

    def __init__(self, state: PolicyState):
        self.state = state
        self.by_namespace: dict[str, list[PodAddress]] = defaultdict(list)
        for pod in state.pods:
            self.by_namespace[pod.pod.namespace].append(pod)
        self._namespaces: dict = {}
        self._selected: dict = {}
        self._addresses: dict = {}
        self._pods: dict = {}

    def namespaces(self, selector) -> list[str]:
        if selector not in self._namespaces:
            self._namespaces[selector] = [
                ns
                for ns in sorted(self.by_namespace)
                if selector.matches(self.state.namespace_labels(ns))
            ]
        return self._namespaces[selector]

    def selected(self, namespace: str, peer: Peer) -> tuple[PodAddress, ...]:
        """The pods a selector peer of a policy in ``namespace`` selects."""
        key = (namespace, peer)
        if key not in self._selected:
            spaces = (
                [namespace]
                if peer.namespace_selector is None
                else self.namespaces(peer.namespace_selector)
            )
            self._selected[key] = tuple(
                pod
                for ns in spaces
                for pod in self.by_namespace.get(ns, ())
                if peer.pod_selector is None or peer.pod_selector.matches(pod.pod.labels)
            )
        return self._selected[key]

    def peer_addresses(self, policy: NetworkPolicy, peers) -> tuple[str, ...] | None:
        """The peers as addresses ("a.b.c.d" for a pod, "net/len" for the parts of an
        ipBlock); None: every address (no peers in the rule)."""
        if not peers:
            return None
        key = (policy.namespace, peers)
        if key not in self._addresses:
            pods = {
                pod.ip
                for peer in peers
                if peer.ip_block is None
                for pod in self.selected(policy.namespace, peer)
            }
            self._addresses[key] = tuple(sorted(pods | block_addresses(peers)))
        return self._addresses[key]

    def peer_pods(self, policy: NetworkPolicy, peers) -> list[PodAddress]:
        """The pods among the peers (every pod when the rule has none): a named port's
        destinations."""
        if not peers:
            return list(self.state.pods)
        key = (policy.namespace, peers)
        if key not in self._pods:
            self._pods[key] = [
                pod
                for pod in self.state.pods
                if any(peer_matches(self.state, policy, p, pod) for p in peers)
            ]
        return self._pods[key]


def block_addresses(peers: Iterable[Peer]) -> set[str]:
    """The ipBlock peers' addresses as CIDRs, excepts cut out, overlaps merged."""
    nets = [
        net
        for peer in peers
        if peer.ip_block is not None
        for net in _block(peer.ip_block.cidr, peer.ip_block.except_)
    ]
    return {str(n) for n in ipaddress.collapse_addresses(nets)}


def _block(cidr: str, excepts: tuple[str, ...]) -> list[ipaddress.IPv4Network]:
    """An ipBlock as the CIDRs that make it up once its excepts are cut out (IPv6
    blocks match nothing: the data path is IPv4)."""
    net = ipaddress.ip_network(cidr)
    if net.version != 4:
        return []
    parts = [net]
    for e in excepts:
        cut = ipaddress.ip_network(e)
        parts = [
            q
            for part in parts
            for q in (
                part.address_exclude(cut)
                if cut.subnet_of(part)
                else ([] if part.subnet_of(cut) else [part])
            )
        ]
    return parts


def _ranges(pp: PolicyPort) -> list[tuple[str, int, int]]:
    """A numbered port (or a range to endPort) as masked matches; no port: the protocol
    (mask 0: any port)."""
    if pp.port is None:
        return [(pp.protocol, 0, 0)]
    return [(pp.protocol, v, m) for v, m in port_masks(pp.port, pp.end_port or pp.port)]


def port_masks(lo: int, hi: int) -> list[tuple[int, int]]:
    """The fewest (value, mask) pairs covering lo..hi of a 16-bit port."""
    out = []
    while lo <= hi:
        size = lo & -lo if lo else 1 << 16
        while size > hi - lo + 1:
            size >>= 1
        out.append((lo, 0xFFFF & ~(size - 1)))
        lo += size
    return out


def _by_match(item) -> tuple:
    (table, fields), _ = item
    return (table.table_id, _fields_key(fields))


def _fields_key(fields: tuple[MatchField, ...]) -> tuple:
    return tuple((f.name, str(f.value), str(f.mask)) for f in fields)


def _flow_order(flow: Flow) -> tuple:
    return (flow.table.table_id, -flow.priority, _fields_key(flow.match))
