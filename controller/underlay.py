"""The underlay as userspace tunnels need it: a route in OVS, and peers' MACs resolved.

Route: ovs-vswitchd routes userspace tunnels with its own table.  Filled from the
kernel's routes, it is flushed and re-read on every link change (each pod ADD and DEL),
and tunnelled packets routed in between are dropped (docs/architecture.md).  So
vswitchd runs with ``--disable-system-route`` and the agent keeps the one route the
tunnels need, ``ovs/route/add <underlay_cidr> <underlay_bridge>``, through vswitchd's
unixctl socket: at start and whenever it is missing (a restarted vswitchd forgot it,
or br-phy had no address yet when we tried).

Neighbours:
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
import json
import logging
import os
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


def mtu_of(ip: str) -> int | None:
    """The MTU of the interface holding ``ip`` in this namespace (the NIC, or br-phy with
    the userspace datapath), or None when no interface holds it."""
    with IPRoute() as ipr:
        for addr in ipr.get_addr(family=socket.AF_INET):
            if addr.get("IFA_ADDRESS") == ip:
                return ipr.get_links(addr["index"])[0].get("IFLA_MTU")
    return None


class UnixctlError(RuntimeError):
    """ovs-vswitchd's unixctl socket refused or failed a command."""


UNIXCTL_TIMEOUT = 5.0


def _vswitchd_call(rundir: str, command: str, *args: str) -> str:
    """One unixctl command (JSON-RPC over vswitchd's control socket), with a timeout:
    python-ovs's UnixctlClient has none, and a stopped vswitchd would hang the caller
    (the reconciler, during a full sync)."""
    try:
        with open(os.path.join(rundir, "ovs-vswitchd.pid")) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError) as exc:
        raise UnixctlError(f"ovs-vswitchd's pidfile in {rundir} is unreadable: {exc}") from None
    path = os.path.join(rundir, f"ovs-vswitchd.{pid}.ctl")
    request = json.dumps({"method": command, "params": list(args), "id": 0}).encode()
    decoder, buf = json.JSONDecoder(), ""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(UNIXCTL_TIMEOUT)
            sock.connect(path)
            sock.sendall(request)
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    raise UnixctlError(f"ovs-vswitchd closed {path} before answering {command}")
                buf += chunk.decode()
                try:
                    reply, _ = decoder.raw_decode(buf)
                    break
                except ValueError:
                    continue  # not all of it yet
    except OSError as exc:
        raise UnixctlError(f"cannot reach ovs-vswitchd at {path}: {exc}") from None
    if reply.get("error") is not None:
        raise UnixctlError(f"{command} {' '.join(args)}: {str(reply['error']).strip()}")
    return reply.get("result") or ""


def ensure_route(rundir: str, cidr: str, bridge: str) -> bool:
    """Add the user route ``cidr`` via ``bridge`` to ovs-vswitchd unless it has it; returns
    whether it was added.  Raises UnixctlError (e.g. while ``bridge`` has no address)."""
    for line in _vswitchd_call(rundir, "ovs/route/show").splitlines():
        words = line.split()
        if words[:1] == ["User:"] and words[1:2] == [cidr] and words[3:4] == [bridge]:
            return False
    _vswitchd_call(rundir, "ovs/route/add", cidr, bridge)
    return True
