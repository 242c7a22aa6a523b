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


def underlay_prefixlen() -> int:
    return UNDERLAY_NET.prefixlen


def owns_namespace(lab: str, namespace: str) -> bool:
    """Whether ``namespace`` was made by lab ``lab`` (its underlay, a host, or a host's pod)."""
    return (
        re.fullmatch(rf"{re.escape(lab)}-(underlay|h[1-9][0-9]*(-[A-Za-z0-9_.-]+)?)", namespace)
        is not None
    )


def lab_of_namespace(namespace: str) -> str | None:
    """The lab whose underlay namespace this is, for listing labs whose state dir is gone."""
    m = re.fullmatch(r"([a-z][a-z0-9]{0,9})-underlay", namespace)
    return m.group(1) if m else None
