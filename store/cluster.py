"""The cluster state, typed, on any KvStore: hosts, networks, address blocks, endpoints.

Keys (ARCHITECTURE.md, "Cluster state")::

    hosts/HOST                         {"tunnel_ip", "gateways"}  on the host's lease
    networks/NETWORK                   {"vni", "index", "cidr", "mtu", "gateway", "egress"}
    vnis/VNI                           NETWORK                    one network per VNI
    netindex/INDEX                     NETWORK                    one network per index
    blocks/NETWORK/CIDR                {"host"}                   e.g. blocks/default/100.64.0.64/26
    ipam/NETWORK/IP                    ATTACHMENT                 an address in use
    attachments/NETWORK/ATTACHMENT     IP                         the same, found by attachment
    endpoints/NETWORK/HOST/ATTACHMENT  {"mac", "ip", "container_id", "ifname"}
    macs/NETWORK/MAC                   {"attachment", "host"}     a MAC in use

ATTACHMENT is the CNI attachment id ``CONTAINER_ID/IFNAME``, or a host gateway's
``gateway:HOST/PORT`` (gateway_attachment: CNI's container id pattern refuses ':', so no
container can hold it).  A host's record lists, per network, its gateway's unique address
and MAC (``{"default": {"ip", "mac"}}``): every other host sends that MAC through the
tunnel to it, and the record being on the host's lease takes the gateway with the host.
Names never contain '/', so the last part of a key may.

A network's index is dense (the lowest free, from 1) and the same on every host: the
pipeline keeps it in a register and uses it as the network's conntrack zone, so a trace
reads the same everywhere.  It is claimed with the name and VNI; a network created before
indexes existed gets one from the first agent that sees it (assign_network_index, a
compare-and-swap on the record), and until then has no flows.

Every claim (a network name with its VNI, a block, an address) is a compare-and-create,
so two hosts racing never get the same one and nothing is ever locked.  An address comes
only from blocks its host owns.  A pod start writes two transactions and reads nothing
else but its network: claim_address writes the address, its attachment index and the MAC
claim at once (the host's blocks and their used addresses come from memory after the
first start, the transaction comparing them), then put_endpoint publishes the endpoint
against that claim's revision.  The shared block list is read again only when the host's
blocks are full.  The address and its attachment index are written together, so a crash
leaves either both or neither, and releasing by attachment (what CNI DEL knows) always
finds the address.  Two attachments of one network never share a MAC (their flows would
collide on every host that sees both), even when two hosts claim it at the same moment:
the claim is made before the pod's port exists, the endpoint record keeps it, and the
transaction that unpublishes the endpoint releases it.
"""

from __future__ import annotations

import ipaddress
import json
import re
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from store.kv import Compare, Delete, Event, KeyValue, KvStore, Put

POD_SUPERNET = ipaddress.IPv4Network("100.64.0.0/10")
MAX_VNI = 2**24 - 1
MAX_NETWORK_INDEX = 2**16 - 1  # a conntrack zone; 0 is OVS's default zone, never used
DEFAULT_BLOCK_PREFIX = 26
MAX_NETWORK_PREFIX = 30  # network, gateway, one pod, broadcast
MIN_MTU, MAX_MTU = 576, 9000
# Operations per transaction when removing a host: etcd refuses a transaction of more than
# --max-txn-ops (default 128) operations.
REMOVE_BATCH = 100
WATCHED_PREFIXES = ("hosts/", "networks/", "endpoints/")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_NAME_RULE = "letters, digits, '_', '.' or '-', starting with a letter or digit"


class StoreError(ValueError):
    """A request the cluster state refuses; the message says what to do instead."""


class AddressExhaustedError(StoreError):
    """A network has no address (or no block) left for a host."""


class AddressInUseError(StoreError):
    """An address or MAC asked for is held by another attachment (named in the message, and
    in ``holder`` for a caller that words its own refusal)."""

    def __init__(self, msg: str, kind: str, holder: str = "another attachment"):
        super().__init__(msg)
        self.kind = kind  # "IP" or "MAC"
        self.holder = holder


def _check_name(kind: str, name: str, max_len: int = 63) -> None:
    if not isinstance(name, str) or len(name) > max_len or not _NAME_RE.match(name):
        raise StoreError(f"{kind} name {name!r} is invalid; use 1-{max_len} {_NAME_RULE}")


def _check_attachment(attachment: str) -> None:
    if not attachment or attachment != attachment.strip():
        raise StoreError(
            f"attachment id {attachment!r} is invalid; use CONTAINER_ID/IFNAME without "
            "surrounding spaces"
        )


@dataclass(frozen=True)
class HostGateway:
    """A host's own port into a network: its unique address there and its MAC."""

    network: str
    ip: str
    mac: str


@dataclass(frozen=True)
class Host:
    """A host whose agent is alive (its key lives on the agent's lease)."""

    name: str
    tunnel_ip: str
    lease: int | None = None
    gateways: tuple[HostGateway, ...] = ()


GATEWAY_ATTACHMENT_PREFIX = "gateway:"


def gateway_attachment(host: str, port: str) -> str:
    """The attachment id a host's gateway holds its address under: no CNI container can
    have it (a container id may not contain ':'), and it is the same after every agent
    restart, so the host keeps its address."""
    return f"{GATEWAY_ATTACHMENT_PREFIX}{host}/{port}"


def is_gateway_attachment(attachment: str) -> bool:
    """Whether an attachment id is a host gateway's (gateway_attachment), not a pod's."""
    return attachment.startswith(GATEWAY_ATTACHMENT_PREFIX)


