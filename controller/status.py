"""What the agent answers to ``status`` (its local API): what ``ovs-overlayctl status``
shows of this host, and what the CNI plugin's STATUS and the lab's readiness poll read.

Everything comes from what the agent already holds — the reconciler's engine for the
counts (not a dump of br-int), the keepalive for the store's health — so a status costs
no switch or store round trip and can be asked as often as one likes.
"""

from __future__ import annotations

import functools
import importlib.metadata
from urllib.parse import urlsplit, urlunsplit

from controller.compat import FRAMEWORK
from controller.config import AgentConfig
from controller.membership import Membership
from controller.reconciler import Reconciler

PACKAGE = "ovs-overlay"


@functools.cache
def version() -> str:
    """The installed package's version (``unknown`` when run from a bare source tree)."""
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def redact_store_url(url: str) -> str:
    """``url`` without a user or password (``etcd://user:pw@h:2379`` → ``etcd://h:2379``):
    the status is shown to whoever asks, and credentials are never printed.  The TLS
    files' paths stay: they say which files, not what is in them."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    hosts = ",".join(item.rpartition("@")[2] for item in parts.netloc.split(","))
    return urlunsplit(parts._replace(netloc=hosts))


def agent_status(
    config: AgentConfig,
    ready: bool,
    datapath_type: str | None,
    reconciler: Reconciler,
    membership: Membership,
    policies: int = 0,
) -> dict:
    """The status as JSON-ready values; times are seconds since the epoch.  ``policies``:
    the NetworkPolicies the agent's PolicyWatch holds (what it compiles)."""
    counts = reconciler.counts()
    return {
        "host": config.host,
        "ready": ready,
        "version": version(),
        "framework": FRAMEWORK,
        "generation": reconciler.generation,
        "full_syncs": reconciler.full_syncs,
        "last_full_sync": reconciler.last_full_sync,
        "bridge": config.bridge,
        "datapath_type": datapath_type,
        "tunnel_type": config.tunnel_type,
        "tunnel_ip": config.tunnel_ip,
        "store": {
            "url": redact_store_url(config.store),
            "reachable": membership.store_reachable,
            "since": membership.store_since,
        },
        "counts": {
            "local_endpoints": counts.local_ports,
            "gateways": counts.gateways,
            "networks": counts.networks,
            "peers": counts.peers,
            "remote_endpoints": counts.remote_endpoints,
            "flows": counts.flows,
            "groups": counts.groups,
            "policies": policies,
        },
    }
