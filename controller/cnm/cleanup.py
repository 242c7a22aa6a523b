"""What a dockerd that died mid-run leaves, found and removed (no leaks).

libnetwork cleans its own endpoints when dockerd starts again (Leave, DeleteEndpoint,
ReleaseAddress for the sandboxes it finds stale), but a dockerd killed between two calls
leaves what only the agent can see:

- a joined endpoint whose host veth is gone: its sandbox (the container's netns) was
  destroyed and took the container end, so the pair went.  The host end is in the
  agent's own namespace, so this needs no view of dockerd's mount namespace (its
  SandboxKey paths may be private to it, as in the lab).
- a joined endpoint whose container end is still in the host's namespace at the next
  Plugin.Activate: Join answered, but dockerd died before moving it into a sandbox.
- an endpoint never joined, at the next Activate or after UNBOUND_TTL.
- an unbound address claim (RequestAddress with no CreateEndpoint yet, or DeleteEndpoint
  with no ReleaseAddress yet), at the next Activate or after UNBOUND_TTL.

A dockerd calls Plugin.Activate once, when it first needs the driver after it starts, so
nothing of its own is in flight then.  The agent also runs this at its start (with the
age rule only), and its general reconcile (EndpointManager.reconcile) keeps what
``keep`` lists: Docker's endpoints with no port yet, and young unbound claims.
"""

from __future__ import annotations

import logging

from pyroute2 import IPRoute

from controller.cnm import network
from controller.cnm.common import UNBOUND_TTL, Context, unbound_owner
from controller.endpoints import mac_for
from store import docker_records as records
from store.docker_records import DockerEndpoint

LOG = logging.getLogger(__name__)


def keep(ctx: Context, now: float) -> list[tuple[str, str]]:
    """(network, attachment) of every address Docker still holds on this host: the
    agent's reconcile must not release them for want of a port."""
    out = [(ep.network, ep.attachment) for ep in records.list_endpoints(ctx.cluster.kv, ctx.host)]
    for net, attachment, _ in _unbound(ctx):
        owner = unbound_owner(attachment)
        if owner is not None and now - owner[1] < UNBOUND_TTL:
            out.append((net, attachment))
    return out


def collect(ctx: Context, now: float, activate: bool) -> list[str]:
    """Remove what is stale (the rules above); ``activate``: a dockerd just started.
    Returns what went, one phrase each, for the log."""
    removed = []
    for ep in records.list_endpoints(ctx.cluster.kv, ctx.host):
        with ctx.endpoints.locks.hold(ep.attachment):
            fresh = records.get_endpoint(ctx.cluster.kv, ctx.host, ep.docker_id)
            why = fresh and _stale(ctx, fresh, _links(), now, activate)
            if fresh is not None and why:
                network.remove(ctx, fresh)
                removed.append(f"Docker endpoint {fresh.docker_id[:12]} ({fresh.ip}): {why}")
    for net, attachment, ip in _unbound(ctx):
        owner = unbound_owner(attachment)
        if owner is not None and (activate or now - owner[1] >= UNBOUND_TTL):
            ctx.cluster.release_attachment(net, ctx.host, attachment, derive_mac=mac_for)
            removed.append(f"address {ip} in {net} claimed for Docker, never bound")
    for what in removed:
        LOG.warning("removed what dockerd left: %s", what)
    return removed


def _stale(
    ctx: Context, ep: DockerEndpoint, links: set[str], now: float, activate: bool
) -> str | None:
    port, peer = network.port_names(ep)
    if ctx.cluster.get_network(ep.network) is None:
        return "its network is gone"
    if ep.joined and port not in links:
        return "its sandbox is gone (its veth went with it)"
    if ep.joined and activate and peer in links:
        return "dockerd restarted before moving it into a sandbox"
    if not ep.joined and (activate or now - ep.created >= UNBOUND_TTL):
        return "never joined (dockerd died between CreateEndpoint and Join)"
    return None


def _links() -> set[str]:
    with IPRoute() as ipr:
        return {link.get("IFLA_IFNAME") for link in ipr.get_links()}


def _unbound(ctx: Context) -> list[tuple[str, str, str]]:
    """(network, attachment, ip) of this host's unbound claims: a read of every network's
    addresses, made at an agent's start and a dockerd's, never per request."""
    out = []
    for net in ctx.cluster.list_networks():
        for ip, attachment in ctx.cluster.allocations(net.name).items():
            owner = unbound_owner(attachment)
            if owner is not None and owner[0] == ctx.host:
                out.append((net.name, attachment, ip))
    return out