@dataclass(frozen=True)
class Network:
    """An overlay network: one L2 segment, one VNI, one address range for its pods."""

    name: str
    vni: int
    cidr: str
    mtu: int | None = None
    gateway: bool = True
    index: int | None = None  # None: a record from before indexes (assign_network_index)
    # Pods reach addresses outside every overlay network through their host, SNATed to it
    # (where the host has a gateway in the network: the default network).
    egress: bool = True

    def __post_init__(self) -> None:
        _check_name("network", self.name)
        if self.index is not None and (
            isinstance(self.index, bool)
            or not isinstance(self.index, int)
            or not 1 <= self.index <= MAX_NETWORK_INDEX
        ):
            raise StoreError(
                f"network {self.name}: index {self.index!r} is outside 1..{MAX_NETWORK_INDEX}"
            )
        if (
            isinstance(self.vni, bool)
            or not isinstance(self.vni, int)
            or not 1 <= self.vni <= MAX_VNI
        ):
            raise StoreError(f"network {self.name}: VNI {self.vni!r} is outside 1..{MAX_VNI}")
        try:
            net = ipaddress.IPv4Network(self.cidr)
        except ValueError as exc:
            raise StoreError(
                f"network {self.name}: CIDR {self.cidr!r} is not an IPv4 network like "
                f"100.64.0.0/16 ({exc})"
            ) from None
        if not net.subnet_of(POD_SUPERNET) or net.prefixlen > MAX_NETWORK_PREFIX:
            raise StoreError(
                f"network {self.name}: CIDR {self.cidr} must be a /{MAX_NETWORK_PREFIX} or "
                f"larger inside {POD_SUPERNET}, the pod address range"
            )
        if str(net) != self.cidr:
            object.__setattr__(self, "cidr", str(net))  # normalise, e.g. "100.64.0.0/16"
        if self.mtu is not None and (
            isinstance(self.mtu, bool)
            or not isinstance(self.mtu, int)
            or not MIN_MTU <= self.mtu <= MAX_MTU
        ):
            raise StoreError(
                f"network {self.name}: MTU {self.mtu!r} is outside {MIN_MTU}..{MAX_MTU}"
            )
        if not isinstance(self.gateway, bool):
            raise StoreError(f"network {self.name}: gateway must be true or false")
        if not isinstance(self.egress, bool):
            raise StoreError(f"network {self.name}: egress must be true or false")


@dataclass(frozen=True)
class Block:
    """A range of a network's addresses that one host allocates from, alone."""

    network: str
    cidr: str
    host: str


@dataclass(frozen=True)
class Endpoint:
    """A pod's interface in a network, published by the agent of the host it runs on."""

    network: str
    host: str
    attachment: str
    mac: str
    ip: str
    container_id: str
    ifname: str
    pod: str | None = None  # "NAMESPACE/NAME" from the runtime's K8S_POD_* CNI_ARGS


@dataclass(frozen=True)
class AddressClaim:
    """An attachment's address and MAC, claimed in one transaction at ``revision`` (0: the
    claim was found, not made): put_endpoint compares the MAC claim against it instead of
    reading it again."""

    ip: str
    mac: str
    revision: int


class _HostPool:
    """One host's blocks of one network, (CIDR, mod_revision) lowest first, and the
    addresses used in them, as this process last saw them: claim_address's hint."""

    def __init__(self, blocks: list[tuple[str, int]], used: set[str]):
        self.blocks = blocks
        self.used = used

    def pick(self) -> tuple[str, tuple[str, int]] | None:
        """The lowest free address and its block, marked used; None when all are used."""
        for block in self.blocks:
            first = ipaddress.IPv4Network(block[0])
            base = int(first.network_address)
            for i in range(base, base + first.num_addresses):
                addr = str(ipaddress.IPv4Address(i))
                if addr not in self.used:
                    self.used.add(addr)
                    return addr, block
        return None


@dataclass(frozen=True)
class HostSummary:
    """A host as the operator sees it: alive (its key is on a live lease) or only left
    behind in its blocks and endpoints (its agent died and never came back)."""

    name: str
    alive: bool
    tunnel_ip: str | None
    endpoints: int
    blocks: int
    # Seconds until the host drops out unless its agent renews the lease (None: not alive,
    # or its key is on no lease): a live host's agent renews every third of its TTL, so a
    # value well below two thirds of the TTL means the agent has stopped renewing.
    lease_left: int | None = None


@dataclass(frozen=True)
class HostRemoval:
    """What ``remove_host`` reclaimed."""

    host: str
    endpoints: int
    blocks: int
    addresses: int


def reserved_addresses(cidr: str) -> frozenset[str]:
    """The addresses of a network never given to a pod: the network and broadcast addresses,
    and the first host address, which is the gateway's on every host (an anycast gateway;
    reserved even when the gateway is off, so turning it on never collides with a pod)."""
    net = ipaddress.IPv4Network(cidr)
    return frozenset(
        str(a) for a in (net.network_address, net.broadcast_address, net.network_address + 1)
    )


def _network_key(name: str) -> str:
    return f"networks/{name}"


def _vni_key(vni: int) -> str:
    return f"vnis/{vni}"


def _index_key(index: int) -> str:
    return f"netindex/{index}"


def _network_record(net: Network) -> str:
    return json.dumps(
        {
            "vni": net.vni,
            "index": net.index,
            "cidr": net.cidr,
            "mtu": net.mtu,
            "gateway": net.gateway,
            "egress": net.egress,
        }
    )


def _network_from(name: str, d: dict) -> Network:
    """A network record; ``egress`` decoded tolerantly: missing (a record from before the
    flag) is on, anything but true or false is off (a value no version wrote must not open
    a network to the outside), and the network itself stays usable."""
    egress = d.get("egress", True)
    return Network(
        name,
        d["vni"],
        d["cidr"],
        d.get("mtu"),
        d.get("gateway", True),
        d.get("index"),
        egress if isinstance(egress, bool) else False,
    )


def _block_prefix(network: str) -> str:
    return f"blocks/{network}/"


def _ipam_prefix(network: str) -> str:
    return f"ipam/{network}/"


def _attachment_key(network: str, attachment: str) -> str:
    return f"attachments/{network}/{attachment}"


def _endpoint_key(network: str, host: str, attachment: str) -> str:
    return f"endpoints/{network}/{host}/{attachment}"


def _mac_key(network: str, mac: str) -> str:
    return f"macs/{network}/{mac.lower()}"


def _mac_claim(attachment: str, host: str) -> str:
    return json.dumps({"attachment": attachment, "host": host}, sort_keys=True)


