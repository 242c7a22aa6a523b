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
- a network the driver made for a Docker network since deleted, kept then because
  something still held an address in it, once nothing does.

A dockerd calls Plugin.Activate once, when it first needs the driver after it starts, so
nothing of its own is in flight then.  The agent also runs this at its start and every
COLLECT_INTERVAL (``keep_clean``), with the age rule only, and its general reconcile
(EndpointManager.reconcile) keeps what ``keep`` lists: Docker's endpoints with no port
yet, and young unbound claims.  Each item is removed on its own: one that fails (a record
another writer broke, OVSDB refusing) is logged and the rest still go.
"""

from __future__ import annotations

import logging
import threading
import time

from pyroute2 import IPRoute

from controller.cnm import network
from controller.cnm.common import UNBOUND_TTL, Context, unbound_owner
from controller.endpoints import mac_for
from store import docker_records as records
from store.docker_records import DockerEndpoint

LOG = logging.getLogger(__name__)

# Seconds between the agent's own collects: an unbound claim or unjoined endpoint goes
# between UNBOUND_TTL and UNBOUND_TTL + COLLECT_INTERVAL after dockerd left it.
COLLECT_INTERVAL = 60.0


def keep(ctx: Context, now: float) -> list[tuple[str, str]]:
    """(network, attachment) of every address Docker still holds on this host: the
    agent's reconcile must not release them for want of a port."""
    out = [(ep.network, ep.attachment) for ep in records.list_endpoints(ctx.cluster.kv, ctx.host)]
    for net, attachment, _ in _unbound(ctx):
        owner = unbound_owner(attachment)
        if owner is not None and now - owner[1] < UNBOUND_TTL:
            out.append((net, attachment))
    return out


def collect(ctx: Context, now: float, activate: bool, everywhere: bool = True) -> list[str]:
    """Remove what is stale (the rules above); ``activate``: a dockerd just started;
    ``everywhere``: look for unbound claims in every network, not only in those this
    host's Docker networks map onto (where RequestAddress makes them).  Returns what
    went, one phrase each, for the log.  An item that fails is logged and skipped (tried
    again next time); only a failure to read the lists raises."""
    removed = []
    for ep in records.list_endpoints(ctx.cluster.kv, ctx.host):
        try:
            with ctx.endpoints.locks.hold(ep.attachment):
                fresh = records.get_endpoint(ctx.cluster.kv, ctx.host, ep.docker_id)
                why = fresh and _stale(ctx, fresh, _links(), now, activate)
                if fresh is not None and why:
                    network.remove(ctx, fresh)
                    removed.append(f"Docker endpoint {fresh.docker_id[:12]} ({fresh.ip}): {why}")
        except Exception:
            LOG.exception("removing what dockerd left of endpoint %s failed", ep.docker_id[:12])
    for net, attachment, ip in _unbound(ctx, everywhere):
        owner = unbound_owner(attachment)
        if owner is not None and (activate or now - owner[1] >= UNBOUND_TTL):
            try:
                ctx.cluster.release_attachment(net, ctx.host, attachment, derive_mac=mac_for)
            except Exception:
                LOG.exception("releasing %s's claim on %s in %s failed", attachment, ip, net)
                continue
            removed.append(f"address {ip} in {net} claimed for Docker, never bound")
    for found in records.list_networks(ctx.cluster.kv, ctx.host):
        if found.deleted:
            try:
                if network.delete_made_network(ctx, found):
                    records.delete_network(ctx.cluster.kv, ctx.host, found.docker_id)
                    removed.append(f"network {found.network} of a deleted Docker network")
            except Exception:
                LOG.exception("deleting network %s failed", found.network)
    for what in removed:
        LOG.warning("removed what dockerd left: %s", what)
    return removed


def keep_clean(ctx: Context, stop: threading.Event, interval: float = COLLECT_INTERVAL) -> None:
    """The agent's own collect, every ``interval`` seconds until ``stop``: what a dockerd
    that died and never came back left goes too (no Activate comes then).  Survives every
    exception: a failed round is logged, and the next tries again."""
    while not stop.wait(interval):
        try:
            collect(ctx, time.time(), activate=False, everywhere=False)
        except Exception:
            LOG.exception("removing what dockerd left failed; tried again in %.0f s", interval)


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


def _unbound(ctx: Context, everywhere: bool = True) -> list[tuple[str, str, str]]:
    """(network, attachment, ip) of this host's unbound claims: a read of every network's
    addresses at an agent's start and a dockerd's, of the networks this host's Docker
    networks map onto otherwise; never per request."""
    if everywhere:
        names = sorted(net.name for net in ctx.cluster.list_networks())
    else:
        names = sorted({d.network for d in records.list_networks(ctx.cluster.kv, ctx.host)})
    out = []
    for name in names:
        for ip, attachment in ctx.cluster.allocations(name).items():
            owner = unbound_owner(attachment)
            if owner is not None and owner[0] == ctx.host:
                out.append((name, attachment, ip))
    return out
