"""The pipeline, kept up to date one object at a time.

``pipeline.build`` computes every flow of a host from its whole state; doing that for
every change made one more remote endpoint cost 1.9 s at 10,000 endpoints.  The engine
here holds the state as indexes and, for a batch of changes, rebuilds only the flows of
the objects the batch touches (the same per-object builders ``build`` composes) and the
flood groups whose membership changed, and returns the messages that move the switch
from what it has to that (ordered as ``openflow.diff`` orders them).  ``build`` stays
the oracle: ``tests/unit/test_incremental.py`` applies random change sequences and
checks after each that the engine's flows equal ``build(engine.state())``.

Objects come in under a caller's key (a store key, a port name), with a rank that
decides conflicts.  No conflict may reach the switch (two flows with one match), so
each object *claims* what must be unique — a port number, a MAC or an IP within a
network, a network's name, VNI and index, a peer's tunnel IP — and an object is *active*
(has flows) only while it is the best-ranked eligible contender for every claim it
makes.  Eligible: its network is active, and for a remote endpoint its peer too.  A
loser waits, shadowed, and becomes active when the winner goes.  (An object that
loses to an object that is itself shadowed stays shadowed: deterministic, and it
keeps a change from cascading through chains of colliding records.)
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from netpol.evaluate import RuleRef
from netpol.incremental import FlowKey, PolicyCompiler, PolicyInput
from openflow import pipeline
from openflow.diff import Message, diff
from openflow.model import Flow, Group
from openflow.state import Gateway, HostState, LocalPort, NetworkSpec, RemoteEndpoint


@dataclass(frozen=True, slots=True)
class Peer:
    """Another host, by its tunnel IP."""

    ip: str


Object = NetworkSpec | Peer | LocalPort | Gateway | RemoteEndpoint
OBJECT_TYPES = (NetworkSpec, Peer, LocalPort, Gateway, RemoteEndpoint)


@dataclass(frozen=True, slots=True)
class Upsert:
    """``key`` now holds ``obj`` (added, or changed from what it held).  A lower ``rank``
    wins a conflict (the agent gives local ports rank (0,), store records (1, their
    create_revision)); equal ranks are broken by the key."""

    key: Hashable
    obj: Object
    rank: tuple = ()


@dataclass(frozen=True, slots=True)
class Remove:
    """``key`` is gone (a key never added is fine)."""

    key: Hashable


@dataclass(frozen=True, slots=True)
class SetTunnel:
    """The tunnel port's OpenFlow port number changed: every tunnel flow changes."""

    ofport: int


@dataclass(frozen=True, slots=True)
class PolicyUpdate:
    """What changed of the host's NetworkPolicy inputs (netpol/incremental.py): its
    compiler recomputes the flows they touch, each flow a unit of its own."""

    inputs: tuple[PolicyInput, ...]


Change = Upsert | Remove | SetTunnel | PolicyUpdate


@dataclass(frozen=True)
class Shadowed:
    """An object that has no flows because another one holds what it claims."""

    key: Hashable
    obj: Object
    claim: tuple
    winner: Hashable


def _claims(obj: Object) -> tuple[tuple, ...]:
    if isinstance(obj, NetworkSpec):
        return (("network", obj.name), ("vni", obj.vni), ("index", obj.index))
    if isinstance(obj, Peer):
        return (("peer", obj.ip),)
    if isinstance(obj, Gateway):  # one per network: its host_conntrack flows are too
        anycast = () if obj.anycast is None else (("ip", obj.network, obj.anycast),)
        return (
            ("ofport", obj.ofport),
            ("mac", obj.network, obj.mac),
            ("ip", obj.network, obj.ip),
            ("gateway", obj.network),
            *anycast,
        )
    if isinstance(obj, LocalPort | Gateway):
        return (
            ("ofport", obj.ofport),
            ("mac", obj.network, obj.mac),
            ("ip", obj.network, obj.ip),
        )
    return (("mac", obj.network, obj.mac), ("ip", obj.network, obj.ip))


