"""libnetwork's NetworkDriver: Docker networks onto ovs-overlay networks, Docker endpoints
onto ports of br-int tagged by network exactly as a CNI pod's (EndpointManager.plug).

Scope: GetCapabilities declares Scope "local" and ConnectivityScope "global".  Networks
ARE cluster-wide (a Docker network on two hosts mapped to one ovs-overlay network is one
L2 segment), but a "global" Scope makes libnetwork keep the network in its global
datastore, which dockerd 20.10 has only under Swarm: without it ``docker network create``
of a global-scope driver fails.  So each host's dockerd creates its own Docker network
(its own id) and names the shared ovs-overlay network with ``--opt network=NAME``; the
ConnectivityScope says its endpoints reach beyond the host.

Lifecycle, as libnetwork calls it: CreateNetwork (after IPAM's RequestPool and gateway
RequestAddress); per container: RequestAddress, CreateEndpoint (binds the claim), Join
(veth, port, record, flows), then Leave, DeleteEndpoint (unbinds the claim),
ReleaseAddress (releases it).  Every step validates first and undoes its own partial work
on failure; a repeated teardown answers {}.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import replace

from controller import rtnl, veth
from controller.cnm import ipam
from controller.cnm.common import (
    IFNAME,
    MADE_NETWORK_PREFIX,
    CnmError,
    Context,
    docker_id,
    endpoint_attachment,
    endpoint_container_id,
    interface_address,
    mac_address,
    options,
    text,
    unbound_attachment,
)
from controller.endpoints import HOST_PORT_PREFIX, host_port_name, mac_for
from controller.hoststate import gateway_ip
from ovsdb.endpoint import EndpointPort
from store import docker_records as records
from store.cluster import AddressInUseError, Network, StoreError, is_gateway_attachment
from store.docker_records import DockerEndpoint, DockerNetwork

LOG = logging.getLogger(__name__)

GENERIC = "com.docker.network.generic"  # where `docker network create --opt K=V` arrives
# VNIs of networks made for a Docker network (no --opt network): the lowest free from here,
# above the range operators pick from by hand.
DOCKER_VNI_BASE = 1 << 23
PEER_PREFIX = "ovd"  # the container end, until libnetwork moves and renames it


def get_capabilities(ctx: Context, body: dict) -> dict:
    return {"Scope": "local", "ConnectivityScope": "global"}


def create_network(ctx: Context, body: dict) -> dict:
    nid = docker_id(body, "NetworkID")
    opts = options(body)
    generic = opts.get(GENERIC) or {}
    if not isinstance(generic, dict):
        raise CnmError(f"Options[{GENERIC!r}] must be a JSON object of driver options")
    name = generic.get("network")
    if name is not None and (not isinstance(name, str) or not name):
        raise CnmError("--opt network must name an ovs-overlay network")
    if opts.get("com.docker.network.enable_ipv6") is True or body.get("IPv6Data"):
        raise CnmError(
            "ovs-overlay networks are IPv4 only; create the Docker network without --ipv6"
        )
    v4 = body.get("IPv4Data")
    if not isinstance(v4, list) or len(v4) != 1 or not isinstance(v4[0], dict):
        raise CnmError("IPv4Data must hold exactly one pool; give the Docker network one --subnet")
    space, pool, gateway = (text(v4[0], f) for f in ("AddressSpace", "Pool", "Gateway"))
    if space != ipam.ADDRESS_SPACE:
        where = ""
        if name and (named := ctx.cluster.get_network(name)) is not None:
            where = f" --subnet {named.cidr}"
        raise CnmError(
            f"the pool {pool or '(none)'} comes from IPAM address space {space!r}, not the "
            "ovs-overlay IPAM driver's, so its addresses could collide with other hosts' "
            f"pods; create the Docker network with --ipam-driver ovs-overlay{where}"
            + (f" --ipam-opt network={name}" if name else ""),
            reason="bad_config",
        )
    if records.get_network(ctx.cluster.kv, ctx.host, nid) is not None:
        return {}  # created already (a repeated request)
    net = ipam.resolve(ctx, name, pool, "--opt")
    if net is not None and not name:
        # RequestPool found this network by the subnet too, so the pool is it: sharing
        # it must be asked for by name, on both sides.
        raise CnmError(
            f"subnet {net.cidr} is ovs-overlay network {net.name}'s: join it with --opt "
            f"network={net.name} --ipam-opt network={net.name}, or give another --subnet "
            "for a network of this Docker network's own",
            reason="bad_config",
        )
    cidr = net.cidr if net is not None else str(ipaddress.IPv4Network(pool))
    if gateway and gateway.split("/")[0] != gateway_ip(cidr):
        raise CnmError(
            f"gateway {gateway} is not the network's ({gateway_ip(cidr)}); leave --gateway "
            "out or use that address"
        )
    if net is not None:
        records.put_network(ctx.cluster.kv, ctx.host, DockerNetwork(nid, net.name))
    else:
        with ctx.endpoints.locks.hold(f"docker-subnet:{cidr}"):  # one check-and-make at once
            net = _create_own(ctx, nid, cidr)
    LOG.info(
        "Docker network %s is ovs-overlay network %s%s",
        nid[:12],
        net.name,
        "" if name else " (made for it)",
    )
    return {}


def _create_own(ctx: Context, nid: str, cidr: str) -> Network:
    """The network of Docker network ``nid``'s own, made and recorded.  A host holds one
    per subnet: libnetwork tells the IPAM driver no Docker network id (RequestPool and
    RequestAddress carry the subnet and the PoolID only, and a restarted dockerd asks for
    its pools again with nothing else), so the pool ``new:CIDR`` is this host's one live
    network made for CIDR."""
    same = [
        d
        for d in records.list_networks(ctx.cluster.kv, ctx.host)
        if d.created and not d.deleted and _cidr_of(ctx, d.network) == cidr
    ]
    if same:
        raise CnmError(
            f"Docker network {same[0].docker_id[:12]} on this host has a network of its own "
            f"on {cidr} ({same[0].network}), and the IPAM driver cannot tell two apart; give "
            "another --subnet, or create an ovs-overlay network ('ovs-overlayctl network "
            f"create NAME --cidr {cidr} --vni VNI') and name it with --opt network=NAME "
            "--ipam-opt network=NAME",
            reason="bad_config",
        )
    net = _create(ctx, nid, cidr)
    try:
        records.put_network(ctx.cluster.kv, ctx.host, DockerNetwork(nid, net.name, True))
    except Exception:
        ctx.cluster.delete_network(net.name)
        raise
    return net


def _cidr_of(ctx: Context, name: str) -> str | None:
    net = ctx.cluster.get_network(name)
    return None if net is None else net.cidr


def _create(ctx: Context, nid: str, cidr: str) -> Network:
    """A new ovs-overlay network for Docker network ``nid``, with the lowest free VNI from
    DOCKER_VNI_BASE.  Two hosts may pick the same VNI at once: the store's claim refuses
    the second, which takes the next (bounded: a conflict each time means a store fault)."""
    name = MADE_NETWORK_PREFIX + nid[:12]
    for _ in range(16):
        used = {kv.key.rpartition("/")[2] for kv in ctx.cluster.kv.range("vnis/")[0]}
        vni = next(v for v in range(DOCKER_VNI_BASE, 1 << 24) if str(v) not in used)
        try:
            return ctx.cluster.create_network(name, vni, cidr)
        except StoreError as exc:
            if ctx.cluster.get_network(name) is not None:
                raise CnmError(f"cannot create network {name}: {exc}") from None
    raise CnmError(f"no free VNI for network {name}: every try collided; try again")


def delete_network(ctx: Context, body: dict) -> dict:
    """Drop the mapping, and the network this Docker network made, first (its record
    says which, so it goes only once the network has).  A made network something still
    holds an address in stays, its record marked deleted: the agent's Docker cleanup
    (cleanup.collect) tries again until it can go."""
    nid = docker_id(body, "NetworkID")
    found = records.get_network(ctx.cluster.kv, ctx.host, nid)
    if found is None or found.deleted:
        return {}
    if found.created and not delete_made_network(ctx, found):
        records.put_network(ctx.cluster.kv, ctx.host, replace(found, deleted=True))
        return {}
    records.delete_network(ctx.cluster.kv, ctx.host, nid)
    return {}


def delete_made_network(ctx: Context, found: DockerNetwork) -> bool:
    """Delete the network Docker network ``found`` made, if nothing but hosts' gateways
    holds an address in it; True when it is gone."""
    held = [
        a for a in ctx.cluster.allocations(found.network).values() if not is_gateway_attachment(a)
    ]
    if held:
        LOG.warning(
            "kept network %s made for Docker network %s: %d address(es) still held, e.g. by "
            "%s; deleted once they are released",
            found.network,
            found.docker_id[:12],
            len(held),
            held[0],
        )
        return False
    try:
        ctx.cluster.delete_network(found.network)
    except StoreError as exc:
        if ctx.cluster.get_network(found.network) is not None:
            LOG.warning(
                "kept network %s made for Docker network %s: %s; tried again later",
                found.network,
                found.docker_id[:12],
                exc,
            )
            return False
    return True


def _network_of(ctx: Context, nid: str) -> tuple[DockerNetwork, Network]:
    found = records.get_network(ctx.cluster.kv, ctx.host, nid)
    if found is None or found.deleted:
        raise CnmError(
            f"Docker network {nid[:12]} is not an ovs-overlay network on this host (no "
            "CreateNetwork reached this agent); recreate it with docker network create "
            "-d ovs-overlay",
            reason="unknown_network",
        )
    net = ctx.cluster.get_network(found.network)
    if net is None:
        raise CnmError(
            f"ovs-overlay network {found.network} of Docker network {nid[:12]} was deleted; "
            "remove the Docker network and create it again",
            reason="unknown_network",
        )
    return found, net


def create_endpoint(ctx: Context, body: dict, now: float | None = None) -> dict:
    nid, eid = docker_id(body, "NetworkID"), docker_id(body, "EndpointID")
    iface = body.get("Interface") or {}
    if not isinstance(iface, dict):
        raise CnmError("Interface must be a JSON object")
    address = text(iface, "Address")
    if not address:
        raise CnmError(
            "Interface.Address is empty: the address must come from the ovs-overlay IPAM "
            "driver; create the Docker network with --ipam-driver ovs-overlay"
        )
    if text(iface, "AddressIPv6"):
        raise CnmError("Interface.AddressIPv6: ovs-overlay networks are IPv4 only")
    addr = interface_address(address, "Interface.Address")
    mac = text(iface, "MacAddress")
    mac = mac_address(mac, "Interface.MacAddress") if mac else None
    _, net = _network_of(ctx, nid)
    ip = str(addr.ip)
    if addr.network != ipaddress.IPv4Network(net.cidr):
        raise CnmError(
            f"Interface.Address {address} is not in network {net.name} ({net.cidr}); create "
            "the Docker network with --ipam-driver ovs-overlay"
        )
    attachment = endpoint_attachment(eid)
    with ctx.endpoints.locks.hold(attachment):
        known = records.get_endpoint(ctx.cluster.kv, ctx.host, eid)
        if known is not None:
            if (known.network, known.ip) != (net.name, ip):
                raise CnmError(
                    f"endpoint {eid[:12]} exists already with {known.ip} in {known.network}; "
                    "delete it first"
                )
            return _created(known.mac, mac)
        holder = ctx.cluster.holder(net.name, ip)
        if holder != attachment and (holder is None or not ipam.claimed_here(ctx, holder)):
            raise CnmError(
                f"Interface.Address {ip} in network {net.name} is "
                + ("not claimed" if holder is None else f"held by {holder}")
                + ": it must come from this agent's RequestAddress; create the Docker "
                "network with --ipam-driver ovs-overlay",
                reason="address_in_use",
            )
        derived = mac_for(ip)
        rebound = holder != attachment and ctx.cluster.rebind_address(
            net.name, ip, holder, attachment, ctx.host, derived
        )
        if holder != attachment and not rebound:
            raise CnmError(
                f"the claim on {ip} in {net.name} was released meanwhile; try again",
                reason="try_again",
            )
        undo: list[Callable[[], object]] = []
        if holder != attachment:
            undo.append(
                lambda: ctx.cluster.rebind_address(
                    net.name, ip, attachment, holder, ctx.host, derived
                )
            )
        try:
            if mac and mac != derived:
                try:
                    ctx.cluster.claim_mac(net.name, mac, attachment, ctx.host)
                except AddressInUseError as exc:
                    raise CnmError(f"--mac-address {mac}: {exc}", reason="address_in_use") from None
                undo.append(lambda: ctx.cluster.release_mac(net.name, mac, attachment, ctx.host))
                ctx.cluster.release_mac(net.name, derived, attachment, ctx.host)
            ep = DockerEndpoint(
                eid,
                nid,
                net.name,
                attachment,
                ip,
                mac or derived,
                created=time.time() if now is None else now,
            )
            records.put_endpoint(ctx.cluster.kv, ctx.host, ep)
        except Exception:
            for step in reversed(undo):
                try:
                    step()
                except Exception:
                    LOG.exception("rolling back CreateEndpoint %s failed", eid[:12])
            raise
    return _created(ep.mac, mac)


def _created(mac: str, requested: str | None) -> dict:
    """libnetwork refuses a MAC answered for an endpoint that has one: only when it had none."""
    return {} if requested else {"Interface": {"MacAddress": mac}}


def _endpoint_id(body: dict) -> str:
    docker_id(body, "NetworkID")
    return docker_id(body, "EndpointID")


def _endpoint(ctx: Context, eid: str) -> DockerEndpoint | None:
    """The endpoint's record: read under its attachment's lock by every handler that
    changes it, so none acts on a record another request deleted meanwhile (a Leave
    writing back one DeleteEndpoint removed, a Join plugging one that is gone)."""
    return records.get_endpoint(ctx.cluster.kv, ctx.host, eid)


def port_names(ep: DockerEndpoint) -> tuple[str, str]:
    """The host end (the port on br-int) and the container end of the endpoint's veth."""
    port = host_port_name(endpoint_container_id(ep.docker_id), IFNAME)
    return port, PEER_PREFIX + port[len(HOST_PORT_PREFIX) :]


