"""Running the calling thread inside another network namespace, safely.

pyroute2's pushns/popns keep one process-wide stack, save the main thread's
namespace (/proc/self) rather than the caller's, and create a missing
namespace by default; the agent serves requests on several threads, so it
needs a per-thread switch that fails on a missing namespace instead.
"""

from __future__ import annotations

import array
import fcntl
import os
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager

from pyroute2 import netns as _pyroute2_netns

NETNS_DIR = "/run/netns"
SIOCETHTOOL = 0x8946
ETHTOOL_STXCSUM = 0x17  # set tx checksum offload (struct ethtool_value)


def namespace_path(netns: str) -> str:
    """A namespace name (under /run/netns) or a path (/proc/PID/ns/net, /run/netns/X)."""
    return netns if "/" in netns else os.path.join(NETNS_DIR, netns)


@contextmanager
def in_namespace(netns: str) -> Iterator[None]:
    """Move this thread into ``netns`` for the block; sockets made inside stay there."""
    target = os.open(namespace_path(netns), os.O_RDONLY)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        _pyroute2_netns.setns(target, flags=0)
        try:
            yield
        finally:
            _pyroute2_netns.setns(own, flags=0)
    finally:
        os.close(target)
        os.close(own)


def disable_tx_checksum(netns: str | None, ifname: str) -> None:
    """``ethtool -K IF tx off``, in ``netns`` (None: this thread's own).

    The userspace datapath takes packets off a veth with AF_PACKET and does not
    finish checksums the kernel left for the NIC to compute (CHECKSUM_PARTIAL),
    so with tx checksum offload on, TCP leaves with bad checksums and stalls
    while ping still works.  The ethtool ioctl acts on the namespace of the
    socket it uses, so the socket is made while this thread is in ``netns``.
    It is the legacy ETHTOOL_STXCSUM request (what ``ethtool -K IF tx off`` amounts
    to): one ioctl, where pyroute2's Ethtool took 3 ms of every pod ADD.
    """

    def _off() -> None:
        request = array.array("B", struct.pack("II", ETHTOOL_STXCSUM, 0))
        ifreq = struct.pack("16sP16x", ifname.encode(), request.buffer_info()[0])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifreq)

    if netns is None:
        _off()
    else:
        with in_namespace(netns):
            _off()