class ClusterState:
    """The cluster state on ``kv``; hosts claim address blocks of ``block_prefix`` bits (a /26
    is 64 addresses: few claims per host, little waste per network)."""

    def __init__(self, kv: KvStore, block_prefix: int = DEFAULT_BLOCK_PREFIX):
        if not 10 <= block_prefix <= MAX_NETWORK_PREFIX:
            raise StoreError(
                f"block prefix length {block_prefix} is outside 10..{MAX_NETWORK_PREFIX}"
            )
        self.kv = kv
        self.block_prefix = block_prefix
        self._pools: dict[tuple[str, str], _HostPool] = {}  # (network, host): claim_address's
        self._pools_lock = threading.Lock()

    def close(self) -> None:
        self.kv.close()

    def revision(self) -> int:
        """The store revision: read it before a full read, then watch_changes from it."""
        return self.kv.revision()

    # -- hosts --------------------------------------------------------------------------

    def register_host(
        self, name: str, tunnel_ip: str, ttl: float, gateways: Iterable[HostGateway] = ()
    ) -> int:
        """Publish this host (with its ``gateways``) on a new lease and return it; the host
        and its gateways disappear (a delete event every peer sees) ``ttl`` seconds after the
        keepalives stop."""
        _check_name("host", name, 253)
        try:
            ipaddress.ip_address(tunnel_ip)
        except ValueError:
            raise StoreError(f"host {name}: tunnel IP {tunnel_ip!r} is not an IP address") from None
        lease = self.kv.grant_lease(ttl)
        self.update_host(name, tunnel_ip, lease, gateways)
        return lease

    def update_host(
        self, name: str, tunnel_ip: str, lease: int, gateways: Iterable[HostGateway] = ()
    ) -> None:
        """Write this host's record (with its ``gateways``) again on its ``lease``."""
        record: dict = {"tunnel_ip": tunnel_ip}
        gateways = list(gateways)
        if gateways:
            record["gateways"] = {g.network: {"ip": g.ip, "mac": g.mac} for g in gateways}
        self.kv.put(f"hosts/{name}", json.dumps(record), lease=lease)

    def keepalive(self, lease: int) -> bool:
        """Renew a host's lease; False once it has expired: register the host again."""
        return self.kv.keepalive(lease)

    def unregister_host(self, lease: int) -> bool:
        """Remove a host now (a clean agent shutdown) instead of when its lease runs out."""
        return self.kv.revoke(lease)

    def list_hosts(self) -> list[Host]:
        kvs, _ = self.kv.range("hosts/")
        hosts = []
        for kv in kvs:
            d = json.loads(kv.value)
            hosts.append(
                Host(
                    kv.key[len("hosts/") :],
                    d["tunnel_ip"],
                    kv.lease,
                    _host_gateways(d.get("gateways")),
                )
            )
        return hosts

    def host_summaries(self) -> list[HostSummary]:
        """Every host the store knows, alive or not, with its endpoint and block counts and
        its lease's time left (a full read and one lease request per live host: for the
        operator, never on an agent's path)."""
        alive = {h.name: h for h in self.list_hosts()}
        lease_left = {
            name: self.kv.lease_time_left(h.lease) for name, h in alive.items() if h.lease
        }
        endpoints: dict[str, int] = {}
        for e in self.list_endpoints():
            endpoints[e.host] = endpoints.get(e.host, 0) + 1
        blocks: dict[str, int] = {}
        for kv in self.kv.range("blocks/")[0]:
            owner = json.loads(kv.value)["host"]
            blocks[owner] = blocks.get(owner, 0) + 1
        return [
            HostSummary(
                name,
                name in alive,
                alive[name].tunnel_ip if name in alive else None,
                endpoints.get(name, 0),
                blocks.get(name, 0),
                lease_left.get(name),
            )
            for name in sorted(alive.keys() | endpoints.keys() | blocks.keys())
        ]

    def remove_host(self, name: str) -> HostRemoval:
        """Reclaim what a host that never returns still holds: its endpoints (every other
        host drops its flows), its blocks, the addresses and attachment records in them or
        named by its endpoints, and its endpoints' MAC claims.  Refused while the host is
        alive (its agent keeps its lease): removing a live host's state would cut its pods
        off.

        Every transaction is guarded by the host's key being absent, so a host that comes
        back in the middle stops the removal; what is already reclaimed stays reclaimed, and
        running it again finishes the job (addresses go first, endpoints and blocks last, so
        a rerun still finds every address through them)."""
        _check_name("host", name, 253)
        host_key = f"hosts/{name}"
        if self.kv.get(host_key) is not None:
            raise StoreError(
                f"host {name} is alive (its agent keeps its lease); stop its agent and wait "
                "for the host's TTL to pass before removing it"
            )
        address_ops: list[Delete] = []  # pairs: an address and its attachment record
        mac_ops: list[Delete] = []
        last_ops: list[Delete] = []
        counts = {"endpoints": 0, "blocks": 0, "addresses": 0}
        for net in self.list_networks():
            blocks = self.blocks_of(net.name, name)
            endpoints = [e for e in self.list_endpoints(net.name) if e.host == name]
            ranges = [ipaddress.IPv4Network(b.cidr) for b in blocks]
            held = {e.attachment for e in endpoints}
            for ip, attachment in self.allocations(net.name).items():
                if attachment in held or any(ipaddress.IPv4Address(ip) in r for r in ranges):
                    address_ops.append(Delete(_ipam_prefix(net.name) + ip))
                    address_ops.append(Delete(_attachment_key(net.name, attachment)))
                    counts["addresses"] += 1
            mac_ops.extend(Delete(key) for key in self._mac_claims_of(net.name, name, held))
            if endpoints:
                last_ops.append(Delete(f"endpoints/{net.name}/{name}/", prefix=True))
                counts["endpoints"] += len(endpoints)
            last_ops.extend(Delete(_block_prefix(net.name) + b.cidr) for b in blocks)
            counts["blocks"] += len(blocks)
        # REMOVE_BATCH is even, so an address and its record stay in one transaction.
        ops = address_ops + mac_ops + last_ops
        if not ops:
            raise StoreError(
                f"host {name} holds nothing in the store (no endpoint, block or address); "
                "check the name with 'ovs-overlayctl host list'"
            )
        for start in range(0, len(ops), REMOVE_BATCH):
            result = self.kv.txn((Compare(host_key, 0),), ops[start : start + REMOVE_BATCH])
            if not result.succeeded:
                raise StoreError(
                    f"host {name} came back while being removed; it is alive again, so "
                    "leave it (what was reclaimed so far, its agent re-publishes)"
                )
        return HostRemoval(name, **counts)

    def _mac_claims_of(self, network: str, host: str, attachments: set[str]) -> list[str]:
        """The keys of the MAC claims (``macs/NETWORK/MAC``, task ADMISSION's) that ``host``
        or one of its ``attachments`` holds; the value is {"attachment", "host"} or a bare
        attachment id."""
        keys = []
        for kv in self.kv.range(f"macs/{network}/")[0]:
            try:
                claim = json.loads(kv.value)
            except ValueError:
                claim = kv.value
            if isinstance(claim, dict):
                if claim.get("host") == host or claim.get("attachment") in attachments:
                    keys.append(kv.key)
            elif kv.value in attachments:
                keys.append(kv.key)
        return keys

    # -- networks -----------------------------------------------------------------------

    def create_network(
        self,
        name: str,
        vni: int,
        cidr: str,
        mtu: int | None = None,
        gateway: bool = True,
        egress: bool = True,
    ) -> Network:
        """Create a network; its name, its VNI and the lowest free index are claimed
        together, atomically (another network taking that index first: the next one)."""
        Network(name, vni, cidr, mtu, gateway, None, egress)  # refused before anything is read
        while True:
            net = Network(name, vni, cidr, mtu, gateway, self._free_index(), egress)
            result = self.kv.txn(
                (
                    Compare(_network_key(name), 0),
                    Compare(_vni_key(vni), 0),
                    Compare(_index_key(net.index), 0),
                ),
                (
                    Put(_network_key(name), _network_record(net)),
                    Put(_vni_key(vni), name),
                    Put(_index_key(net.index), name),
                ),
            )
            if result.succeeded:
                return net
            existing = self.get_network(name)
            if existing is not None:
                raise StoreError(
                    f"network {name} already exists (VNI {existing.vni}, {existing.cidr}); "
                    "delete it first or pick another name"
                )
            owner = self.kv.get(_vni_key(vni))
            if owner is not None:
                raise StoreError(
                    f"VNI {vni} is already used by network {owner.value}; pick another VNI"
                )
            # The index was taken meanwhile (or both were freed): try again.

    def assign_network_index(self, name: str) -> Network | None:
        """Give a network created before indexes existed the lowest free index, by a
        compare-and-swap on its record (any agent may race another: the loser reads the
        winner's).  Returns the network as it is now, None if it is gone."""
        while True:
            kv = self.kv.get(_network_key(name))
            if kv is None:
                return None
            net = self._network(name, kv.value)
            if net.index is not None:
                return net
            indexed = Network(
                name, net.vni, net.cidr, net.mtu, net.gateway, self._free_index(), net.egress
            )
            result = self.kv.txn(
                (
                    Compare(_network_key(name), kv.mod_revision),
                    Compare(_index_key(indexed.index), 0),
                ),
                (
                    Put(_network_key(name), _network_record(indexed)),
                    Put(_index_key(indexed.index), name),
                ),
            )
            if result.succeeded:
                return indexed

    def _free_index(self) -> int:
        kvs, _ = self.kv.range("netindex/")
        used = {kv.key[len("netindex/") :] for kv in kvs}  # text: a bad key is no index
        free = next(i for i in range(1, MAX_NETWORK_INDEX + 2) if str(i) not in used)
        if free > MAX_NETWORK_INDEX:
            raise StoreError(
                f"all {MAX_NETWORK_INDEX} network indexes are in use; delete a network"
            )
        return free

    def set_egress(self, name: str, egress: bool) -> Network:
        """Turn a network's egress on or off (a compare-and-swap on its record; every agent
        rewrites its egress rules from the watch event)."""
        if not isinstance(egress, bool):
            raise StoreError(f"egress must be true or false, not {egress!r}")
        while True:
            kv = self.kv.get(_network_key(name))
            if kv is None:
                raise StoreError(f"network {name} does not exist; 'network list' shows them")
            net = self._network(name, kv.value)
            changed = Network(name, net.vni, net.cidr, net.mtu, net.gateway, net.index, egress)
            result = self.kv.txn(
                (Compare(_network_key(name), kv.mod_revision),),
                (Put(_network_key(name), _network_record(changed)),),
            )
            if result.succeeded:
                return changed

    def get_network(self, name: str) -> Network | None:
        kv = self.kv.get(_network_key(name))
        return self._network(name, kv.value) if kv else None

    def list_networks(self) -> list[Network]:
        kvs, _ = self.kv.range("networks/")
        return [self._network(kv.key[len("networks/") :], kv.value) for kv in kvs]

    @staticmethod
    def _network(name: str, value: str) -> Network:
        return _network_from(name, json.loads(value))

    def delete_network(self, name: str) -> None:
        """Delete a network with its blocks and address records, refused while any endpoint
        is in it.  (An endpoint published in the moment between the check and the delete
        would be left behind: the store cannot compare a whole prefix.)"""
        kv = self.kv.get(_network_key(name))
        if kv is None:
            raise StoreError(f"network {name} does not exist, so there is nothing to delete")
        endpoints = self.list_endpoints(name)
        if endpoints:
            first = endpoints[0]
            raise StoreError(
                f"network {name} still has {len(endpoints)} endpoint(s), e.g. "
                f"{first.attachment} on host {first.host}; detach them first"
            )
        net = self._network(name, kv.value)
        result = self.kv.txn(
            (Compare(_network_key(name), kv.mod_revision),),
            (
                Delete(_network_key(name)),
                Delete(_vni_key(net.vni)),
                *((Delete(_index_key(net.index)),) if net.index is not None else ()),
                Delete(_block_prefix(name), prefix=True),
                Delete(_ipam_prefix(name), prefix=True),
                Delete(f"attachments/{name}/", prefix=True),
                Delete(f"macs/{name}/", prefix=True),
            ),
        )
        if not result.succeeded:
            raise StoreError(f"network {name} changed while being deleted; try again")

    def _require(self, network: str, known: Network | None = None) -> Network:
        """The network ``network``; ``known`` is the caller's fresh read of it, which
        spares the ADD path (one call per step) a store round trip each."""
        if known is not None and known.name == network:
            return known
        net = self.get_network(network)
        if net is None:
            raise StoreError(f"network {network} does not exist; create it first")
        return net

    # -- blocks -------------------------------------------------------------------------

    def list_blocks(self, network: str) -> list[Block]:
        prefix = _block_prefix(network)
        kvs, _ = self.kv.range(prefix)
        return [Block(network, kv.key[len(prefix) :], json.loads(kv.value)["host"]) for kv in kvs]

    def blocks_of(self, network: str, host: str) -> list[Block]:
        """The blocks ``host`` owns in ``network``, lowest first."""
        blocks = [b for b in self.list_blocks(network) if b.host == host]
        return sorted(blocks, key=lambda b: ipaddress.IPv4Network(b.cidr))

    def claim_block(self, network: str, host: str, known: Network | None = None) -> Block:
        """Claim the first free block of ``network`` for ``host``.  Each claim is a
        compare-and-create, so of two hosts racing for a block one gets it and the other
        moves on to the next free one."""
        _check_name("host", host, 253)
        net = self._require(network, known)
        cidr = ipaddress.IPv4Network(net.cidr)
        size = max(self.block_prefix, cidr.prefixlen)
        taken = {b.cidr for b in self.list_blocks(network)}
        value = json.dumps({"host": host})
        first = int(cidr.network_address)
        step = 2 ** (32 - size)
        # Integers, not cidr.subnets(): a /10 in /26 blocks is 65536 candidates.
        for start in range(first, first + cidr.num_addresses, step):
            block = f"{ipaddress.IPv4Address(start)}/{size}"
            if block not in taken and self.kv.create(_block_prefix(network) + block, value):
                return Block(network, block, host)
        raise AddressExhaustedError(
            f"network {network} ({net.cidr}) has no free /{size} block left for host {host}; "
            "delete unused endpoints or create a larger network"
        )

    # -- addresses ----------------------------------------------------------------------

    def claim_address(
        self,
        network: str,
        host: str | None,
        attachment: str,
        *,
        ip: str | None = None,
        mac: str | None = None,
        derive_mac: Callable[[str], str] | None = None,
        known: Network | None = None,
    ) -> AddressClaim:
        """Claim an address for ``attachment`` and, with it, its MAC (``mac``, or
        ``derive_mac`` of the address; neither: no MAC claim), in one transaction: a pod
        start's one write before any side effect, so a refusal leaves nothing behind.

        ``ip`` asks for exactly that address (a static IP from CNI_ARGS); without it the
        address comes from ``host``'s own blocks, a new block claimed when they are full.
        The blocks and the addresses used in them come from this object's memory after the
        first claim (a hint: the transaction compares the address and the block, so a stale
        hint costs a retry, never a duplicate).  Asking again for an attachment that holds
        an address returns that address (a retried CNI ADD).  Raises AddressInUseError
        (its ``holder`` named) for an address or MAC another attachment holds."""
        if host is not None:
            _check_name("host", host, 253)
        _check_attachment(attachment)
        net = self._require(network, known)
        if ip is not None:
            ip = self._usable_address(net, ip)
        elif host is None:
            raise StoreError("an address from a host's blocks needs the host's name")
        att_key, prefix = _attachment_key(network, attachment), _ipam_prefix(network)
        mine = _mac_claim(attachment, host or "")
        # What a MAC's claim key must be at: absent (0), or our own claim as last read; a
        # derived MAC changes with the candidate address, so the revision is kept per MAC.
        mac_revision: dict[str, int] = {}
        if mac:  # a static MAC: refused before a block could be claimed for it
            claim = self.kv.get(_mac_key(network, mac))
            if claim is not None and claim.value != mine:
                raise self._mac_in_use(network, mac, claim.value)
            mac_revision[mac.lower()] = claim.mod_revision if claim else 0
        while True:
            block = None
            if ip is None:
                addr, block = self._pick_address(net, host)
            else:
                addr = ip
            claim_mac = (mac or (derive_mac(addr) if derive_mac else "")).lower()
            compares = [Compare(prefix + addr, 0), Compare(att_key, 0)]
            ops: list = [Put(prefix + addr, attachment), Put(att_key, addr)]
            if block is not None:
                compares.append(Compare(_block_prefix(network) + block[0], block[1]))
            if claim_mac:
                compares.append(
                    Compare(_mac_key(network, claim_mac), mac_revision.get(claim_mac, 0))
                )
                ops.append(Put(_mac_key(network, claim_mac), mine))
            result = self.kv.txn(compares, ops)
            if result.succeeded:
                return AddressClaim(addr, claim_mac, result.revision)
            # Which compare failed?  Reads only on this path.
            self._unpick(network, addr)
            held = self.kv.get(att_key)
            if held is not None and ip is not None and held.value != ip:
                raise AddressInUseError(
                    f"attachment {attachment} already holds IP {held.value} in network "
                    f"{network}, not {ip}; DEL it before asking for another address",
                    "IP",
                    f"attachment {attachment}",
                )
            if held is not None:  # a retried ADD
                if claim_mac and not mac:
                    claim_mac = derive_mac(held.value).lower()
                if claim_mac:
                    self.claim_mac(network, claim_mac, attachment, host or "")
                return AddressClaim(held.value, claim_mac, 0)
            taken = self.kv.get(prefix + addr)
            if taken is not None and ip is not None:
                holder = self.describe_holder(network, taken.value)
                raise AddressInUseError(
                    f"IP {ip} in network {network} is already used by {holder}; pick a free "
                    "address or leave IP= out",
                    "IP",
                    holder,
                )
            if taken is not None:  # a static IP in our block: skip it
                with self._pools_lock:
                    if (network, host) in self._pools:
                        self._pools[(network, host)].used.add(addr)
                continue
            if claim_mac:
                claim = self.kv.get(_mac_key(network, claim_mac))
                if claim is not None and claim.value != mine:
                    raise self._mac_in_use(network, claim_mac, claim.value)
                mac_revision[claim_mac] = claim.mod_revision if claim else 0
            if block is not None:  # perhaps our block changed: read it again
                with self._pools_lock:
                    self._pools.pop((network, host), None)

    def allocate_ip(
        self, network: str, host: str, attachment: str, known: Network | None = None
    ) -> str:
        """An address for ``attachment`` from ``host``'s own blocks (claim_address, no MAC)."""
        return self.claim_address(network, host, attachment, known=known).ip

    def reserve_ip(
        self, network: str, address: str, attachment: str, known: Network | None = None
    ) -> str:
        """Give ``attachment`` exactly ``address`` (claim_address, no MAC)."""
        return self.claim_address(network, None, attachment, ip=address, known=known).ip

    @staticmethod
    def _usable_address(net: Network, address: str) -> str:
        try:
            ip = ipaddress.IPv4Address(address)
        except ValueError:
            raise StoreError(f"IP {address!r} is not an IPv4 address") from None
        if ip not in ipaddress.IPv4Network(net.cidr) or str(ip) in reserved_addresses(net.cidr):
            raise StoreError(
                f"IP {address} is not a usable address of network {net.name} ({net.cidr})"
            )
        return str(ip)

    def _pick_address(self, net: Network, host: str) -> tuple[str, tuple[str, int]]:
        """A free address of ``host``'s blocks (marked used at once, so concurrent ADDs of
        this process pick different ones) and its block with the block's mod_revision."""
        key = (net.name, host)
        with self._pools_lock:
            for attempt in ("memory", "store", "new block"):
                pool = self._pools.get(key) if attempt == "memory" else None
                if attempt == "new block":
                    try:
                        self.claim_block(net.name, host, known=net)
                    except AddressExhaustedError:
                        raise AddressExhaustedError(
                            f"network {net.name} ({net.cidr}) has no address left for host "
                            f"{host}: its blocks are full and no free block remains; release "
                            "unused addresses or create a larger network"
                        ) from None
                if pool is None:
                    pool = self._pools[key] = self._read_pool(net, host)
                picked = pool.pick()
                if picked is not None:
                    return picked
        raise AssertionError("a newly claimed block has free addresses")

    def _read_pool(self, net: Network, host: str) -> _HostPool:
        """``host``'s blocks and the addresses used in them, from the store: two range
        reads, made once per network (and again only when the memory seems full or stale)."""
        prefix = _block_prefix(net.name)
        blocks = sorted(
            (
                (kv.key[len(prefix) :], kv.mod_revision)
                for kv in self.kv.range(prefix)[0]
                if json.loads(kv.value)["host"] == host
            ),
            key=lambda b: ipaddress.IPv4Network(b[0]),
        )
        ranges = [ipaddress.IPv4Network(cidr) for cidr, _ in blocks]
        ipam = _ipam_prefix(net.name)
        used = {
            kv.key[len(ipam) :]
            for kv in self.kv.range(ipam)[0]
            if any(ipaddress.IPv4Address(kv.key[len(ipam) :]) in r for r in ranges)
        }
        return _HostPool(blocks, used | reserved_addresses(net.cidr))

    def _unpick(self, network: str, addr: str) -> None:
        """Return an address a failed claim did not take to every pool of ``network``."""
        with self._pools_lock:
            for (net, _), pool in self._pools.items():
                if net == network:
                    pool.used.discard(addr)

    def release_ip(self, network: str, attachment: str) -> str | None:
        """Free the address of ``attachment`` and return it; None if it had none (a repeated
        CNI DEL is not an error)."""
        att_key = _attachment_key(network, attachment)
        while True:
            kv = self.kv.get(att_key)
            if kv is None:
                return None
            result = self.kv.txn(
                (Compare(att_key, kv.mod_revision),),
                (Delete(att_key), Delete(_ipam_prefix(network) + kv.value)),
            )
            if result.succeeded:
                self._unpick(network, kv.value)
                return kv.value

    def rebind_address(
        self, network: str, address: str, old: str, new: str, host: str, mac: str | None = None
    ) -> bool:
        """Move the claim on ``address`` (and on ``mac``, if ``old`` holds it) from
        attachment ``old`` to ``new`` in one transaction: an address claimed before its
        owner had a name (Docker's IPAM asks before the endpoint exists) takes the
        endpoint's name when it comes.  False when ``old`` does not hold ``address`` (it
        was released, or never claimed); True when ``new`` holds it afterwards (a repeat
        is fine)."""
        _check_attachment(old)
        _check_attachment(new)
        ip_key, prefix = _ipam_prefix(network) + address, "attachments/"
        old_key, new_key = f"{prefix}{network}/{old}", f"{prefix}{network}/{new}"
        while True:
            held, moved = self.kv.get(ip_key), self.kv.get(new_key)
            if held is not None and held.value == new and moved is not None:
                return True
            if held is None or held.value != old or moved is not None:
                return False
            compares = [Compare(ip_key, held.mod_revision), Compare(new_key, 0)]
            ops: list = [Put(ip_key, new), Delete(old_key), Put(new_key, address)]
            if mac:
                claim = self.kv.get(_mac_key(network, mac))
                if claim is not None and claim.value == _mac_claim(old, host):
                    compares.append(Compare(claim.key, claim.mod_revision))
                    ops.append(Put(claim.key, _mac_claim(new, host)))
            if self.kv.txn(compares, ops).succeeded:
                return True

    def holder(self, network: str, address: str) -> str | None:
        """The attachment holding ``address`` in ``network``, None if it is free."""
        kv = self.kv.get(_ipam_prefix(network) + address)
        return kv.value if kv is not None else None

    def allocations(self, network: str) -> dict[str, str]:
        """Address to attachment, for every address in use in ``network``."""
        prefix = _ipam_prefix(network)
        return {kv.key[len(prefix) :]: kv.value for kv in self.kv.range(prefix)[0]}

    # -- endpoints ----------------------------------------------------------------------

    def put_endpoint(
        self,
        network: str,
        host: str,
        attachment: str,
        *,
        mac: str,
        ip: str,
        container_id: str,
        ifname: str,
        known: Network | None = None,
        claimed: int = 0,
        pod: str | None = None,
    ) -> Endpoint:
        """Publish (or update) an endpoint so every host can reach it, claiming its MAC in
        the same transaction: raises AddressInUseError, naming the holder, when another
        attachment of ``network`` has that MAC (on any host).

        ``claimed`` is the revision of the claim_address that claimed this MAC for a new
        endpoint: then one transaction, no read, publishes it (and if either key moved
        since, the general path below reads them)."""
        _check_name("host", host, 253)
        _check_attachment(attachment)
        self._require(network, known)
        try:
            ipaddress.IPv4Address(ip)
        except ValueError:
            raise StoreError(f"endpoint {attachment}: IP {ip!r} is not an IPv4 address") from None
        mac = mac.lower()
        ep_key = _endpoint_key(network, host, attachment)
        record = {"mac": mac, "ip": ip, "container_id": container_id, "ifname": ifname}
        if pod:
            record["pod"] = pod
        value = json.dumps(record)
        mine = _mac_claim(attachment, host)
        if claimed:
            fast = self.kv.txn(
                (Compare(ep_key, 0), Compare(_mac_key(network, mac), claimed)),
                (Put(ep_key, value),),
            )
            if fast.succeeded:
                return Endpoint(network, host, attachment, mac, ip, container_id, ifname, pod)
        while True:
            old = self.kv.get(ep_key)
            claim = self.kv.get(_mac_key(network, mac))
            if claim is not None and claim.value != mine:
                raise self._mac_in_use(network, mac, claim.value)
            compares = [
                Compare(ep_key, old.mod_revision if old else 0),
                Compare(_mac_key(network, mac), claim.mod_revision if claim else 0),
            ]
            ops: list = [Put(ep_key, value), Put(_mac_key(network, mac), mine)]
            old_mac = json.loads(old.value).get("mac") if old else None
            if old_mac and old_mac.lower() != mac:  # an update that changes the MAC
                old_claim = self.kv.get(_mac_key(network, old_mac))
                if old_claim is not None and old_claim.value == mine:
                    compares.append(Compare(old_claim.key, old_claim.mod_revision))
                    ops.append(Delete(old_claim.key))
            if self.kv.txn(compares, ops).succeeded:
                return Endpoint(network, host, attachment, mac, ip, container_id, ifname, pod)
            # Someone wrote one of the keys between the reads and the transaction: look again.

    def delete_endpoint(self, network: str, host: str, attachment: str) -> bool:
        """Unpublish an endpoint and release its MAC, in one transaction; False if it was
        not published (not an error)."""
        ep_key = _endpoint_key(network, host, attachment)
        while True:
            old = self.kv.get(ep_key)
            if old is None:
                return False
            compares = [Compare(ep_key, old.mod_revision)]
            ops: list = [Delete(ep_key)]
            mac = json.loads(old.value).get("mac")
            claim = self.kv.get(_mac_key(network, mac)) if isinstance(mac, str) else None
            if claim is not None and claim.value == _mac_claim(attachment, host):
                compares.append(Compare(claim.key, claim.mod_revision))
                ops.append(Delete(claim.key))
            if self.kv.txn(compares, ops).succeeded:
                return True

    def release_attachment(
        self,
        network: str,
        host: str,
        attachment: str,
        macs: Iterable[str] = (),
        derive_mac: Callable[[str], str] | None = None,
    ) -> str | None:
        """Everything ``attachment`` of ``host`` holds in ``network``, gone in one
        transaction: its endpoint record, its address and attachment index, and its claims
        on the record's MAC, on ``macs`` and on ``derive_mac`` of its address (an ADD cut
        short may hold a claim no record keeps).  Claims another attachment holds stay.
        Returns the address freed, None if there was none; parts already gone are fine (a
        repeated CNI DEL changes nothing)."""
        ep_key = _endpoint_key(network, host, attachment)
        att_key = _attachment_key(network, attachment)
        mine = _mac_claim(attachment, host)
        while True:
            ep, att = self.kv.get(ep_key), self.kv.get(att_key)
            candidates = {m.lower() for m in macs}
            compares: list[Compare] = []
            ops: list = []
            if ep is not None:
                compares.append(Compare(ep_key, ep.mod_revision))
                ops.append(Delete(ep_key))
                try:
                    record_mac = _record(ep).get("mac")
                except RecordError:  # a malformed record still goes
                    record_mac = None
                if isinstance(record_mac, str):
                    candidates.add(record_mac.lower())
            if att is not None:
                compares.append(Compare(att_key, att.mod_revision))
                ops += [Delete(att_key), Delete(_ipam_prefix(network) + att.value)]
                if derive_mac is not None:
                    candidates.add(derive_mac(att.value).lower())
            for mac in sorted(candidates):
                claim = self.kv.get(_mac_key(network, mac))
                if claim is not None and claim.value == mine:
                    compares.append(Compare(claim.key, claim.mod_revision))
                    ops.append(Delete(claim.key))
            if not ops:
                return None
            if self.kv.txn(compares, ops).succeeded:
                if att is None:
                    return None
                self._unpick(network, att.value)
                return att.value
            # Something moved between the reads and the transaction: look again.

    def claim_mac(self, network: str, mac: str, attachment: str, host: str) -> None:
        """Claim ``mac`` in ``network`` for ``attachment`` on ``host`` (compare-and-create;
        claiming it again is fine), before anything carries the MAC: a host that loses a
        race then never has a port with another's MAC.  Raises AddressInUseError naming
        the holder.  The endpoint record, written later, keeps the claim."""
        key, mine = _mac_key(network, mac), _mac_claim(attachment, host)
        while True:
            if self.kv.create(key, mine):
                return
            claim = self.kv.get(key)
            if claim is None:
                continue  # released in between: try again
            if claim.value == mine:
                return
            raise self._mac_in_use(network, mac, claim.value)

    def _mac_in_use(self, network: str, mac: str, claim: str) -> AddressInUseError:
        held = json.loads(claim)
        holder = self.describe_holder(network, held["attachment"], held["host"])
        return AddressInUseError(
            f"MAC {mac.lower()} in network {network} is already used by {holder}; pick "
            "another MAC or leave MAC= out",
            "MAC",
            holder,
        )

    def release_mac(self, network: str, mac: str, attachment: str, host: str) -> bool:
        """Release ``attachment``'s claim on ``mac``; False if it held none (not an error)."""
        claim = self.kv.get(_mac_key(network, mac))
        if claim is None or claim.value != _mac_claim(attachment, host):
            return False
        return self.kv.txn(
            (Compare(claim.key, claim.mod_revision),), (Delete(claim.key),)
        ).succeeded

    def mac_claims_of(self, host: str) -> list[tuple[str, str, str]]:
        """(network, mac, attachment) of every MAC ``host`` holds: what an agent that was
        away checks against its live attachments."""
        out = []
        for kv in self.kv.range("macs/")[0]:
            held = json.loads(kv.value)
            if held.get("host") == host:
                _, network, mac = kv.key.split("/", 2)
                out.append((network, mac, held["attachment"]))
        return out

    def mac_holder(self, network: str, mac: str) -> tuple[str, str] | None:
        """The (attachment, host) holding ``mac`` in ``network``, or None: the check an ADD
        makes before any side effect; the claim itself is put_endpoint's."""
        claim = self.kv.get(_mac_key(network, mac))
        if claim is None:
            return None
        held = json.loads(claim.value)
        return held["attachment"], held["host"]

    def describe_holder(self, network: str, attachment: str, host: str | None = None) -> str:
        """``attachment ATT on host H``, for a refusal; without ``host`` it is looked up
        among the network's endpoints (only on this error path)."""
        if host is None:
            host = next(
                (e.host for e in self.list_endpoints(network) if e.attachment == attachment), None
            )
        where = f"on host {host}" if host else "(being attached, not published yet)"
        return f"attachment {attachment} {where}"

    def list_endpoints(self, network: str | None = None) -> list[Endpoint]:
        prefix = f"endpoints/{network}/" if network is not None else "endpoints/"
        out = []
        for kv in self.kv.range(prefix)[0]:
            _, net, host, attachment = kv.key.split("/", 3)
            d = json.loads(kv.value)
            out.append(
                Endpoint(
                    net,
                    host,
                    attachment,
                    d["mac"],
                    d["ip"],
                    d["container_id"],
                    d["ifname"],
                    pod_name(d.get("pod")),
                )
            )
        return out

    # -- changes ----------------------------------------------------------------------

    def watch_changes(
        self, prefix: str, stop: threading.Event, revision: int | None = None
    ) -> Iterator[list[Event]]:
        """Batches of changes under ``prefix`` (one of WATCHED_PREFIXES: hosts/, networks/,
        endpoints/ — what the pipeline is built from, never the IPAM churn) after
        ``revision`` (default: now), until ``stop``.  List with ``kv.range(prefix)`` and
        pass the revision it returns, and no change between the read and the watch is
        missed.  Raises CompactedError when that history is gone (list again) and
        KvError when the store cannot be reached."""
        if prefix not in WATCHED_PREFIXES:
            raise ValueError(f"{prefix!r} is not one of {WATCHED_PREFIXES}")
        start = self.kv.revision() if revision is None else revision
        yield from self.kv.watch(prefix, start, stop)