def join(ctx: Context, body: dict) -> dict:
    eid = _endpoint_id(body)
    sandbox = text(body, "SandboxKey")
    options(body)
    manager = ctx.endpoints
    with manager.locks.hold(endpoint_attachment(eid)):
        ep = _endpoint(ctx, eid)
        if ep is None:
            raise CnmError(
                f"endpoint {eid[:12]} does not exist on this host; CreateEndpoint first (or "
                "recreate the container)"
            )
        _, net = _network_of(ctx, ep.docker_network)
        if ctx.cluster.holder(net.name, ep.ip) != ep.attachment:
            # Released behind its back (an operator's release, a network deleted and
            # made again): publishing it would hand out an address nobody holds.
            raise CnmError(
                f"endpoint {ep.docker_id[:12]} no longer holds its address {ep.ip} in "
                f"{net.name}; remove the container and run it again",
                reason="address_in_use",
            )
        port, peer = port_names(ep)
        gateway = manager.gateway_for(net)
        answer = {"InterfaceName": {"SrcName": peer, "DstPrefix": IFNAME}, "StaticRoutes": []}
        answer["DisableGatewayService"] = True  # the overlay's gateway: no docker_gwbridge
        if gateway:
            answer["Gateway"] = gateway
        if ep.joined and manager.ovsdb.interface(manager.bridge, port):
            return answer  # joined already (a repeated request)
        with rtnl.Rtnl() as links:
            stale = links.link_index(port) is not None
        if stale or manager.ovsdb.interface(manager.bridge, port):
            manager.unplug(port)  # a Join cut short before (agent killed): start afresh
        undo: list = []
        try:
            undo.append(("delete veth", lambda: veth.delete(port)))
            veth.create_pair(port, peer=peer, peer_mac=ep.mac, mtu=manager.mtu_for(net))
            manager.plug(
                net,
                EndpointPort(
                    port,
                    net.name,
                    net.vni,
                    endpoint_container_id(ep.docker_id),
                    IFNAME,
                    ep.mac,
                    ep.ip,
                ),
                undo,
            )
            manager.publish()
            records.put_endpoint(
                ctx.cluster.kv, ctx.host, replace(ep, joined=True, sandbox=sandbox or None)
            )
        except Exception:
            _unplug_failed_join(ep, undo)
            raise
    LOG.info(
        "Docker endpoint %s joined %s as %s on port %s", ep.docker_id[:12], net.name, ep.ip, port
    )
    return answer


