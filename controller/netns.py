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
import stat
import struct
from collections.abc import Iterator
from contextlib import contextmanager

from pyroute2 import netns as _pyroute2_netns

NETNS_DIR = "/run/netns"
SIOCETHTOOL = 0x8946
ETHTOOL_STXCSUM = 0x17  # set tx checksum offload (struct ethtool_value)
NS_GET_NSTYPE = 0xB703  # linux/nsfs.h: _IO(0xb7, 0x3), Linux 4.11+
CLONE_NEWNET = 0x40000000
NS_TYPES = {
    0x00020000: "mount",
    0x02000000: "cgroup",
    0x04000000: "uts",
    0x08000000: "ipc",
    0x10000000: "user",
    0x20000000: "pid",
    0x00000080: "time",
}


class NotANetworkNamespace(ValueError):
    """A path that exists but is not a network namespace (a plain file, another kind of
    namespace): input that can never succeed, unlike a namespace that is gone."""


def namespace_path(netns: str) -> str:
    """A namespace name (under /run/netns) or a path (/proc/PID/ns/net, /run/netns/X)."""
    return netns if "/" in netns else os.path.join(NETNS_DIR, netns)


def require_network_namespace(netns: str) -> str:
    """The path of ``netns`` (see namespace_path), checked to be a network namespace.

    Raises FileNotFoundError when nothing is there (the container is gone) and
    NotANetworkNamespace when something else is.  Two cheap steps, opening nothing that
    is not a namespace: every namespace file is on nsfs, one file system whose device is
    that of our own /proc/self/ns/net; then the NS_GET_NSTYPE ioctl tells a network
    namespace from the other kinds (a mount namespace is nsfs too).
    """
    path = namespace_path(netns)
    st = os.stat(path)  # FileNotFoundError: missing
    if not stat.S_ISREG(st.st_mode) or st.st_dev != os.stat("/proc/self/ns/net").st_dev:
        raise NotANetworkNamespace(f"{path} is not a namespace file")
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    try:
        kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError as exc:
        raise NotANetworkNamespace(f"{path} is not a namespace file ({exc.strerror})") from None
    finally:
        os.close(fd)
    if kind != CLONE_NEWNET:
        raise NotANetworkNamespace(f"{path} is a {NS_TYPES.get(kind, hex(kind))} namespace")
    return path


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
