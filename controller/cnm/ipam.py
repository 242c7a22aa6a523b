"""libnetwork's IpamDriver, served from the same per-host address blocks as CNI.

A pool is an ovs-overlay network: RequestPool finds it by ``--ipam-opt network=NAME``, or
failing that as the one network whose CIDR equals the requested subnet, never one the
driver made for a Docker network (``docker-*``: that Docker network's own); a subnet no
such network has is a pool ``new:CIDR``, the network CreateNetwork makes for it on this
host (controller/cnm/network.py, which allows one per subnet per host: libnetwork names
no Docker network to the IPAM driver, so ``new:CIDR`` must say which network it is).
Addresses are claimed with cluster.claim_address from this host's blocks, as a pod's
are, so a container and a pod never share one; the gateway is the network's anycast
gateway, answered, never claimed.  libnetwork asks for an address before the endpoint
exists, so a claim starts unbound (controller/cnm/common.py, its id) and CreateEndpoint
binds it.
"""

from __future__ import annotations

import ipaddress
import time

from controller.cnm.common import (
    MADE_NETWORK_PREFIX,
    CnmError,
    Context,
    options,
    text,
    unbound_attachment,
    unbound_owner,
)
from controller.endpoints import mac_for
from controller.hoststate import gateway_ip
from store import docker_records as records
from store.cluster import AddressExhaustedError, AddressInUseError, Network, StoreError

ADDRESS_SPACE = "ovs-overlay"
NEW_POOL_PREFIX = "new:"
GATEWAY_REQUEST = "com.docker.network.gateway"  # Options["RequestAddressType"] of a gateway
FIX = (
    "docker network create -d ovs-overlay --ipam-driver ovs-overlay --subnet CIDR "
    "--ipam-opt network=NAME --opt network=NAME DOCKER_NAME"
)


def get_capabilities(ctx: Context, body: dict) -> dict:
    """The MAC comes from the address (derived as a pod's is), so Docker need not send it."""
    return {"RequiresMACAddress": False, "RequiresRequestReplay": False}


def get_default_address_spaces(ctx: Context, body: dict) -> dict:
    return {"LocalDefaultAddressSpace": ADDRESS_SPACE, "GlobalDefaultAddressSpace": ADDRESS_SPACE}


def request_pool(ctx: Context, body: dict) -> dict:
    if body.get("V6"):
        raise CnmError(
            "ovs-overlay networks are IPv4 only; create the Docker network without --ipv6"
        )
    if text(body, "SubPool"):
        raise CnmError(
            "--ip-range is not supported: addresses come from each host's blocks of the "
            "whole network; leave --ip-range out"
        )
    wanted = options(body).get("network")
    pool = text(body, "Pool")
    if wanted is not None and not isinstance(wanted, str):
        raise CnmError("--ipam-opt network must name an ovs-overlay network")
    net = resolve(ctx, wanted, pool, "--ipam-opt")
    if not pool:
        # libnetwork (requestPoolHelper) checks a pool it did not ask for against the
        # host's routes, and on an overlap releases it and asks again, forever: every
        # host has a route into the default network (its gateway port), and this driver
        # has only the one pool to give.  Asking with --subnet skips that check.
        raise CnmError(
            f"give the subnet: add --subnet {net.cidr} (ovs-overlay network {net.name}'s "
            "CIDR); without it dockerd re-asks forever for a pool that overlaps this "
            "host's route into the network"
        )
    if net is None:
        return {"PoolID": NEW_POOL_PREFIX + _cidr(pool), "Pool": _cidr(pool), "Data": {}}
    return {"PoolID": net.name, "Pool": net.cidr, "Data": {}}


def resolve(ctx: Context, name: str | None, pool: str, option: str) -> Network | None:
    """The ovs-overlay network a Docker network is: ``name`` (from ``option``), else the
    one network whose CIDR is ``pool`` that the driver did not make for another Docker
    network; None when ``pool`` is no such network's (a new one).
    A name that is not a network, a pool that is not the named network's CIDR, a pool
    several networks have, or neither name nor pool is refused, naming the fix."""
    if name:
        net = ctx.cluster.get_network(name)
        if net is None:
            raise CnmError(
                f"{option} network={name}: no such ovs-overlay network; create it with "
                f"'ovs-overlayctl network create {name} --cidr CIDR --vni VNI' or name "
                "another ('ovs-overlayctl network list')",
                reason="unknown_network",
            )
        if pool and _cidr(pool) != net.cidr:
            raise CnmError(
                f"subnet {pool} is not the CIDR of ovs-overlay network {name} ({net.cidr}); "
                f"use --subnet {net.cidr} or leave --subnet out"
            )
        return net
    if not pool:
        raise CnmError(f"name the ovs-overlay network: {FIX} (or --subnet CIDR for a new one)")
    cidr = _cidr(pool)
    same = sorted(
        n.name
        for n in ctx.cluster.list_networks()
        if n.cidr == cidr and not n.name.startswith(MADE_NETWORK_PREFIX)
    )
    if len(same) > 1:
        raise CnmError(
            f"subnet {cidr} is the CIDR of several ovs-overlay networks ({', '.join(same)}); "
            f"name one with {option} network=NAME"
        )
    return ctx.cluster.get_network(same[0]) if same else None


