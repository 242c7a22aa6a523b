"""Names and addresses of everything a lab creates.

Everything a lab makes carries the lab's name as a prefix, so ``lab down`` can
find it after a crash without any record, and never touches what another lab
(or the machine) owns.
"""

from __future__ import annotations

import ipaddress
import re

LAB_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,9}$")
MAX_HOSTS = 200
UNDERLAY_NET = ipaddress.IPv4Network("198.18.0.0/16")
UNDERLAY_MTU = 1500
UNDERLAY_BRIDGE = "ul0"
HOST_UPLINK = "eth0"
PHYS_BRIDGE = "br-phy"
INTEGRATION_BRIDGE = "br-int"
DEFAULT_STATE_ROOT = "/run/ovs-overlay/lab"
DEFAULT_NETWORK = "default"
DEFAULT_VNI = 5001
DEFAULT_CIDR = "100.64.0.0/16"
MAX_ETCD_MEMBERS = 7
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
# The operator's vantage point: the underlay bridge's own address, in the underlay
# namespace (etcd labs only).  The root namespace gets no address or route, so whatever
# must reach the lab's etcd from outside (the CLI, tests) enters that namespace first.
OPERATOR_IP = "198.18.255.254"


def validate_lab_name(name: str) -> str:
    if not LAB_NAME_RE.match(name):
        raise ValueError(
            f"lab name {name!r} is invalid; use 1-10 lower-case letters and digits, "
            "starting with a letter"
        )
    return name


def validate_host_count(count: int) -> int:
    if not 1 <= count <= MAX_HOSTS:
        raise ValueError(f"host count {count} is outside 1..{MAX_HOSTS}; pick a count in range")
    return count


def host_name(index: int) -> str:
    return f"h{index}"


def host_index(host: str) -> int:
    """The index of host ``h<i>``; raises for anything else."""
    m = re.fullmatch(r"h([1-9][0-9]*)", host)
    if not m or int(m.group(1)) > MAX_HOSTS:
        raise ValueError(f"host {host!r} is not a lab host name; hosts are h1, h2, ...")
    return int(m.group(1))


def underlay_namespace(lab: str) -> str:
    return f"{lab}-underlay"


def host_namespace(lab: str, host: str) -> str:
    return f"{lab}-{host}"


def underlay_port(host: str) -> str:
    """The underlay-side veth of a host, inside the underlay namespace."""
    return host


def underlay_ip(index: int) -> str:
    return str(UNDERLAY_NET.network_address + index)


def validate_etcd_members(count: int) -> int:
    if not 1 <= count <= MAX_ETCD_MEMBERS:
        raise ValueError(
            f"etcd member count {count} is outside 1..{MAX_ETCD_MEMBERS}; "
            "pick 1, 3 or 5 (an odd count survives the most failures)"
        )
    return count


MIN_UNDERLAY_MTU, MAX_UNDERLAY_MTU = 1280, 9000


def validate_underlay_mtu(mtu: int) -> int:
    if isinstance(mtu, bool) or not isinstance(mtu, int):
        raise ValueError(f"underlay MTU {mtu!r} is not a whole number")
    if not MIN_UNDERLAY_MTU <= mtu <= MAX_UNDERLAY_MTU:
        raise ValueError(
            f"underlay MTU {mtu} is outside {MIN_UNDERLAY_MTU}..{MAX_UNDERLAY_MTU}; "
            "pick e.g. 1500 or 9000"
        )
    return mtu


def etcd_member_name(index: int) -> str:
    return f"etcd{index}"


def etcd_member_index(member: str) -> int:
    """The index of member ``etcd<k>``; raises for anything else."""
    m = re.fullmatch(r"etcd([1-9][0-9]*)", member)
    if not m or int(m.group(1)) > MAX_ETCD_MEMBERS:
        raise ValueError(f"{member!r} is not an etcd member name; members are etcd1, etcd2, ...")
    return int(m.group(1))


def etcd_namespace(lab: str, index: int) -> str:
    return f"{lab}-{etcd_member_name(index)}"


def etcd_ip(index: int) -> str:
    """Members sit at 198.18.1.<k>, apart from the hosts' 198.18.0.<i>."""
    return str(UNDERLAY_NET.network_address + 256 + index)


def etcd_url(members: int) -> str:
    """The store URL the agents get: every member, so the client fails over."""
    return "etcd://" + ",".join(f"{etcd_ip(k)}:{ETCD_CLIENT_PORT}" for k in range(1, members + 1))


def underlay_prefixlen() -> int:
    return UNDERLAY_NET.prefixlen


def owns_namespace(lab: str, namespace: str) -> bool:
    """Whether ``namespace`` was made by lab ``lab`` (its underlay, a host, a host's pod, or
    an etcd member)."""
    return (
        re.fullmatch(
            rf"{re.escape(lab)}-(underlay|etcd[1-9][0-9]*|h[1-9][0-9]*(-[A-Za-z0-9_.-]+)?)",
            namespace,
        )
        is not None
    )


def lab_of_namespace(namespace: str) -> str | None:
    """The lab whose underlay namespace this is, for listing labs whose state dir is gone."""
    m = re.fullmatch(r"([a-z][a-z0-9]{0,9})-underlay", namespace)
    return m.group(1) if m else None
