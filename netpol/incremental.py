"""NetworkPolicy compiled one change at a time.

``compile_policy`` (netpol/compile.py) makes every policy flow of a host from the whole
cluster: 0.4-1.2 s at 1,000 policies over 5,000 pods, and a CNI ADD waited for it.  The
compiler here holds the same inputs as indexes and, for a batch of changes, recomputes
only what they touch, so a change costs the rules it reaches, not the cluster:

- a pod (its address, labels, named ports) reaches the rules whose peers select it
  (before or after), found through the rules that can select in its namespace, and, if
  it is on this host, the policies of its namespace that select it;
- a namespace's labels reach its pods in the rules with a namespace selector that
  answers differently for its old and its new labels;
- a policy reaches its own rules, and its pods' isolation;
- this host's own ports reach the policies that select their pods.

What each source (a rule, one peer address of a rule, a local pod's isolation, the
host's fixed flows) adds to each flow is counted per flow, since rules share flows: one
clause flow carries every conjunction that matches the same address.  Only the flows
whose contributions changed are rebuilt and returned.  A rule's own flows (its pods,
ports, conjunction) are recomputed whole with the full compile's ``rule_groups`` and
``group_matches``; its peer clause address by address, so a pod joining a rule's peers
costs one address's flow.  What remains proportional to more than the change: a rule
whose own flows change (a pod here comes into a policy, a rule's first peer comes)
brings all its addresses' flows, which is what changes on the switch; an egress rule
with a named port is recomputed whole (its groups have different peers), and one with
no peers (or an ipBlock peer) looks at every pod, since any pod may be the
destination that names the port.

``compile_policy`` stays the oracle: tests/unit/test_netpol_incremental.py applies
random changes and checks after each that these flows equal the full compile's.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from netpol.compile import (
    MAX_GROUPS,
    PRIO_ALLOW_ALL,
    PRIO_CONJUNCTION,
    PRIO_SELF,
    HostView,
    LocalPod,
    PolicyProgram,
    allowed_flow,
    block_addresses,
    fixed_flows,
    group_matches,
    isolation_flows,
    peer_clause,
    rule_groups,
    rule_home,
    rule_ids,
)
from netpol.evaluate import EGRESS, INGRESS, RuleRef
from netpol.model import NAME_LABEL, Namespace, NetworkPolicy, Peer, Pod, Rule
from netpol.state import PodAddress, PolicyState, in_block
from openflow.cookies import Feature, cookie
from openflow.model import ETH_TYPE_IP, Conjunction, Flow, MatchField, match
from openflow.tables import INGRESS_RULES, POLICY_COMMIT, Table


@dataclass(frozen=True)
class SetHost:
    """The Kubernetes network's dense index on this host (its conntrack zone; None: not
    known yet, so no policy flows at all) and the host's own address in it."""

    network: int | None
    host_ip: str | None = None


@dataclass(frozen=True)
class SetNamespace:
    name: str
    namespace: Namespace | None  # None: gone (its pods keep only the name label)


@dataclass(frozen=True)
class SetPod:
    """A pod with its address (None: gone, or no address yet)."""

    key: str
    pod: PodAddress | None


@dataclass(frozen=True)
class SetNetworkPolicy:
    key: str
    policy: NetworkPolicy | None


@dataclass(frozen=True)
class SetLocalPod:
    """A pod attached on this host, at this OpenFlow port (None: not here)."""

    key: str
    ofport: int | None


PolicyInput = SetHost | SetNamespace | SetPod | SetNetworkPolicy | SetLocalPod
FlowKey = tuple[Table, int, tuple[MatchField, ...]]  # a flow's identity on the switch
_HOST = ("host",)  # the source of the fixed flows and the node's
# A fine rule's peers while it has some, for rule_groups (which needs only to know there
# are): the addresses themselves are its ("peer", rule, address) sources.
_SOME_PEERS = ("<addresses>",)
LOG = logging.getLogger(__name__)


