"""A pod's veth pair: created and configured on both ends, and deleted.

One end is the pod's interface, created in its namespace with its name, MAC and MTU;
the other is the host end that becomes the pod's port on br-int.  The requests are
controller/rtnl.py's, a handful per ADD.
"""

from __future__ import annotations

import errno
import os

from controller import netns, rtnl
from controller.admission import ERR_INVALID_ENV, AttachError


def random_mac() -> str:
    """A random unicast, locally administered MAC, as the kernel gives a veth by itself;
    chosen here so that creating the veth needs no second request to read it back."""
    first, *rest = os.urandom(6)
    return ":".join(f"{b:02x}" for b in [(first & 0xFE) | 0x02, *rest])


def create(
    pod_netns: str,
    *,
    host_port: str,
    ifname: str,
    mac: str,
    ip: str,
    prefixlen: int,
    gateway: str | None,
    mtu: int,
) -> tuple[str, bool]:
    """The veth pair, configured on both ends; returns the host end's MAC and whether
    the pod's default route now goes via this interface.  A pod that has a default
    route already (its first network; this is a second attachment) keeps it: the
    second network is reached through its connected subnet route.

    The pod end is configured from this thread moved into the pod's namespace
    (netns.in_namespace) rather than through pyroute2's NetNS, which starts a
    helper and costs 8 ms of every ADD; the requests are controller/rtnl.py's
    (pyroute2's cost 0.5 ms each).

    Every link change in the host's namespace makes ovs-vswitchd reconfigure all its
    ports (its if_notifier), 17 ms of its CPU at 90 ports, so the host end is
    created up in one message and otherwise left alone: its tx checksum offload can
    stay on, since what OVS sends into it carries complete checksums; only the pod
    end's (the pod's TCP leaving with CHECKSUM_PARTIAL) must go off.  It is created
    promiscuous too: vswitchd turns promiscuous mode on for every port it adds (a
    link change, so one more reconfiguration per ADD) unless it is on already.  Two
    changes remain that no request can avoid: the kernel notes the host end's missing
    carrier after creating it, and its carrier when the pod end goes up (a veth's
    peer cannot be created up: its flags are applied before the two are joined).

    The host end is NOARP.  On the userspace datapath OVS reads it through a packet
    socket and the host's own stack still sees every frame the pod sends; without
    NOARP the host answered a pod's ARP for any of the host's addresses (the anycast
    gateway, its own gateway address, which another network may reuse for a pod) with
    the veth's MAC, racing the switch's answer, and the pod's packets then entered the
    host beside br-int (found in the lab: a pod of an overlapping network resolved the
    host's gateway address to its own veth).  The kernel datapath takes the frames
    before the stack, so there it changes nothing.
    """
    host_mac = random_mac()
    peer_fd = os.open(netns.namespace_path(pod_netns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        with rtnl.Rtnl() as host:
            try:
                host.add_veth(
                    host_port,
                    mac=host_mac,
                    mtu=mtu,
                    flags=rtnl.IFF_UP | rtnl.IFF_NOARP | rtnl.IFF_PROMISC,
                    peer=ifname,
                    peer_netns_fd=peer_fd,
                    peer_mac=mac,
                )
            except OSError as exc:
                if exc.errno == errno.EEXIST and host.link_index(host_port) is None:
                    raise AttachError(
                        f"CNI_IFNAME {ifname} exists already in {pod_netns}; pick "
                        "another interface name for this attachment",
                        code=ERR_INVALID_ENV,
                        reason="ifname_exists",
                    ) from None
                raise
    finally:
        os.close(peer_fd)
    with netns.in_namespace(pod_netns), rtnl.Rtnl() as pod:
        pod.set_up(rtnl.LOOPBACK_IFINDEX)
        idx = pod.link_index(ifname)
        if idx is None:  # the namespace's owner removed it meanwhile
            raise AttachError(f"interface {ifname} vanished from {pod_netns}")
        pod.set_up(idx)
        pod.add_ipv4_address(idx, ip, prefixlen)
        default_route = bool(gateway) and not pod.has_ipv4_default_route()
        if default_route:
            pod.add_ipv4_default_route(gateway, idx)
        netns.disable_tx_checksum(None, ifname)
    return host_mac, default_route


def create_pair(host_port: str, *, peer: str, peer_mac: str, mtu: int) -> str:
    """A veth pair with both ends in this thread's namespace, for a runtime that moves the
    container end itself (Docker's libnetwork: Join answers the end's name, libnetwork
    moves it into the sandbox, renames it and gives it its address and routes).  Returns
    the host end's MAC.

    The host end is made as ``create`` makes it (up, NOARP, promiscuous: why, there).
    TX checksum offload goes off on both ends: the container end's for the reason
    ``create`` gives (the userspace datapath does not finish CHECKSUM_PARTIAL), and the
    host end's too, since here no later step can tell which way libnetwork will use it;
    the ethtool setting stays with the device when it changes namespace."""
    host_mac = random_mac()
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        with rtnl.Rtnl() as host:
            host.add_veth(
                host_port,
                mac=host_mac,
                mtu=mtu,
                flags=rtnl.IFF_UP | rtnl.IFF_NOARP | rtnl.IFF_PROMISC,
                peer=peer,
                peer_netns_fd=own,
                peer_mac=peer_mac,
            )
    finally:
        os.close(own)
    netns.disable_tx_checksum(None, peer)
    netns.disable_tx_checksum(None, host_port)
    return host_mac


def delete(host_port: str) -> None:
    """Delete the veth pair; gone already (or going, with its netns) is fine."""
    with rtnl.Rtnl() as host:
        host.delete_link(host_port)