def _unplug_failed_join(ep: DockerEndpoint, undo: list) -> None:
    """Undo a failed Join's steps (veth, port, published record), in reverse, logging
    what fails.  Unlike a CNI ADD's rollback, nothing is deferred to the store cleanup
    (EndpointManager.roll_back), which would release the whole attachment: the endpoint
    keeps its address until DeleteEndpoint and ReleaseAddress, whoever failed.  A record
    left published because the store was away goes with the endpoint's Leave,
    DeleteEndpoint or the Docker cleanup."""
    for what, step in reversed(undo):
        try:
            step()
        except Exception:
            LOG.exception("undoing %s of Docker endpoint %s failed", what, ep.docker_id[:12])


def leave(ctx: Context, body: dict) -> dict:
    """Remove the port, the veth and the endpoint's record; the address stays claimed
    (DeleteEndpoint's)."""
    eid = _endpoint_id(body)
    with ctx.endpoints.locks.hold(endpoint_attachment(eid)):
        ep = _endpoint(ctx, eid)
        if ep is not None:
            _unjoin(ctx, ep)
    return {}


def _unjoin(ctx: Context, ep: DockerEndpoint) -> None:
    """The caller holds the attachment's lock and read ``ep`` under it."""
    manager = ctx.endpoints
    port, _ = port_names(ep)
    had_port = manager.ovsdb.interface(manager.bridge, port) is not None
    manager.unplug(port)
    ctx.cluster.delete_endpoint(ep.network, ctx.host, ep.attachment)
    if ep.joined and records.get_endpoint(ctx.cluster.kv, ctx.host, ep.docker_id) is not None:
        # Only a record that still exists: writing one DeleteEndpoint removed would bring
        # back an endpoint nobody deletes again.
        records.put_endpoint(ctx.cluster.kv, ctx.host, replace(ep, joined=False, sandbox=None))
    if had_port:
        manager.publish()