class PolicyCompiler:
    """One host's policy flows, kept from its inputs.  Not thread-safe: its owner (the
    engine, in the reconciler's worker) updates it."""

    def __init__(self, generation: int):
        self.generation = generation
        self._network: int | None = None
        self._host_ip: str | None = None
        self._namespaces: dict[str, Namespace] = {}
        self._pods: dict[str, PodAddress] = {}
        self._policies: dict[str, NetworkPolicy] = {}
        self._local: dict[str, int] = {}  # pod key -> ofport, as given
        self._derive()

    # -- reading ------------------------------------------------------------------------

    def program(self) -> PolicyProgram | None:
        """The inputs as the full compile takes them (the oracle; None: no network)."""
        if self._network is None:
            return None
        state = PolicyState(
            tuple(self._namespaces[n] for n in sorted(self._namespaces)),
            tuple(self._pods[k] for k in sorted(self._pods)),
            tuple(self._policies[k] for k in sorted(self._policies)),
        )
        local = sorted(
            (LocalPod(k, port) for k, port in self._local.items() if k in self._pods),
            key=lambda p: p.ofport,
        )
        return PolicyProgram(state, HostView(self._network, tuple(local), self._host_ip))

    def flows(self) -> Iterable[Flow]:
        return self._flows.values()

    def flow(self, key: FlowKey) -> Flow | None:
        return self._flows.get(key)

    def __len__(self) -> int:
        return len(self._flows)

    def rule_id(self, ref: RuleRef) -> int | None:
        return self._ids.get(ref)

    # -- changing -----------------------------------------------------------------------

    def update(self, inputs: Iterable[PolicyInput]) -> dict[FlowKey, Flow | None]:
        """Take ``inputs`` in; returns the flows that changed, by key, as they were before
        (None: it is new).  An input the compiler fails on (a bug: the model refuses
        what it cannot compile) is logged and left out, the rest taken: one bad policy
        must not keep every other change from the switch."""
        inputs = list(inputs)
        for i in inputs:
            if not isinstance(i, SetHost | SetNamespace | SetPod | SetNetworkPolicy | SetLocalPod):
                raise TypeError(f"not a policy input: {i!r}")
        before = self._inputs()
        try:
            return self._update(inputs)
        except Exception:
            # Half-updated indexes: back to the inputs it had, everything derived again
            # (the always-right path), then the inputs one at a time.
            self._restore(before)
        flows = dict(self._flows)
        for i in inputs:
            for attempt in (i, *_fallbacks(i)):
                before = self._inputs()
                try:
                    self._update([attempt])
                    break
                except Exception:
                    LOG.exception("NetworkPolicy: cannot compile %r", attempt)
                    self._restore(before)
        return _changes(flows, self._flows)

    def regenerate(self, generation: int) -> None:
        """Every flow again with ``generation``'s cookies (a full sync): the sources whose
        parts are whole flows (the host's, the pods' isolation) made again, every flow
        rebuilt; no index is touched."""
        if generation == self.generation:
            return
        self.generation = generation
        changed: set[FlowKey] = set()
        self._refresh(_HOST, changed)
        for key in self._local:
            self._refresh(("pod", key), changed)
        for key in list(self._agg):
            self._rebuild_flow(key, {})

    # -- internals: inputs ----------------------------------------------------------------

    def _inputs(self) -> tuple:
        return (
            self._network,
            self._host_ip,
            dict(self._namespaces),
            dict(self._pods),
            dict(self._policies),
            dict(self._local),
        )

    def _restore(self, inputs: tuple) -> None:
        (self._network, self._host_ip, ns, pods, policies, local) = inputs
        self._namespaces, self._pods, self._policies, self._local = ns, pods, policies, local
        self._derive()

    def _derive(self) -> None:
        """Every index and flow from the inputs alone."""
        self._by_ns: dict[str, set[str]] = defaultdict(set)  # pod keys
        for key in self._pods:
            self._by_ns[_namespace_of(key)].add(key)
        self._policies_by_ns: dict[str, set[str]] = defaultdict(set)
        for key, p in self._policies.items():
            self._policies_by_ns[p.namespace].add(key)
        self._set_ids(rule_ids(PolicyState(policies=tuple(self._policies.values()))))
        self._applied: dict[str, set[str]] = {}  # policy -> the local pods it selects
        self._sel: dict[RuleRef, dict[str, str]] = {}  # rule -> its selected pods -> IP
        # A rule whose every group has the same peers (all but egress to a named port) has
        # its peer clause kept address by address: a pod joining its peers costs one
        # address's flows, not the rule's.  Its addresses, counted (pods may share one),
        # and the conjunctions each address's flow carries while it has flows.
        self._fine: set[RuleRef] = set()
        self._addrs: dict[RuleRef, Counter] = {}
        self._shape: dict[RuleRef, tuple[Conjunction, ...]] = {}
        self._dirty_peers: set[tuple[RuleRef, str]] = set()  # scratch of one update
        self._selection_memo: dict[tuple, dict[str, str]] = {}  # scratch of one update
        self._dest: dict[RuleRef, set[str]] = {}  # named-port egress rule -> its peer pods
        self._wide: set[RuleRef] = set()  # ... whose peers are not found by namespace
        self._member_of: dict[str, set[RuleRef]] = defaultdict(set)  # pod -> _sel/_dest rules
        self._ns_rules: dict[str, frozenset[RuleRef]] = {}  # a cache, see _rules_seeing
        self._items: dict[Hashable, frozenset] = {}
        self._broken: set[RuleRef] = set()  # rules that failed to compile, logged
        self._agg: dict[FlowKey, Counter] = {}
        self._flows: dict[FlowKey, Flow] = {}
        for policy in self._policies.values():
            self._add_policy(policy)
        changed: set[FlowKey] = set()
        self._refresh(_HOST, changed)
        for ref in self._ids:
            self._refresh(("rule", ref), changed)
        for ref in self._shape:  # an inactive rule's addresses have no flows
            for addr in self._addrs[ref]:
                self._refresh(("peer", ref, addr), changed)
        for key in self._local:
            self._refresh(("pod", key), changed)
        for key in changed:
            self._rebuild_flow(key, {})
        self._dirty_peers, self._selection_memo = set(), {}

    def _update(self, inputs: list[PolicyInput]) -> dict[FlowKey, Flow | None]:
        old_pods: dict[str, PodAddress | None] = {}
        old_labels: dict[str, Mapping[str, str]] = {}
        old_policies: dict[str, NetworkPolicy | None] = {}
        local_touched: set[str] = set()
        sources: set[Hashable] = set()
        was_on = self._network is not None
        for i in inputs:
            if isinstance(i, SetHost):
                if (i.network, i.host_ip) != (self._network, self._host_ip):
                    self._network, self._host_ip = i.network, i.host_ip
                    sources.add(_HOST)
            elif isinstance(i, SetNamespace):
                if self._namespaces.get(i.name) != i.namespace:
                    old_labels.setdefault(i.name, self._labels(i.name))
                    _put(self._namespaces, i.name, i.namespace)
            elif isinstance(i, SetPod):
                if self._pods.get(i.key) != i.pod:
                    old_pods.setdefault(i.key, self._pods.get(i.key))
                    _put(self._pods, i.key, i.pod)
                    if i.pod is None:
                        _discard(self._by_ns, _namespace_of(i.key), i.key)
                    else:
                        self._by_ns[_namespace_of(i.key)].add(i.key)
            elif isinstance(i, SetNetworkPolicy):
                if self._policies.get(i.key) != i.policy:
                    old_policies.setdefault(i.key, self._policies.get(i.key))
                    _put(self._policies, i.key, i.policy)
            elif self._local.get(i.key) != i.ofport:
                local_touched.add(i.key)
                _put(self._local, i.key, i.ofport)
        if was_on != (self._network is not None):  # policy switched on or off: all of it
            before = dict(self._flows)
            self._derive()
            return _changes(before, self._flows)

        dirty_rules: set[RuleRef] = set()
        dirty_pods: set[str] = set(local_touched)
        self._dirty_peers, self._selection_memo = set(), {}
        # Policies that changed leave first (their rules are made again below, from the
        # state after the whole batch), so the steps between skip them.
        removed_refs: list[RuleRef] = []
        for old in old_policies.values():
            if old is not None:
                removed_refs += self._remove_policy(old, dirty_pods)
        dirty_rules.update(removed_refs)
        for name, labels in old_labels.items():
            self._namespace_changed(name, labels, dirty_rules)
        for key, old in old_pods.items():
            self._pod_changed(key, old, dirty_rules)
        for key in (*local_touched, *old_pods):
            if key in self._local or key in local_touched:  # pods elsewhere: nothing here
                self._local_changed(key, dirty_rules, dirty_pods)
        added_refs: list[RuleRef] = []
        for key in old_policies:
            policy = self._policies.get(key)
            if policy is not None:
                added_refs += self._add_policy(policy)
                dirty_pods.update(self._applied[key])
        dirty_rules.update(added_refs)
        if removed_refs or added_refs:
            dirty_rules |= self._assign_ids(removed_refs, added_refs)

        changed: set[FlowKey] = set()
        sources |= {("pod", k) for k in dirty_pods}
        for source in sources:
            self._refresh(source, changed)
        for ref in dirty_rules:  # a rule's own flows; its addresses' if its groups moved
            shape = self._shape.get(ref)
            self._refresh(("rule", ref), changed)
            if self._shape.get(ref) != shape:
                self._dirty_peers.update((ref, a) for a in self._addrs.get(ref, ()))
        for ref, addr in self._dirty_peers:
            source = ("peer", ref, addr)
            if ref in self._shape or source in self._items:  # else none before or after
                self._refresh(source, changed)
        self._dirty_peers, self._selection_memo = set(), {}
        out: dict[FlowKey, Flow | None] = {}
        for key in changed:
            self._rebuild_flow(key, out)
        return out

    # -- internals: what a change touches ---------------------------------------------------

    def _labels(self, namespace: str) -> Mapping[str, str]:
        """As PolicyState.namespace_labels: one not known has only its name label."""
        ns = self._namespaces.get(namespace)
        return (ns.labels if ns is not None else None) or {NAME_LABEL: namespace}

    def _rules(self, policy: NetworkPolicy) -> list[tuple[RuleRef, Rule]]:
        return [
            (RuleRef(policy.key, direction, i), rule)
            for direction, rules in ((INGRESS, policy.ingress), (EGRESS, policy.egress))
            for i, rule in enumerate(rules)
        ]

    def _rule(self, ref: RuleRef) -> tuple[NetworkPolicy, Rule] | None:
        policy = self._policies.get(ref.policy)
        if policy is None:
            return None
        rules = policy.ingress if ref.direction == INGRESS else policy.egress
        return (policy, rules[ref.index]) if ref.index < len(rules) else None

    def _peer_selects(self, policy: NetworkPolicy, peer: Peer, pod: Pod) -> bool:
        if peer.ip_block is not None:
            return False
        if peer.namespace_selector is None:
            in_namespace = pod.namespace == policy.namespace
        else:
            in_namespace = peer.namespace_selector.matches(self._labels(pod.namespace))
        return in_namespace and (peer.pod_selector is None or peer.pod_selector.matches(pod.labels))

    def _selected(self, policy: NetworkPolicy, rule: Rule, pod: PodAddress | None) -> bool:
        """The rule's selector peers select the pod (it is one of the rule's addresses)."""
        return pod is not None and any(self._peer_selects(policy, p, pod.pod) for p in rule.peers)

    def _destination(self, policy: NetworkPolicy, rule: Rule, pod: PodAddress | None) -> bool:
        """The pod is among the rule's peers (every pod when it has none): a destination
        its named ports resolve on."""
        if pod is None:
            return False
        if not rule.peers:
            return True
        return any(
            in_block(pod.ip, p.ip_block.cidr, p.ip_block.except_)
            if p.ip_block is not None
            else self._peer_selects(policy, p, pod.pod)
            for p in rule.peers
        )

    def _sees(self, policy: NetworkPolicy, rule: Rule, namespace: str) -> bool:
        """A selector peer of the rule can select pods of ``namespace``."""
        for p in rule.peers:
            if p.ip_block is not None:
                continue
            if p.namespace_selector is None:
                if policy.namespace == namespace:
                    return True
            elif p.namespace_selector.matches(self._labels(namespace)):
                return True
        return False

    def _rules_seeing(self, namespace: str) -> frozenset[RuleRef]:
        """The rules a pod of ``namespace`` may be a selected peer of (cached: a change
        of a policy or of the namespace's labels updates or drops it)."""
        refs = self._ns_rules.get(namespace)
        if refs is None:
            refs = frozenset(
                ref
                for ref in self._sel
                if (r := self._rule(ref)) is not None and self._sees(*r, namespace)
            )
            self._ns_rules[namespace] = refs
        return refs

    def _add_policy(self, policy: NetworkPolicy) -> list[RuleRef]:
        """Index a policy that is in the inputs: the local pods it selects, each rule's
        peers (a scan of the namespaces its selectors reach; of every pod for a named
        egress port open to any address)."""
        self._policies_by_ns[policy.namespace].add(policy.key)
        self._applied[policy.key] = {
            key
            for key in self._local
            if (pod := self._pods.get(key)) is not None
            and pod.pod.namespace == policy.namespace
            and policy.pod_selector.matches(pod.pod.labels)
        }
        refs = []
        for ref, rule in self._rules(policy):
            refs.append(ref)
            if any(p.ip_block is None for p in rule.peers):
                self._sel[ref] = dict(self._selection(policy, rule))
                for ns, cached in self._ns_rules.items():
                    if self._sees(policy, rule, ns):
                        self._ns_rules[ns] = cached | {ref}
            named = ref.direction == EGRESS and any(isinstance(p.port, str) for p in rule.ports)
            if rule.peers and not named:
                self._fine.add(ref)
                addrs = self._addrs[ref] = Counter(self._sel.get(ref, {}).values())
                addrs.update(block_addresses(rule.peers))
                self._dirty_peers.update((ref, a) for a in addrs)
            if named:
                wide = not rule.peers or any(p.ip_block is not None for p in rule.peers)
                if wide:
                    self._wide.add(ref)
                    candidates: Iterable[str] = self._pods
                else:
                    candidates = self._sel[ref]
                self._dest[ref] = {
                    k for k in candidates if self._destination(policy, rule, self._pods[k])
                }
            for key in self._sel.get(ref, {}).keys() | self._dest.get(ref, set()):
                self._member_of[key].add(ref)
        return refs

    def _selection(self, policy: NetworkPolicy, rule: Rule) -> dict[str, str]:
        """The pods (-> IP) a rule's selector peers select: a scan of the namespaces they
        reach, done once per update for the peers many rules share (the same namespace
        and selectors: policies repeat their peers)."""
        memo_key = (policy.namespace, rule.peers)
        found = self._selection_memo.get(memo_key)
        if found is None:
            spaces = [ns for ns in self._by_ns if self._sees(policy, rule, ns)]
            found = self._selection_memo[memo_key] = {
                key: self._pods[key].ip
                for ns in spaces
                for key in self._by_ns[ns]
                if self._selected(policy, rule, self._pods[key])
            }
        return found

    def _remove_policy(self, policy: NetworkPolicy, dirty_pods: set[str]) -> list[RuleRef]:
        """Forget an old version of a policy: its rules' indexes; the pods it isolated
        are to be looked at again."""
        keys = self._policies_by_ns.get(policy.namespace)
        if keys is not None:
            keys.discard(policy.key)
            if not keys:
                del self._policies_by_ns[policy.namespace]
        dirty_pods.update(self._applied.pop(policy.key, ()))
        refs = [ref for ref, _ in self._rules(policy)]
        gone = set(refs)
        self._broken -= gone
        for ref in refs:
            for key in self._sel.pop(ref, {}).keys() | self._dest.pop(ref, set()):
                _discard(self._member_of, key, ref)
            self._wide.discard(ref)
            self._fine.discard(ref)
            self._dirty_peers.update((ref, a) for a in self._addrs.pop(ref, ()))
        for ns, cached in list(self._ns_rules.items()):
            if cached & gone:
                self._ns_rules[ns] = cached - gone
        return refs

    def _namespace_changed(self, name: str, old: Mapping[str, str], dirty: set[RuleRef]) -> None:
        """New labels: the namespace's pods, in every rule with a namespace selector that
        matched the old labels and not the new ones, or the other way round (a selector
        that matches both, or neither, keeps every pod where it was)."""
        self._ns_rules.pop(name, None)
        new = self._labels(name)
        refs = []
        for ref in self._sel:
            policy, rule = self._rule(ref)
            if any(
                p.namespace_selector is not None
                and p.namespace_selector.matches(old) != p.namespace_selector.matches(new)
                for p in rule.peers
            ):
                refs.append((ref, policy, rule))
        for key in self._by_ns.get(name, ()):
            pod = self._pods[key]
            for ref, policy, rule in refs:
                self._member(ref, policy, rule, key, pod, dirty)

    def _pod_changed(self, key: str, old: PodAddress | None, dirty: set[RuleRef]) -> None:
        """A pod's address or object: the rules it is (or was) a peer of."""
        pod = self._pods.get(key)
        was = set(self._member_of.get(key, ()))
        for ref in self._rules_seeing(_namespace_of(key)) | self._wide | was:
            policy, rule = self._rule(ref)
            self._member(ref, policy, rule, key, pod, dirty)
        dirty |= was - self._fine  # a peer whose address or ports changed (a fine rule's
        # address is in its _sel, and _member moved it)

    def _member(self, ref, policy, rule, key: str, pod: PodAddress | None, dirty) -> None:
        """Put ``key`` in or out of the rule's peers by what it is now (with its address)."""
        sel = self._sel.get(ref)
        if sel is not None:
            old = sel.get(key)
            new = pod.ip if self._selected(policy, rule, pod) else None
            if old != new:
                _put(sel, key, new)
                if ref in self._fine:
                    self._count(ref, old, -1, dirty)
                    self._count(ref, new, 1, dirty)
                else:
                    dirty.add(ref)
        dest = self._dest.get(ref)
        if dest is not None and (key in dest) != self._destination(policy, rule, pod):
            dest.symmetric_difference_update((key,))
            dirty.add(ref)
        if key in self._sel.get(ref, ()) or key in self._dest.get(ref, ()):
            self._member_of[key].add(ref)
        else:
            _discard(self._member_of, key, ref)

    def _count(self, ref: RuleRef, addr: str | None, delta: int, dirty: set[RuleRef]) -> None:
        """One more or one less pod at ``addr`` among a fine rule's peers: the address's
        flows when it comes or goes, the rule's own when its first comes or last goes (a
        rule whose peers are no address allows nothing)."""
        if addr is None:
            return
        addrs = self._addrs[ref]
        had, was_empty = addrs[addr] > 0, not addrs
        addrs[addr] += delta
        if addrs[addr] <= 0:
            del addrs[addr]
        if had != (addr in addrs):
            self._dirty_peers.add((ref, addr))
        if was_empty != (not addrs):
            dirty.add(ref)

    def _local_changed(self, key: str, dirty_rules: set[RuleRef], dirty_pods: set[str]) -> None:
        """A pod here came, went, moved port, or changed: the policies of its namespace
        that select it (or did), and its own isolation."""
        pod = self._pods.get(key)
        here = pod is not None and key in self._local
        dirty_pods.add(key)
        for pkey in self._policies_by_ns.get(_namespace_of(key), ()):
            policy = self._policies[pkey]
            applied = self._applied.get(pkey)
            if applied is None:  # a policy of this batch, indexed after this
                continue
            now = here and policy.pod_selector.matches(pod.pod.labels)
            if now or key in applied:
                dirty_rules.update(ref for ref, _ in self._rules(policy))
            if now:
                applied.add(key)
            else:
                applied.discard(key)

    def _assign_ids(self, removed: list[RuleRef], added: list[RuleRef]) -> set[RuleRef]:
        """Rule ids as ``rule_ids`` gives them.  While every rule sits at its hash's own
        id (a collision is one in millions), removing or adding rules moves no other;
        otherwise every id is worked out again and the rules whose id moved returned."""
        if removed:
            gone = set(removed)
            self._ids = {ref: rid for ref, rid in self._ids.items() if ref not in gone}
        homes = [rule_home(ref) for ref in added]
        taken = set(self._ids.values())
        if self._displaced == 0 and len(set(homes)) == len(homes) and taken.isdisjoint(homes):
            self._set_ids({**self._ids, **dict(zip(added, homes, strict=True))})
            return set()
        old = self._ids
        self._set_ids(rule_ids(PolicyState(policies=tuple(self._policies.values()))))
        return {ref for ref, rid in self._ids.items() if old.get(ref) != rid}

    def _set_ids(self, ids: dict[RuleRef, int]) -> None:
        """New ids, and their names for readers on other threads (the metrics): a new
        mapping, never one changed in place."""
        self._ids = ids
        self._displaced = sum(rid != rule_home(ref) for ref, rid in ids.items())
        self.rule_names: Mapping[int, RuleRef] = MappingProxyType(
            {rid: ref for ref, rid in ids.items()}
        )

    # -- internals: flows -------------------------------------------------------------------

    def _refresh(self, source: Hashable, changed: set[FlowKey]) -> None:
        """A source's contribution again; the flows whose contributions moved into
        ``changed``."""
        if self._network is None:
            new: frozenset = frozenset()
        elif source == _HOST:
            new = self._host_items()
        elif source[0] == "rule":
            new = self._guarded_rule_items(source[1])
        elif source[0] == "peer":
            new = self._peer_items(source[1], source[2])
        else:
            new = self._pod_items(source[1])
        old = self._items.get(source, frozenset())
        if new == old:
            return
        for key, payload in old - new:
            counts = self._agg[key]
            counts[payload] -= 1
            if counts[payload] <= 0:
                del counts[payload]
                if not counts:
                    del self._agg[key]
            changed.add(key)
        for key, payload in new - old:
            counts = self._agg.get(key)
            if counts is None:
                counts = self._agg[key] = Counter()
            counts[payload] += 1
            changed.add(key)
        if new:
            self._items[source] = new
        else:
            self._items.pop(source, None)

    def _host_items(self) -> frozenset:
        flows = list(fixed_flows(self._network, self.generation))
        if self._host_ip is not None:  # the node to its own pods: kubelet's probes
            node = match(eth_type=ETH_TYPE_IP, ipv4_src=self._host_ip)
            c = cookie(Feature.POLICY, self.generation)
            flows.append(Flow(INGRESS_RULES, PRIO_SELF, node, c, goto=POLICY_COMMIT))
        return frozenset(((f.table, f.priority, f.match), ("plain", f)) for f in flows)

    def _pod_items(self, key: str) -> frozenset:
        """A local pod's isolation, in each direction some policy isolates it in."""
        pod, port = self._pods.get(key), self._local.get(key)
        if pod is None or port is None:
            return frozenset()
        items = []
        for direction in (EGRESS, INGRESS):
            if any(
                direction in self._policies[p].policy_types and key in self._applied[p]
                for p in self._policies_by_ns.get(pod.pod.namespace, ())
            ):
                for f in isolation_flows(direction, {port: pod}, self.generation):
                    items.append(((f.table, f.priority, f.match), ("plain", f)))
        return frozenset(items)

    def _peer_items(self, ref: RuleRef, addr: str) -> frozenset:
        """A fine rule's clause flows for one peer address, in each of its groups."""
        shape = self._shape.get(ref)
        if shape is None or addr not in self._addrs.get(ref, ()):
            return frozenset()
        items = []
        for conj in shape:
            table, fields, clause = peer_clause(ref.direction, addr, conj)
            items.append(((table, PRIO_CONJUNCTION, fields), ("conj", clause)))
        return frozenset(items)

    def _guarded_rule_items(self, ref: RuleRef) -> frozenset:
        """A rule's flows; a rule the compiler fails on (a bug: the model refuses what it
        cannot compile) allows nothing, logged once, and every other rule is served."""
        self._shape.pop(ref, None)
        try:
            return self._rule_items(ref)
        except Exception:
            if ref not in self._broken:
                LOG.exception("NetworkPolicy %s cannot be compiled; it allows nothing", ref)
                self._broken.add(ref)
            return frozenset()

    def _rule_items(self, ref: RuleRef) -> frozenset:
        found = self._rule(ref)
        if found is None:
            return frozenset()
        policy, rule = found
        if ref.direction not in policy.policy_types:
            return frozenset()
        applied = sorted(
            ((self._pods[k], self._local[k]) for k in self._applied[policy.key]),
            key=lambda a: a[1],
        )
        if not applied:
            return frozenset()
        fine = ref in self._fine
        peers = None
        if fine:  # the addresses go address by address (_peer_items)
            peers = _SOME_PEERS if self._addrs[ref] else ()
        elif rule.peers:
            ips = set(self._sel.get(ref, {}).values())
            peers = tuple(sorted(ips | block_addresses(rule.peers)))
        groups = rule_groups(
            rule,
            ref.direction,
            applied,
            peers,
            lambda: [self._pods[k] for k in self._dest.get(ref, ())],
        )
        rid = self._ids[ref]
        items = set()
        shape = set()
        for k, group in enumerate(groups[:MAX_GROUPS]):
            for kind, table, fields, what in group_matches(
                ref.direction, rid, k, group, peers=not fine
            ):
                if kind == "allow":
                    items.add(((table, PRIO_ALLOW_ALL, fields), ("allow", rid)))
                else:
                    items.add(((table, PRIO_CONJUNCTION, fields), ("conj", what)))
                    conj = match(conj_id=what.conj_id)
                    items.add(((table, PRIO_CONJUNCTION, conj), ("conjflow", what.conj_id)))
                    shape.add(what)
        if fine and shape:
            peer = {Conjunction(c.conj_id, 2, c.n_clauses) for c in shape}
            self._shape[ref] = tuple(sorted(peer, key=lambda c: c.conj_id))
        return frozenset(items)

    def _rebuild_flow(self, key: FlowKey, out: dict[FlowKey, Flow | None]) -> None:
        """The flow ``key`` holds now, from what its sources put there; the one it held
        into ``out`` when it differs."""
        table, priority, fields = key
        payloads = self._agg.get(key)
        gen = self.generation
        flow: Flow | None
        if not payloads:
            flow = None
        else:
            kind = next(iter(payloads))[0]
            if kind == "conj":
                conjs = sorted((p[1] for p in payloads), key=lambda c: (c.conj_id, c.clause))
                c = cookie(Feature.POLICY_CLAUSE, gen)
                flow = Flow(table, priority, fields, c, tuple(conjs))
            elif kind == "allow":
                flow = allowed_flow(table, priority, fields, min(p[1] for p in payloads), gen)
            elif kind == "conjflow":
                flow = allowed_flow(table, priority, fields, next(iter(payloads))[1] >> 8, gen)
            else:  # every source of a plain flow makes the same one
                flow = next(iter(payloads))[1]
        old = self._flows.get(key)
        if flow == old:
            return
        out.setdefault(key, old)
        if flow is None:
            del self._flows[key]
        else:
            self._flows[key] = flow


