"""The few rtnetlink requests of a pod's veth, packed by hand on one plain socket.

pyroute2 0.9 runs every request through an asyncio loop: 0.4-1 ms per request and 0.7 ms
per IPRoute socket, and an ADD made eleven requests on two sockets (the veth step's 10 ms,
of which the kernel's own work is ~2.5 ms; measured 2026-12-02, docs/benchmarks.md).
These requests are fixed structures (linux/netlink.h, rtnetlink.h, if_link.h, veth.h),
so they are packed here with ``struct``; each costs tens of microseconds.  Everything
else (listings, CHECK, the lab) keeps pyroute2.

A socket acts in the network namespace of the thread that opened it, so a ``Rtnl``
opened inside ``netns.in_namespace`` addresses the pod's links.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct

NETLINK_ROUTE = 0
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE, NLM_F_DUMP = 0x1, 0x4, 0x200, 0x400, 0x300
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_NEWROUTE, RTM_GETROUTE = 20, 24, 26
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINKINFO, IFLA_NET_NS_FD = 1, 3, 4, 18, 28
IFLA_INFO_KIND, IFLA_INFO_DATA, VETH_INFO_PEER = 1, 2, 1
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_OIF, RTA_GATEWAY = 4, 5
RT_TABLE_MAIN, RTPROT_STATIC, RT_SCOPE_UNIVERSE, RTN_UNICAST = 254, 4, 0, 1
IFF_UP, IFF_NOARP, IFF_PROMISC = 0x1, 0x80, 0x100  # linux/if.h
LOOPBACK_IFINDEX = 1  # every network namespace's lo (linux/netdevice.h)

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, proto, scope, type
_ERRNO = struct.Struct("=i")


def _attr(kind: int, payload: bytes) -> bytes:
    """One rtattr (length, type, payload), padded to 4 bytes."""
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _name(name: str) -> bytes:
    return name.encode() + b"\0"


def _mac(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def _ifinfo(index: int = 0, flags: int = 0, change: int = 0) -> bytes:
    return _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, flags, change)


class Rtnl:
    """One NETLINK_ROUTE socket; every request waits for the kernel's answer, and a
    refusal raises OSError with the kernel's errno."""

    def __init__(self) -> None:
        self._sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE
        )
        self._sock.bind((0, 0))
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _request(self, kind: int, flags: int, body: bytes) -> list[tuple[int, bytes]]:
        """Send one message; return the (type, payload) answers until its ack or the end
        of its dump."""
        self._seq += 1
        seq = self._seq
        header = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, NLM_F_REQUEST | flags, seq, 0)
        self._sock.send(header + body)
        answers = []
        while True:
            data = self._sock.recv(65536)
            offset = 0
            while offset + _NLMSGHDR.size <= len(data):
                length, mtype, _, mseq, _ = _NLMSGHDR.unpack_from(data, offset)
                payload = data[offset + _NLMSGHDR.size : offset + length]
                offset += (length + 3) & ~3
                if mseq != seq:
                    continue
                if mtype in (NLMSG_ERROR, NLMSG_DONE):
                    code = -_ERRNO.unpack_from(payload)[0] if len(payload) >= 4 else 0
                    if code:
                        raise OSError(code, os.strerror(code))
                    return answers
                answers.append((mtype, payload))

    def add_veth(
        self,
        name: str,
        *,
        mac: str,
        mtu: int,
        flags: int,
        peer: str,
        peer_netns_fd: int,
        peer_mac: str,
    ) -> None:
        """Create a veth pair: ``name`` here with ``flags`` (the kernel cannot create the
        peer up: it is not joined to this end yet when its flags are applied), ``peer``
        in the namespace ``peer_netns_fd``, each end with its MAC and ``mtu``."""
        peer_msg = (
            _ifinfo()
            + _attr(IFLA_IFNAME, _name(peer))
            + _attr(IFLA_ADDRESS, _mac(peer_mac))
            + _attr(IFLA_MTU, struct.pack("=I", mtu))
            + _attr(IFLA_NET_NS_FD, struct.pack("=I", peer_netns_fd))
        )
        linkinfo = _attr(IFLA_INFO_KIND, b"veth") + _attr(
            IFLA_INFO_DATA, _attr(VETH_INFO_PEER, peer_msg)
        )
        body = (
            _ifinfo(flags=flags, change=flags)
            + _attr(IFLA_IFNAME, _name(name))
            + _attr(IFLA_ADDRESS, _mac(mac))
            + _attr(IFLA_MTU, struct.pack("=I", mtu))
            + _attr(IFLA_LINKINFO, linkinfo)
        )
        self._request(RTM_NEWLINK, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body)

    def link_index(self, name: str) -> int | None:
        """The index of link ``name``, None when there is none."""
        try:
            answers = self._request(
                RTM_GETLINK, NLM_F_ACK, _ifinfo() + _attr(IFLA_IFNAME, _name(name))
            )
        except OSError as exc:
            if exc.errno == errno.ENODEV:
                return None
            raise
        for mtype, payload in answers:
            if mtype == RTM_NEWLINK:
                return _IFINFOMSG.unpack_from(payload)[2]
        return None

    def set_up(self, index: int) -> None:
        self._request(RTM_NEWLINK, NLM_F_ACK, _ifinfo(index, IFF_UP, IFF_UP))

    def delete_link(self, name: str) -> bool:
        """Delete link ``name`` (a veth takes its peer along); False when there was none."""
        try:
            self._request(RTM_DELLINK, NLM_F_ACK, _ifinfo() + _attr(IFLA_IFNAME, _name(name)))
        except OSError as exc:
            if exc.errno == errno.ENODEV:
                return False
            raise
        return True

    def add_ipv4_address(self, index: int, address: str, prefixlen: int) -> None:
        """``ip addr add ADDRESS/PREFIXLEN dev INDEX`` (no broadcast address, as there)."""
        packed = ipaddress.IPv4Address(address).packed
        body = (
            _IFADDRMSG.pack(socket.AF_INET, prefixlen, 0, RT_SCOPE_UNIVERSE, index)
            + _attr(IFA_LOCAL, packed)
            + _attr(IFA_ADDRESS, packed)
        )
        self._request(RTM_NEWADDR, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body)

    def has_ipv4_default_route(self) -> bool:
        """Whether any table holds an IPv4 route to 0.0.0.0/0."""
        request = _RTMSG.pack(socket.AF_INET, 0, 0, 0, 0, 0, 0, 0, 0)
        answers = self._request(RTM_GETROUTE, NLM_F_DUMP, request)
        return any(
            mtype == RTM_NEWROUTE and payload[0] == socket.AF_INET and payload[1] == 0
            for mtype, payload in answers
        )

    def add_ipv4_default_route(self, gateway: str, index: int) -> None:
        """``ip route add default via GATEWAY dev INDEX proto static``."""
        body = (
            _RTMSG.pack(
                socket.AF_INET,
                0,
                0,
                0,
                RT_TABLE_MAIN,
                RTPROT_STATIC,
                RT_SCOPE_UNIVERSE,
                RTN_UNICAST,
                0,
            )
            + _attr(RTA_GATEWAY, ipaddress.IPv4Address(gateway).packed)
            + _attr(RTA_OIF, struct.pack("=I", index))
        )
        self._request(RTM_NEWROUTE, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body)