# -- records, decoded one at a time ---------------------------------------------------------

_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


class RecordError(StoreError):
    """A record in the store that cannot be used (another writer, an older version, etcdctl):
    the reader logs it and skips it, and serves the rest."""


def decode_host(kv: KeyValue) -> Host:
    """A ``hosts/NAME`` record; RecordError names what is wrong with it."""
    name = kv.key[len("hosts/") :]
    d = _record(kv)
    tunnel_ip = d.get("tunnel_ip")
    try:
        ipaddress.IPv4Address(tunnel_ip)
    except ValueError:
        raise RecordError(f"{kv.key}: tunnel_ip {tunnel_ip!r} is not an IPv4 address") from None
    if not _NAME_RE.match(name):
        raise RecordError(f"{kv.key}: host name {name!r} is invalid")
    return Host(name, tunnel_ip, kv.lease, _host_gateways(d.get("gateways")))


def _host_gateways(value: object) -> tuple[HostGateway, ...]:
    """A host record's optional ``gateways``, decoded tolerantly: an entry that is not
    {"ip": IPv4, "mac": unicast MAC} under a network name is left out (that gateway gets no
    flows elsewhere), and the host itself, its tunnel and its pods, stay usable."""
    if not isinstance(value, dict):
        return ()
    out = []
    for network, entry in sorted(value.items(), key=lambda kv: str(kv[0])):
        if not isinstance(network, str) or not _NAME_RE.match(network):
            continue
        if not isinstance(entry, dict):
            continue
        ip, mac = entry.get("ip"), entry.get("mac")
        if not isinstance(mac, str) or not _is_unicast_mac(mac.lower()) or not isinstance(ip, str):
            continue
        try:
            ipaddress.IPv4Address(ip)
        except ValueError:
            continue
        out.append(HostGateway(sys.intern(network), ip, mac.lower()))
    return tuple(out)