def _fallbacks(i: PolicyInput) -> tuple[PolicyInput, ...]:
    """What to take instead of an input the compiler failed on, so that it fails closed
    and never keeps an older value in force: a policy without its rules (it isolates its
    pods and allows nothing), else gone; anything else, gone."""
    if isinstance(i, SetNetworkPolicy) and i.policy is not None:
        bare = dataclasses.replace(i.policy, ingress=(), egress=())
        return (SetNetworkPolicy(i.key, bare), SetNetworkPolicy(i.key, None))
    if isinstance(i, SetNamespace):
        return (SetNamespace(i.name, None),)
    if isinstance(i, SetPod):
        return (SetPod(i.key, None),)
    if isinstance(i, SetLocalPod):
        return (SetLocalPod(i.key, None),)
    return ()


def _namespace_of(pod_key: str) -> str:
    return pod_key.partition("/")[0]


def _put(d: dict, key, value) -> None:
    if value is None:
        d.pop(key, None)
    else:
        d[key] = value


def _discard(index: dict, name, key) -> None:
    keys = index.get(name)
    if keys is not None:
        keys.discard(key)
        if not keys:
            del index[name]


def _changes(before: dict[FlowKey, Flow], after: dict[FlowKey, Flow]) -> dict:
    return {k: before.get(k) for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


def inputs_between(old: PolicyProgram | None, new: PolicyProgram | None) -> list[PolicyInput]:
    """The inputs that take a compiler holding ``old`` to ``new`` (whole programs: for
    tests and the benchmark, which hold programs; the agent sends what changed)."""
    out: list[PolicyInput] = []
    o_state = old.state if old is not None else PolicyState()
    n_state = new.state if new is not None else PolicyState()
    for kind, get in (
        (SetNamespace, lambda s: {n.name: n for n in s.namespaces}),
        (SetPod, lambda s: {p.key: p for p in s.pods}),
        (SetNetworkPolicy, lambda s: {p.key: p for p in s.policies}),
    ):
        before, after = get(o_state), get(n_state)
        for key in before.keys() | after.keys():
            if before.get(key) != after.get(key):
                out.append(kind(key, after.get(key)))
    o_local = {lp.key: lp.ofport for lp in old.view.local} if old is not None else {}
    n_local = {lp.key: lp.ofport for lp in new.view.local} if new is not None else {}
    for key in o_local.keys() | n_local.keys():
        if o_local.get(key) != n_local.get(key):
            out.append(SetLocalPod(key, n_local.get(key)))
    if new is None:
        out.append(SetHost(None, None))
    else:
        out.append(SetHost(new.view.network, new.view.host_ip))
    return out