@dataclass(frozen=True)
class EngineCounts:
    """What a host's pipeline holds (``Engine.counts``), for the agent's status."""

    networks: int
    peers: int
    local_ports: int
    gateways: int
    remote_endpoints: int
    flows: int
    groups: int


class Engine:
    """One host's pipeline as indexes.  Not thread-safe: one owner (the reconciler's
    worker) applies changes."""

    def __init__(self, tunnel_ofport: int, generation: int, policy: PolicyCompiler | None = None):
        self.tunnel_ofport = tunnel_ofport
        self.generation = generation
        self._objects: dict[Hashable, tuple[Object, tuple]] = {}  # key -> (obj, rank)
        # A claim's kind (its head, e.g. ("mac", network)) -> its value -> the key that
        # contends for it while one does (nearly every claim; its rank is the one it
        # registered with), {key: rank} while several do.  Neither the claims' tuples nor
        # a (key, rank) pair per claim are held: 2.4 MB at 10,000 endpoints.
        self._contenders: dict[tuple, dict[Hashable, Hashable | dict[Hashable, tuple]]] = {}
        # Keys by network (endpoints, ports) and by peer (remote endpoints), as dicts to
        # None: a dict of 20 keys is a fifth of a set's size (500 peers: 1.8 MB less).
        self._by_network: dict[str, dict[Hashable, None]] = defaultdict(dict)
        self._by_peer: dict[str, dict[Hashable, None]] = defaultdict(dict)
        self._networks: dict[str, NetworkSpec] = {}  # active, by name
        self._peers: set[str] = set()  # active
        # Flood membership, counted: active ports and gateways, and per peer how many
        # active remote endpoints it has in the network.
        self._local_members: dict[str, set[tuple[int, int]]] = defaultdict(set)
        self._remote_hosts: dict[str, Counter] = defaultdict(Counter)
        # What the engine says is installed: the groups, and the flows of the defaults,
        # networks and tunnels (a few per network and peer) by unit.  The flows of an
        # endpoint, port or gateway are not held but built from ``_active_as`` when they
        # are sent, diffed or listed: holding them cost ~9 MB at 10,000 remote endpoints,
        # and one is needed only when its object changes or in a full sync.
        self._units: dict[Hashable, tuple[Flow, ...]] = {}
        self._groups: dict[int, Group] = {}
        self._units[("defaults",)] = pipeline.defaults_flows(generation)
        # The policy flows: each a unit ("policy", its FlowKey), held by the compiler (kept
        # by a recompute: it restores itself after a failure, and readers on other threads
        # (the metrics' rule names) must never see an empty one in its place).
        self._policy = policy if policy is not None else PolicyCompiler(generation)
        # The (object, rank) each eligible key registered its claims with (the tuple
        # ``_objects`` held then), and the (object, network) each active key has flows
        # for: both may differ from the key's object now, in the middle of a batch.  Their
        # keys are the eligible and the active keys (no separate sets: 0.5 MB each at
        # 10,000 endpoints).
        self._registered: dict[Hashable, tuple[Object, tuple]] = {}
        self._active_as: dict[Hashable, tuple[Object, NetworkSpec | None]] = {}
        self._dependents: set[Hashable] = set()  # to re-examine after a layer
        self._lost_flows: set[Hashable] = set()  # keys that lost their flows in this batch
        # How many flows one object of a kind has (every builder returns a fixed number;
        # the random-sequence test holds ``counts().flows`` equal to ``len(flows())``), so
        # ``counts`` need not build 20,000 flows to count them.
        self._flows_per_kind: dict[type, int] = {}

    # -- reading ------------------------------------------------------------------------

    def state(self) -> HostState:
        """The active objects as the full build's input."""
        local, remote, gateways = [], [], []
        for key in self._active_as:
            obj = self._objects[key][0]
            if isinstance(obj, LocalPort):
                local.append(obj)
            elif isinstance(obj, Gateway):
                gateways.append(obj)
            elif isinstance(obj, RemoteEndpoint):
                remote.append(obj)
        return HostState(
            tunnel_ofport=self.tunnel_ofport,
            networks=tuple(sorted(self._networks.values(), key=lambda n: n.vni)),
            peers=tuple(sorted(self._peers)),
            local=tuple(sorted(local, key=lambda p: p.ofport)),
            remote=tuple(sorted(remote, key=lambda r: (r.network, r.mac))),
            gateways=tuple(sorted(gateways, key=lambda g: g.ofport)),
            policy=self._policy.program(),
        )

    @property
    def policy_rules(self) -> Mapping[int, RuleRef]:
        """Rule id -> rule, of the policy flows installed.  Safe from another thread: the
        compiler replaces the mapping whole when an id changes."""
        return self._policy.rule_names

    def flows(self) -> list[Flow]:
        """Every flow the engine says is installed (the objects' built now)."""
        return list(self.iter_flows())

    def iter_flows(self) -> Iterator[Flow]:
        """The same, one object's flows built at a time: a full sync sends each as it
        comes, so its 20,000 flows are never all alive at once.  Not while the engine
        changes (the owner's thread iterates it)."""
        for unit in self._units.values():
            yield from unit
        yield from self._policy.flows()
        for obj, net in self._active_as.values():
            if net is not None:
                yield from self._object_flows(obj, net)

    def local_flows(self) -> list[Flow]:
        """Every flow but those about other hosts (remote endpoints, tunnel ingress): a
        local port's flows are all among these, without building every remote one."""
        out = [f for unit, flows in self._units.items() if unit[0] != "tunnel" for f in flows]
        out += self._policy.flows()
        for obj, net in self._active_as.values():
            if net is not None and not isinstance(obj, RemoteEndpoint):
                out += self._object_flows(obj, net)
        return out

    def groups(self) -> list[Group]:
        return list(self._groups.values())

    def counts(self) -> EngineCounts:
        """What the engine has installed, counted without building the objects' flows (for
        the agent's status: one pass over the active keys, no flow built but one per kind)."""
        kinds: Counter = Counter()
        samples: dict[type, tuple[Object, NetworkSpec]] = {}
        for obj, net in self._active_as.values():
            if net is not None:
                kinds[type(obj)] += 1
                samples.setdefault(type(obj), (obj, net))
        flows = sum(len(unit) for unit in self._units.values()) + len(self._policy)
        for kind, n in kinds.items():
            if kind not in self._flows_per_kind:
                self._object_flows(*samples[kind])
            flows += n * self._flows_per_kind[kind]
        return EngineCounts(
            networks=len(self._networks),
            peers=len(self._peers),
            local_ports=kinds[LocalPort],
            gateways=kinds[Gateway],
            remote_endpoints=kinds[RemoteEndpoint],
            flows=flows,
            groups=len(self._groups),
        )

    def is_active(self, key: Hashable) -> bool:
        return key in self._active_as

    def shadowed(self, key: Hashable) -> Shadowed | None:
        """Why the eligible object under ``key`` has no flows, or None."""
        if key not in self._registered or key in self._active_as:
            return None
        obj = self._registered[key][0]
        for claim in _claims(obj):
            best = self._best(claim)
            if best != key:
                return Shadowed(key, obj, claim, best)
        return None

    # -- changing -----------------------------------------------------------------------

    def apply(
        self, changes: Iterable[Change], messages: bool = True
    ) -> tuple[list[Message], list[Shadowed]]:
        """Take ``changes`` in; returns the messages for only what they touch (in
        openflow.diff's order; none when ``messages`` is false: a full sync follows)
        and the objects they newly shadowed (to log once)."""
        changes = list(changes)
        for change in changes:  # refused whole, before anything is touched
            if not isinstance(change, Upsert | Remove | SetTunnel | PolicyUpdate):
                raise TypeError(f"not an engine change: {change!r}")
            if isinstance(change, Upsert) and not isinstance(change.obj, OBJECT_TYPES):
                raise TypeError(f"{change.key}: not a pipeline object: {change.obj!r}")
        if any(isinstance(c, SetTunnel) and c.ofport != self.tunnel_ofport for c in changes):
            return self._apply_everything(changes, messages), []
        inputs = [i for c in changes if isinstance(c, PolicyUpdate) for i in c.inputs]
        changes = [c for c in changes if not isinstance(c, PolicyUpdate)]
        # Policy first: a compile that raises leaves the compiler, and so the engine, as
        # it was (the reconciler drops the change and logs it).
        moved = self._policy.update(inputs) if inputs else {}
        messages_out, shadowed = self._apply_objects(changes, messages)
        if moved and messages:
            messages_out += self._policy_messages(moved)
        return messages_out, shadowed

    def _policy_messages(self, moved: dict[FlowKey, Flow | None]) -> list[Message]:
        old_units = {("policy", k): () if f is None else (f,) for k, f in moved.items()}
        return self._messages(old_units, {})

    def _apply_objects(
        self, changes: list[Change], messages: bool
    ) -> tuple[list[Message], list[Shadowed]]:
        touched: set[Hashable] = set()
        for change in changes:
            if isinstance(change, Upsert):
                old = self._objects.get(change.key)
                if old == (change.obj, change.rank):
                    continue
                if old is not None:
                    self._forget(change.key, old[0])
                self._objects[change.key] = (change.obj, change.rank)
                self._index(change.key, change.obj)
                touched.add(change.key)
            elif isinstance(change, Remove) and change.key in self._objects:
                obj, _ = self._objects.pop(change.key)
                self._forget(change.key, obj)
                touched.add(change.key)
        if not touched:
            return [], []
        return self._settle(touched, messages)

    def rebuild(self, generation: int) -> None:
        """Every flow for ``generation`` (a full sync after a (re)connect; read them with
        ``iter_flows``): the active objects' flows with the new cookies; groups carry no
        generation.  The units the engine holds are already those when it has that
        generation (the first full sync of an agent, or one retried after a failed send):
        they are kept, not rebuilt."""
        if generation == self.generation:
            return
        self.generation = generation
        gen, tun = generation, self.tunnel_ofport
        # The old generation's flows go first, so a full sync never holds two copies
        # (the reconciler recomputes everything if this raises half-way).
        self._units = units = {("defaults",): pipeline.defaults_flows(gen)}
        self._policy.regenerate(gen)
        for net in self._networks.values():
            units[("network", net.name)] = pipeline.network_flows(net, gen)
            for peer in self._peers:
                units[("tunnel", peer, net.name)] = pipeline.tunnel_flows(peer, net, tun, gen)

    def recompute(self) -> None:
        """Every index again from the objects alone: after a failure may have left them
        half-updated (the always-right fallback)."""
        self._recompute_all()

    # -- internals ------------------------------------------------------------------------

    def _index(self, key: Hashable, obj: Object) -> None:
        if isinstance(obj, LocalPort | Gateway | RemoteEndpoint):
            self._by_network[obj.network][key] = None
        if isinstance(obj, RemoteEndpoint):
            self._by_peer[obj.host_ip][key] = None

    def _forget(self, key: Hashable, obj: Object) -> None:
        if isinstance(obj, LocalPort | Gateway | RemoteEndpoint):
            _discard(self._by_network, obj.network, key)
        if isinstance(obj, RemoteEndpoint):
            _discard(self._by_peer, obj.host_ip, key)

    def _best(self, claim: tuple) -> Hashable | None:
        values = self._contenders.get(claim[:-1])
        held = None if values is None else values.get(claim[-1])
        if not isinstance(held, dict):  # one contender (no ranking to do), or none
            return held
        return min(held.items(), key=lambda kv: (kv[1], repr(kv[0])))[0]

    def _register(self, key: Hashable, obj: Object, rank: tuple | None) -> set[Hashable]:
        """(Un)register ``key`` as a contender for its claims; returns every key whose
        activeness may have changed with it."""
        affected = {key}
        for claim in _claims(obj):
            kind, value = claim[:-1], claim[-1]
            values = self._contenders.setdefault(kind, {})
            held = values.get(value)
            if held is None:
                contenders = {}
            elif isinstance(held, dict):
                contenders = held
            else:
                contenders = {held: self._registered[held][1]}
            if rank is None:
                contenders.pop(key, None)
            else:
                contenders[key] = rank
            affected.update(contenders)
            if not contenders:
                values.pop(value, None)
                if not values:
                    del self._contenders[kind]
            elif len(contenders) == 1:
                values[value] = next(iter(contenders))
            else:
                values[value] = contenders
        return affected

    def _settle(
        self, touched: set[Hashable], messages: bool = True
    ) -> tuple[list[Message], list[Shadowed]]:
        old_units: dict[Hashable, tuple[Flow, ...]] = {}
        old_groups: dict[int, Group | None] = {}
        dirty_nets: set[str] = set()
        was_shadowed = {k for k in touched if self.shadowed(k) is not None}

        # Networks and peers first: endpoints' eligibility depends on them, and a network
        # or peer that gains or loses its flows makes its endpoints dependents to examine.
        top = {k for k in touched if self._kind(k) in (NetworkSpec, Peer)}
        self._dependents = set()
        self._examine(top, old_units, old_groups, dirty_nets)
        rest = (touched - top) | self._dependents
        self._dependents = set()
        self._examine(rest, old_units, old_groups, dirty_nets)

        for name in dirty_nets:
            self._regroup(name, old_groups)
        out = self._messages(old_units, old_groups) if messages else []
        # Newly shadowed: a touched key that lost, or an untouched one a newcomer beat.
        candidates = (touched - was_shadowed) | self._lost_flows
        self._lost_flows = set()
        shadowed = [s for k in candidates if (s := self.shadowed(k)) is not None]
        return out, shadowed

    def _examine(self, keys: set[Hashable], old_units, old_groups, dirty_nets) -> None:
        recheck: set[Hashable] = set()
        for key in keys:
            recheck |= self._update_eligibility(key)
        self._update_activeness(recheck, old_units, old_groups, dirty_nets)

    def _kind(self, key: Hashable) -> type | None:
        """The type of what ``key`` holds now, or held (a removed key)."""
        entry = self._objects.get(key)
        if entry is not None:
            return type(entry[0])
        if key in self._registered:
            return type(self._registered[key][0])
        return None

    def _update_eligibility(self, key: Hashable) -> set[Hashable]:
        entry = self._objects.get(key)
        eligible = entry is not None and self._deps_met(entry[0])
        if key in self._registered:
            obj = self._registered[key][0]
            affected = self._register(key, obj, None)
            del self._registered[key]
        else:
            affected = {key}
        if eligible:
            obj, rank = entry
            self._registered[key] = entry  # before _register, which reads its rank there
            affected |= self._register(key, obj, rank)
        return affected

    def _deps_met(self, obj: Object) -> bool:
        if isinstance(obj, NetworkSpec | Peer):
            return True
        if obj.network not in self._networks:
            return False
        return not isinstance(obj, RemoteEndpoint) or obj.host_ip in self._peers

    def _update_activeness(self, keys: set[Hashable], old_units, old_groups, dirty_nets) -> None:
        """Give flows to the keys that now win every claim, take them from those that no
        longer do: every removal first, since a winner and the loser it replaces may
        share a value (one peer IP from two host records)."""
        changed = []
        for key in keys:
            entry = self._objects.get(key)
            active = (
                key in self._registered
                and entry is not None
                and all(self._best(c) == key for c in _claims(entry[0]))
            )
            previous = self._active_as.get(key)
            now = (entry[0], self._network_of(entry[0])) if active else None
            if previous != now:
                changed.append((key, previous, now))
        for key, previous, _ in changed:
            if previous is not None:
                self._deactivate(key, previous[0], old_units, old_groups, dirty_nets)
                self._lost_flows.add(key)
        for key, _, now in changed:
            if now is not None:
                self._activate(key, now[0], old_units, old_groups, dirty_nets)

    def _network_of(self, obj: Object) -> NetworkSpec | None:
        """The network an endpoint's flows carry (its VNI and index: a network changing
        either changes them); None for networks and peers."""
        if isinstance(obj, NetworkSpec | Peer):
            return None
        return self._networks[obj.network]

    def _set_unit(self, unit: Hashable, flows: tuple[Flow, ...] | None, old_units) -> None:
        if unit not in old_units:
            old_units[unit] = self._units.get(unit, ())
        if flows:
            self._units[unit] = flows
        else:
            self._units.pop(unit, None)

    def _unit_flows(self, unit: Hashable) -> tuple[Flow, ...]:
        """The flows ``unit`` has now: held, or an active object's built from it."""
        if unit[0] == "policy":
            flow = self._policy.flow(unit[1])
            return () if flow is None else (flow,)
        if unit[0] != "object":
            return self._units.get(unit, ())
        active = self._active_as.get(unit[1])
        if active is None or active[1] is None:
            return ()
        return self._object_flows(*active)

    def _deactivate(self, key, obj, old_units, old_groups, dirty_nets) -> None:
        if not isinstance(obj, NetworkSpec | Peer):  # its flows as installed, for the diff
            old_units.setdefault(("object", key), self._unit_flows(("object", key)))
        del self._active_as[key]
        if isinstance(obj, NetworkSpec):
            del self._networks[obj.name]
            self._set_unit(("network", obj.name), None, old_units)
            for peer in self._peers:
                self._set_unit(("tunnel", peer, obj.name), None, old_units)
            old_groups.setdefault(obj.vni, self._groups.pop(obj.vni, None))
            self._dependents.update(self._by_network.get(obj.name, ()))
            return
        if isinstance(obj, Peer):
            self._peers.discard(obj.ip)
            for name in self._networks:
                self._set_unit(("tunnel", obj.ip, name), None, old_units)
            self._dependents.update(self._by_peer.get(obj.ip, ()))
            return
        if isinstance(obj, RemoteEndpoint):
            hosts = self._remote_hosts[obj.network]
            hosts[obj.host_ip] -= 1
            if hosts[obj.host_ip] <= 0:  # the peer's last endpoint here: its bucket goes
                del hosts[obj.host_ip]
                dirty_nets.add(obj.network)
                if not hosts:
                    del self._remote_hosts[obj.network]
        else:
            dirty_nets.add(obj.network)
            members = self._local_members[obj.network]
            members.discard(_member(obj))
            if not members:
                del self._local_members[obj.network]

    def _activate(self, key, obj, old_units, old_groups, dirty_nets) -> None:
        if not isinstance(obj, NetworkSpec | Peer):  # inactive until now: it had no flows
            old_units.setdefault(("object", key), ())
        self._active_as[key] = (obj, self._network_of(obj))
        gen, tun = self.generation, self.tunnel_ofport
        if isinstance(obj, NetworkSpec):
            self._networks[obj.name] = obj
            self._set_unit(("network", obj.name), pipeline.network_flows(obj, gen), old_units)
            for peer in self._peers:
                self._set_unit(
                    ("tunnel", peer, obj.name),
                    pipeline.tunnel_flows(peer, obj, tun, gen),
                    old_units,
                )
            old_groups.setdefault(obj.vni, self._groups.get(obj.vni))
            dirty_nets.add(obj.name)
            self._dependents.update(self._by_network.get(obj.name, ()))
            return
        if isinstance(obj, Peer):
            self._peers.add(obj.ip)
            for net in self._networks.values():
                self._set_unit(
                    ("tunnel", obj.ip, net.name),
                    pipeline.tunnel_flows(obj.ip, net, tun, gen),
                    old_units,
                )
            self._dependents.update(self._by_peer.get(obj.ip, ()))
            return
        if isinstance(obj, RemoteEndpoint):
            hosts = self._remote_hosts[obj.network]
            hosts[obj.host_ip] += 1
            if hosts[obj.host_ip] == 1:
                dirty_nets.add(obj.network)
        else:
            self._local_members[obj.network].add(_member(obj))
            dirty_nets.add(obj.network)

    def _object_flows(self, obj: Object, net: NetworkSpec) -> tuple[Flow, ...]:
        gen = self.generation
        if isinstance(obj, LocalPort):
            flows = pipeline.local_port_flows(obj, net, gen)
        elif isinstance(obj, Gateway):
            flows = pipeline.gateway_flows(obj, net, gen)
        else:
            flows = pipeline.remote_flows(obj, net, self.tunnel_ofport, gen)
        self._flows_per_kind[type(obj)] = len(flows)
        return flows

    def _regroup(self, name: str, old_groups: dict[int, Group | None]) -> None:
        net = self._networks.get(name)
        if net is None:
            return
        old_groups.setdefault(net.vni, self._groups.get(net.vni))
        members = sorted(self._local_members.get(name, ()))
        self._groups[net.vni] = pipeline.flood_group(
            net,
            [port for kind, port in members if kind == 0],
            [port for kind, port in members if kind == 1],
            sorted(self._remote_hosts.get(name, ())),
            self.tunnel_ofport,
        )

    def _messages(self, old_units, old_groups) -> list[Message]:
        installed = [f for flows in old_units.values() for f in flows]
        desired = [f for unit in old_units for f in self._unit_flows(unit)]
        have_groups = [g for g in old_groups.values() if g is not None]
        want_groups = [self._groups[v] for v in old_groups if v in self._groups]
        return diff(installed, have_groups, desired, want_groups)

    def _recompute_all(self) -> None:
        """Every derived index from the objects alone: the fallback that is always right."""
        objects = dict(self._objects)
        self.__init__(self.tunnel_ofport, self.generation, self._policy)
        self._objects = objects
        for key, (obj, _) in objects.items():
            self._index(key, obj)
        self._settle(set(objects), messages=False)

    def _apply_everything(self, changes: list[Change], messages: bool) -> list[Message]:
        """A change the per-object handlers do not cover (the tunnel's port number): take
        it, recompute everything, and diff the whole pipeline."""
        before_flows, before_groups = self.flows(), self.groups()
        inputs = [i for c in changes if isinstance(c, PolicyUpdate) for i in c.inputs]
        self._policy.update(inputs)  # raises before anything changed if it does not compile
        for change in changes:
            if isinstance(change, SetTunnel):
                self.tunnel_ofport = change.ofport
            elif isinstance(change, Upsert):
                self._objects[change.key] = (change.obj, change.rank)
            elif isinstance(change, Remove):
                self._objects.pop(change.key, None)
        self._recompute_all()
        if not messages:
            return []
        return diff(before_flows, before_groups, self.flows(), self.groups())


def _member(obj: LocalPort | Gateway) -> tuple[int, int]:
    """A flood group member: local ports first, then gateways, each by port number (the
    order the full build lists them in)."""
    return (0 if isinstance(obj, LocalPort) else 1, obj.ofport)


def _discard(index: dict, name, key) -> None:
    keys = index.get(name)
    if keys is not None:
        keys.pop(key, None)
        if not keys:
            del index[name]