def delete_endpoint(ctx: Context, body: dict, now: float | None = None) -> dict:
    """Leave if still joined, then hand the address back to an unbound claim for
    ReleaseAddress (which libnetwork sends next); the endpoint's record goes."""
    eid = _endpoint_id(body)
    with ctx.endpoints.locks.hold(endpoint_attachment(eid)):
        ep = _endpoint(ctx, eid)
        if ep is not None:
            remove(
                ctx, ep, unbind_to=unbound_attachment(ctx.host, time.time() if now is None else now)
            )
    return {}


def remove(ctx: Context, ep: DockerEndpoint, unbind_to: str | None = None) -> None:
    """Everything of endpoint ``ep`` goes: port, veth, records, its MAC claims, and its
    address (or, with ``unbind_to``, the address moves to that unbound claim).  Each part
    already gone is fine.  The caller holds the attachment's lock."""
    _unjoin(ctx, replace(ep, joined=True))
    derived = mac_for(ep.ip)
    if ep.mac != derived:
        ctx.cluster.release_mac(ep.network, ep.mac, ep.attachment, ctx.host)
    if unbind_to is None or not ctx.cluster.rebind_address(
        ep.network, ep.ip, ep.attachment, unbind_to, ctx.host, derived
    ):
        ctx.cluster.release_attachment(
            ep.network, ctx.host, ep.attachment, [ep.mac], derive_mac=mac_for
        )
    records.delete_endpoint(ctx.cluster.kv, ctx.host, ep.docker_id)


def endpoint_oper_info(ctx: Context, body: dict) -> dict:
    eid = _endpoint_id(body)
    ep = _endpoint(ctx, eid)
    if ep is None:
        raise CnmError(f"endpoint {eid[:12]} does not exist on this host")
    port, _ = port_names(ep)
    value = {"network": ep.network, "ip": ep.ip, "mac": ep.mac, "port": port}
    return {"Value": {f"ovs-overlay.{k}": v for k, v in value.items()}}


def nothing(ctx: Context, body: dict) -> dict:
    """DiscoverNew/DiscoverDelete (peers come from the cluster state, not libnetwork) and
    Program/RevokeExternalConnectivity (egress is the overlay's own, as for pods)."""
    return {}