def _is_unicast_mac(mac: str) -> bool:
    return bool(_MAC_RE.match(mac)) and not int(mac[:2], 16) & 1 and mac != "00:00:00:00:00:00"


def decode_network(kv: KeyValue) -> Network:
    """A ``networks/NAME`` record; RecordError names what is wrong with it."""
    d = _record(kv)
    try:
        return _network_from(kv.key[len("networks/") :], d)
    except KeyError as exc:
        raise RecordError(f"{kv.key}: field {exc} is missing") from None
    except StoreError as exc:
        raise RecordError(f"{kv.key}: {exc}") from None


def decode_endpoint(kv: KeyValue) -> Endpoint:
    """An ``endpoints/NETWORK/HOST/ATTACHMENT`` record, MAC lower-cased; RecordError names
    what is wrong with it."""
    parts = kv.key.split("/", 3)
    if len(parts) != 4 or not all(parts[1:]):
        raise RecordError(f"{kv.key}: not endpoints/NETWORK/HOST/ATTACHMENT")
    _, net, host, attachment = parts
    d = _record(kv)
    try:
        mac, ip = str(d["mac"]).lower(), d["ip"]
        container_id, ifname = d["container_id"], d["ifname"]
    except KeyError as exc:
        raise RecordError(f"{kv.key}: field {exc} is missing") from None
    if not _is_unicast_mac(mac):
        raise RecordError(f"{kv.key}: mac {d['mac']!r} is not a unicast MAC address")
    try:
        ipaddress.IPv4Address(ip)
    except ValueError:
        raise RecordError(f"{kv.key}: ip {ip!r} is not an IPv4 address") from None
    # A watcher holds every record: one copy of the names thousands of records repeat.
    if isinstance(ifname, str):
        ifname = sys.intern(ifname)
    return Endpoint(
        sys.intern(net),
        sys.intern(host),
        attachment,
        mac,
        ip,
        container_id,
        ifname,
        pod_name(d.get("pod")),
    )


def pod_name(value: object) -> str | None:
    """An endpoint record's optional ``pod`` ("NAMESPACE/NAME"), decoded tolerantly: it is
    only shown to operators, so a value that is not such a string (another writer, a later
    version) reads as no pod rather than making the endpoint unusable."""
    if not isinstance(value, str) or len(value) > 512:
        return None
    namespace, sep, name = value.partition("/")
    return value if sep and namespace and name and "/" not in name else None


def _record(kv: KeyValue) -> dict:
    try:
        d = json.loads(kv.value)
    except ValueError:
        raise RecordError(f"{kv.key}: value is not JSON: {kv.value[:60]!r}") from None
    if not isinstance(d, dict):
        raise RecordError(f"{kv.key}: value is not a JSON object: {kv.value[:60]!r}")
    return d