def _cidr(pool: str) -> str:
    try:
        net = ipaddress.IPv4Network(pool)
    except ValueError:
        raise CnmError(f"subnet {pool!r} is not an IPv4 network like 100.65.0.0/16") from None
    try:  # the checks a network record gets (inside 100.64.0.0/10, /30 or larger)
        Network("pool", 1, str(net))
    except StoreError as exc:
        raise CnmError(f"subnet {pool}: {str(exc).removeprefix('network pool: ')}") from None
    return str(net)


def release_pool(ctx: Context, body: dict) -> dict:
    """A pool holds nothing of its own (its addresses are released one by one)."""
    text(body, "PoolID")
    return {}


def pool_network(ctx: Context, pool_id: str) -> Network:
    """The network of a PoolID RequestPool answered; a ``new:CIDR`` pool is the network
    CreateNetwork made for it on this host (one per subnet and host, so never ambiguous)."""
    if not pool_id:
        raise CnmError("PoolID is empty; send the PoolID RequestPool answered")
    if not pool_id.startswith(NEW_POOL_PREFIX):
        net = ctx.cluster.get_network(pool_id)
        if net is None:
            raise CnmError(
                f"PoolID {pool_id}: ovs-overlay network {pool_id} does not exist (deleted "
                "since?); recreate the Docker network",
                reason="unknown_network",
            )
        return net
    cidr = pool_id[len(NEW_POOL_PREFIX) :]
    made = [
        n
        for n in (
            ctx.cluster.get_network(d.network)
            for d in records.list_networks(ctx.cluster.kv, ctx.host)
            if d.created and not d.deleted
        )
        if n is not None and n.cidr == cidr
    ]
    if len(made) != 1:
        raise CnmError(
            f"PoolID {pool_id}: {'no' if not made else 'more than one'} network was made for "
            f"subnet {cidr} on this host; create the Docker network with {FIX}",
            reason="unknown_network",
        )
    return made[0]


def request_address(ctx: Context, body: dict, now: float | None = None) -> dict:
    pool_id, wanted = text(body, "PoolID"), text(body, "Address")
    opts = options(body)
    if opts.get("RequestAddressType") == GATEWAY_REQUEST:
        cidr = (
            pool_id[len(NEW_POOL_PREFIX) :]
            if pool_id.startswith(NEW_POOL_PREFIX)
            else pool_network(ctx, pool_id).cidr
        )
        gateway, prefixlen = gateway_ip(cidr), ipaddress.IPv4Network(cidr).prefixlen
        if wanted and wanted != gateway:
            raise CnmError(
                f"gateway {wanted}: ovs-overlay networks have their gateway at {gateway}, "
                "the subnet's first address, on every host; use --gateway "
                f"{gateway} or leave --gateway out"
            )
        return {"Address": f"{gateway}/{prefixlen}", "Data": {}}
    net = pool_network(ctx, pool_id)
    if wanted:
        try:
            ipaddress.IPv4Address(wanted)
        except ValueError:
            raise CnmError(f"Address {wanted!r} is not an IPv4 address") from None
    attachment = unbound_attachment(ctx.host, time.time() if now is None else now)
    try:
        claim = ctx.cluster.claim_address(
            net.name,
            ctx.host,
            attachment,
            ip=wanted or None,
            derive_mac=mac_for,
            known=net,
        )
    except AddressExhaustedError as exc:
        raise CnmError(str(exc), reason="addresses_exhausted") from None
    except AddressInUseError as exc:
        raise CnmError(f"--ip {wanted}: {exc}", reason="address_in_use") from None
    except StoreError as exc:
        raise CnmError(f"--ip {wanted}: {exc}") from None
    return {"Address": f"{claim.ip}/{ipaddress.IPv4Network(net.cidr).prefixlen}", "Data": {}}


def release_address(ctx: Context, body: dict) -> dict:
    """Release this host's unbound claim on the address.  One an endpoint holds stays: it is
    DeleteEndpoint's to unbind (and a claim made for another endpoint since must never
    go by a late release of the same address).  The gateway is no claim."""
    pool_id, address = text(body, "PoolID"), text(body, "Address")
    try:
        ip = str(ipaddress.IPv4Address(address.split("/")[0]))
    except ValueError:
        raise CnmError(f"Address {address!r} is not an IPv4 address") from None
    try:
        net = pool_network(ctx, pool_id)
    except CnmError:
        return {}  # the network is gone, and its claims with it
    holder = ctx.cluster.holder(net.name, ip)
    if holder is not None and claimed_here(ctx, holder):
        ctx.cluster.release_attachment(net.name, ctx.host, holder, derive_mac=mac_for)
    return {}


def claimed_here(ctx: Context, holder: str) -> bool:
    """Whether ``holder`` is an unbound claim this host's RequestAddress (or
    DeleteEndpoint) made: the only claims this host's requests may bind or release (another
    host's is that host's dockerd's, in flight)."""
    owner = unbound_owner(holder)
    return owner is not None and owner[0] == ctx.host
