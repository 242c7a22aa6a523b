"""What the CNM handlers share: the refusal, request field checks, and the attachment ids
Docker's address claims and endpoints hold in the cluster state.

Attachment ids (the store's ATTACHMENT, docs/architecture.md "CNM"):

- ``docker:ipam:HOST:EPOCH:NONCE`` -- an address claimed by IpamDriver.RequestAddress,
  which libnetwork calls before the endpoint exists, so before it has a name.  It holds
  the address (and its derived MAC) until CreateEndpoint binds it to the endpoint, and
  holds it again from DeleteEndpoint until ReleaseAddress.  HOST says whose it is, EPOCH
  when it was made: an unbound claim older than UNBOUND_TTL, or any at the next
  Plugin.Activate (a dockerd that restarted has nothing in flight), is released.
- ``docker:ENDPOINT_ID/eth`` -- a Docker endpoint's, from CreateEndpoint to
  DeleteEndpoint: its address, MAC, OVS port (container id ``docker:ENDPOINT_ID``,
  ifname ``eth``, the DstPrefix libnetwork names the container end with) and endpoint
  record.

No CNI attachment can look like either: CNI container ids refuse ':'.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from dataclasses import dataclass

from controller.endpoints import DOCKER_ATTACHMENT_PREFIX, EndpointManager
from store.cluster import ClusterState

UNBOUND_PREFIX = DOCKER_ATTACHMENT_PREFIX + "ipam:"
# A network the driver made for a Docker network (no --opt network): this + the Docker
# network id's first 12 digits.  Never found by its subnet: it is that Docker network's.
MADE_NETWORK_PREFIX = "docker-"
IFNAME = "eth"  # the DstPrefix Join answers: libnetwork names the container end eth0, eth1...
# Seconds an address claim may wait for its endpoint (RequestAddress to CreateEndpoint,
# DeleteEndpoint to ReleaseAddress: milliseconds when dockerd is alive), and an endpoint
# for its Join, before the agent's cleanup counts it as left by a dockerd that died.
UNBOUND_TTL = 600.0
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


class CnmError(Exception):
    """A request refused (answered ``{"Err": message}``); ``reason`` labels the refusal
    metric (one of controller.metrics.REASONS)."""

    def __init__(self, msg: str, reason: str = "bad_request"):
        super().__init__(msg)
        self.reason = reason


@dataclass(frozen=True)
class Context:
    """What every handler works with: this host, the cluster state, the endpoint manager
    (veth-independent steps shared with CNI, its locks, its publish)."""

    host: str
    cluster: ClusterState
    endpoints: EndpointManager


def docker_id(body: dict, field: str) -> str:
    """A Docker id field (a network or endpoint id: 64 hex digits from dockerd)."""
    value = body.get(field)
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise CnmError(
            f"{field} {value!r} is not a Docker id (letters, digits, '_', '.' or '-', up to "
            "128); send the id dockerd gave the object"
        )
    return value


def options(body: dict, field: str = "Options") -> dict:
    """An optional JSON object field ({} when absent or null)."""
    value = body.get(field)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CnmError(f"{field} must be a JSON object, not {type(value).__name__}")
    return value


def text(body: dict, field: str) -> str:
    """An optional string field ('' when absent or null)."""
    value = body.get(field)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise CnmError(f"{field} must be a string, not {type(value).__name__}")
    return value


def interface_address(value: str, field: str) -> ipaddress.IPv4Interface:
    """An IPv4 address with its prefix, as libnetwork sends it ("100.64.0.5/16")."""
    try:
        return ipaddress.IPv4Interface(value)
    except ValueError:
        raise CnmError(f"{field} {value!r} is not an IPv4 address like 100.64.0.5/16") from None


def mac_address(value: str, field: str) -> str:
    mac = value.lower()
    if not _MAC_RE.match(mac) or int(mac[:2], 16) & 1 or mac == "00:00:00:00:00:00":
        raise CnmError(f"{field} {value!r} is not a unicast MAC address like 02:00:00:00:00:07")
    return mac


def unbound_attachment(host: str, now: float) -> str:
    """A fresh id for an address claimed before its endpoint exists."""
    return f"{UNBOUND_PREFIX}{host}:{int(now)}:{secrets.token_hex(4)}"


def unbound_owner(attachment: str) -> tuple[str, float] | None:
    """(host, epoch) of an unbound claim's id, None for any other id."""
    if not attachment.startswith(UNBOUND_PREFIX):
        return None
    parts = attachment[len(UNBOUND_PREFIX) :].split(":")
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    return parts[0], float(parts[1])


def endpoint_container_id(endpoint_id: str) -> str:
    """The container id a Docker endpoint's port and record carry."""
    return f"{DOCKER_ATTACHMENT_PREFIX}{endpoint_id}"


def endpoint_attachment(endpoint_id: str) -> str:
    return f"{endpoint_container_id(endpoint_id)}/{IFNAME}"
