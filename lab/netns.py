"""Network namespaces and links, through netlink (pyroute2).

Every link the lab makes is created inside a namespace the lab made: a veth is
born in the underlay namespace with its peer placed straight into the host
namespace, so nothing ever appears in the root namespace, not even briefly.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Mapping, Sequence

from pyroute2 import NetNS, netns
from pyroute2.netlink.exceptions import NetlinkError

from controller import netns as ns_helpers


def list_namespaces() -> list[str]:
    return sorted(netns.listnetns())


def namespace_exists(name: str) -> bool:
    return os.path.exists(ns_helpers.namespace_path(name))


def create_namespace(name: str) -> None:
    """Create ``name``; it must not exist yet (a lab never adopts a namespace it did not make)."""
    if namespace_exists(name):
        raise FileExistsError(
            f"network namespace {name} already exists; remove it or pick another name"
        )
    netns.create(name)
    with open_namespace(name) as ns:
        ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")


def delete_namespace(name: str) -> None:
    if namespace_exists(name):
        netns.remove(name)


def namespace_pids(name: str) -> list[int]:
    """PIDs of the processes whose network namespace is ``name``."""
    return sorted(netns.ns_pids().get(name, []))


def open_namespace(name: str) -> NetNS:
    """A netlink socket in an existing namespace (flags=0: never create one by accident)."""
    return NetNS(name, flags=0)


def link_index(ns: NetNS, ifname: str) -> int:
    found = ns.link_lookup(ifname=ifname)
    if not found:
        raise LookupError(f"no link {ifname} in this namespace")
    return found[0]


def create_bridge(namespace: str, ifname: str) -> None:
    """A Linux bridge with a MAC of its own, fixed for its life.

    A bridge whose MAC was never set takes the lowest MAC of its ports, so it changes
    when a port with a lower (random) MAC joins or the lowest one leaves.  The address on
    the bridge (the operator's on the underlay) then silently moves to a new MAC: peers
    keep the old one in their ARP cache, and their frames to it, which belongs to a port
    now, reach the bridge as another host's and IP drops them.  A connection on which
    only the peer talks (an etcd watch) stalls until the peer re-learns the address,
    which it does only when the bridge itself sends it something.  Seen: a watch from
    the operator's namespace missed a host's registration after 'lab host add', with
    etcd's send queue retransmitting to the bridge's former MAC."""
    with open_namespace(namespace) as ns:
        ns.link("add", ifname=ifname, kind="bridge", address=_random_mac())
        ns.link("set", index=link_index(ns, ifname), state="up")


def _random_mac() -> str:
    """A random unicast, locally administered MAC (first octet xxxxxx10)."""
    octets = bytearray(os.urandom(6))
    octets[0] = (octets[0] & 0xFC) | 0x02
    return ":".join(f"{b:02x}" for b in octets)


def create_veth(
    namespace: str, ifname: str, peer_namespace: str, peer_ifname: str, mtu: int
) -> None:
    """A veth with one end in ``namespace`` and the other in ``peer_namespace``, both up."""
    with open_namespace(namespace) as ns:
        ns.link(
            "add",
            ifname=ifname,
            kind="veth",
            peer={"ifname": peer_ifname, "net_ns_fd": peer_namespace},
        )
        ns.link("set", index=link_index(ns, ifname), mtu=mtu, state="up")
    with open_namespace(peer_namespace) as peer:
        peer.link("set", index=link_index(peer, peer_ifname), mtu=mtu, state="up")


def create_uplink(
    bridge_namespace: str, port: str, bridge: str, namespace: str, ifname: str, mtu: int
) -> None:
    """``namespace``'s ``ifname`` joined to ``bridge`` through a veth whose other end is
    ``port``, with tx checksum offload off on both ends: the hosts' uplinks are read by
    OVS's userspace datapath, which does not finish checksums a sender left to offload."""
    create_veth(bridge_namespace, port, namespace, ifname, mtu)
    attach_to_bridge(bridge_namespace, port, bridge)
    disable_tx_checksum(bridge_namespace, port)
    disable_tx_checksum(namespace, ifname)


def attach_to_bridge(namespace: str, ifname: str, bridge: str) -> None:
    with open_namespace(namespace) as ns:
        ns.link("set", index=link_index(ns, ifname), master=link_index(ns, bridge))


def set_up(namespace: str, ifname: str, mtu: int | None = None) -> None:
    with open_namespace(namespace) as ns:
        if mtu is None:
            ns.link("set", index=link_index(ns, ifname), state="up")
        else:
            ns.link("set", index=link_index(ns, ifname), state="up", mtu=mtu)


def add_address(namespace: str, ifname: str, address: str, prefixlen: int) -> None:
    """Add an address; one already there is fine."""
    with open_namespace(namespace) as ns:
        try:
            ns.addr("add", index=link_index(ns, ifname), address=address, prefixlen=prefixlen)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise


def disable_tx_checksum(namespace: str, ifname: str) -> None:
    """``ethtool -K IF tx off`` inside ``namespace`` (see controller.netns for why)."""
    ns_helpers.disable_tx_checksum(namespace, ifname)


def enter_namespace(name: str) -> None:
    """Move the calling process (thread) into namespace ``name``."""
    netns.setns(name, flags=0)


def run_in_namespace(
    namespace: str,
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    timeout: float | None = 60,
    check: bool = True,
) -> subprocess.CompletedProcess:
    """Run a program inside ``namespace`` and capture its output.

    Through ``nsenter --net`` (util-linux), not a ``preexec_fn``: Python code between fork
    and exec is unsafe in a process with other threads (a test holding a gRPC channel
    open had its forked child abort mid-``setns``: ``ovs-vsctl … died with SIGABRT`` on a
    fresh root), while nsenter is exec'ed straight away and only then enters the
    namespace.  nsenter execs the program itself, so it keeps nsenter's PID."""
    return subprocess.run(
        ["nsenter", f"--net={ns_helpers.namespace_path(namespace)}", "--", *argv],
        env=dict(env) if env is not None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
    )


def set_sysctl(namespace: str, key: str, value: str) -> None:
    """Write a per-namespace sysctl (``net.ipv4.conf.eth0.arp_ignore``) inside ``namespace``;
    /proc/sys/net shows the namespace of the thread that opens it."""
    path = "/proc/sys/" + key.replace(".", "/")
    with ns_helpers.in_namespace(namespace), open(path, "w") as f:
        f.write(value)
