"""Resolving peers' underlay addresses before the first tunnelled packet needs them.

With userspace tunnelling, ovs-vswitchd keeps its own neighbour cache for the
outer header.  The first packet to a peer whose MAC it does not know is
dropped while vswitchd sends an ARP request (seen in the lab: the first ping to
a new host is lost, the next ones pass).  vswitchd fills that cache by snooping
ARP replies on the bridge holding the tunnel IP, so when a peer appears the
agent sends one ARP request for it from that interface, and the reply teaches
vswitchd the MAC before any pod packet needs it.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import struct
from collections.abc import Iterable

from pyroute2 import IPRoute

LOG = logging.getLogger(__name__)

ETH_P_ARP = 0x0806


def arp_request(src_mac: bytes, src_ip: str, target_ip: str) -> bytes:
    """A broadcast Ethernet frame asking who has ``target_ip``."""
    eth = b"\xff" * 6 + src_mac + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + src_mac
    arp += ipaddress.IPv4Address(src_ip).packed + b"\x00" * 6
    arp += ipaddress.IPv4Address(target_ip).packed
    return eth + arp


def solicit(local_ip: str, peers: Iterable[str]) -> bool:
    """Send an ARP request for each peer from the interface holding ``local_ip``.

    Returns False when no interface here holds ``local_ip`` (the kernel datapath
    resolves neighbours itself, so there is nothing to do).
    """
    with IPRoute() as ipr:
        addrs = [a for a in ipr.get_addr(family=socket.AF_INET) if a.get("IFA_ADDRESS") == local_ip]
        if not addrs:
            return False
        link = ipr.get_links(addrs[0]["index"])[0]
    ifname = link.get("IFLA_IFNAME")
    mac = bytes.fromhex(link.get("IFLA_ADDRESS").replace(":", ""))
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
        sock.bind((ifname, 0))
        for peer in peers:
            sock.send(arp_request(mac, local_ip, peer))
    LOG.debug("solicited underlay neighbours %s from %s", list(peers), ifname)
    return True
