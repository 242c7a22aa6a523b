"""Endpoint ports as OVSDB sees them: "ports tagged by network".

Every pod-facing port on br-int carries, in its Interface's external_ids, the
network it belongs to and who it belongs to.  The pipeline classifies by port
into that network, and after a restart the agent rebuilds its picture of the
host from these records alone.  The keys ``attached-mac`` and ``iface-id`` are
OVS's own conventions (also used by OVN and Neutron), so generic tools read them.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

OWNER_KEY = "ovs-overlay-owner"
OWNER_ENDPOINT = "endpoint"
NETWORK_KEY = "ovs-overlay-network"
VNI_KEY = "ovs-overlay-vni"
CONTAINER_ID_KEY = "ovs-overlay-container-id"
IFNAME_KEY = "ovs-overlay-ifname"
IP_KEY = "ovs-overlay-ip"
MAC_KEY = "attached-mac"
IFACE_ID_KEY = "iface-id"
POD_KEY = "ovs-overlay-pod"  # "NAMESPACE/NAME" when the runtime named a Kubernetes pod

MAX_VNI = 2**24 - 1
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_PORT_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


@dataclass(frozen=True)
class EndpointPort:
    """An endpoint's port on the integration bridge and what it is attached to."""

    port: str
    network: str
    vni: int
    container_id: str
    ifname: str
    mac: str
    ip: str
    pod: str | None = None

    def __post_init__(self) -> None:
        if not _PORT_NAME_RE.match(self.port):
            raise ValueError(
                f"port name {self.port!r} is not a valid interface name; use 1-15 letters, "
                "digits, '_', '.' or '-'"
            )
        if not self.network:
            raise ValueError(f"endpoint port {self.port}: network must not be empty")
        if not 1 <= self.vni <= MAX_VNI:
            raise ValueError(f"endpoint port {self.port}: VNI {self.vni} is outside 1..{MAX_VNI}")
        if not self.container_id:
            raise ValueError(f"endpoint port {self.port}: container id must not be empty")
        if not self.ifname:
            raise ValueError(f"endpoint port {self.port}: ifname must not be empty")
        if not MAC_RE.match(self.mac):
            raise ValueError(
                f"endpoint port {self.port}: MAC {self.mac!r} is not a lower-case "
                "colon-separated MAC address"
            )
        try:
            ipaddress.ip_address(self.ip)
        except ValueError:
            raise ValueError(
                f"endpoint port {self.port}: IP {self.ip!r} is not an IP address"
            ) from None

    @property
    def attachment(self) -> str:
        """The CNI attachment key: one container may have several interfaces."""
        return f"{self.container_id}/{self.ifname}"

    def external_ids(self) -> dict[str, str]:
        """The Interface.external_ids that tag this port."""
        ids = {
            OWNER_KEY: OWNER_ENDPOINT,
            NETWORK_KEY: self.network,
            VNI_KEY: str(self.vni),
            CONTAINER_ID_KEY: self.container_id,
            IFNAME_KEY: self.ifname,
            IP_KEY: self.ip,
            MAC_KEY: self.mac,
            IFACE_ID_KEY: self.attachment,
        }
        if self.pod:
            ids[POD_KEY] = self.pod
        return ids

    @classmethod
    def from_external_ids(cls, port: str, ids: dict[str, str]) -> EndpointPort | None:
        """The endpoint a port's external_ids describe, or None for a port we do not own."""
        if ids.get(OWNER_KEY) != OWNER_ENDPOINT:
            return None
        return cls(
            port=port,
            network=ids[NETWORK_KEY],
            vni=int(ids[VNI_KEY]),
            container_id=ids[CONTAINER_ID_KEY],
            ifname=ids[IFNAME_KEY],
            mac=ids[MAC_KEY],
            ip=ids[IP_KEY],
            pod=ids.get(POD_KEY),
        )


@dataclass(frozen=True)
class AttachedEndpoint:
    """An endpoint port as found on the bridge, with the OpenFlow port number vswitchd gave it
    (None while vswitchd has not opened the device, -1 when it failed to)."""

    endpoint: EndpointPort
    ofport: int | None
