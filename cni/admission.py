"""The checks every CNI request passes before anything is done for it.

The plugin runs them on every exec and the agent runs them again (its API socket has
other clients than the plugin), so they live here, importing the standard library only.
Each refusal is a :class:`Refused` carrying the CNI error code and one sentence naming
the variable, the value and the fix: a runtime retries code 11 forever, so input that can
never succeed must get 4 (bad environment or CNI_ARGS), never a raw errno.

The rules are the CNI spec's (SPEC.md, "Parameters") and libcni's (pkg/utils:
ValidateContainerID, ValidateInterfaceName, which the reference plugins apply through
pkg/skel to ADD, CHECK and DEL).
"""

from __future__ import annotations

import re
import socket

ERR_INVALID_ENV = 4

# SPEC.md: "Must start with an alphanumeric character, optionally followed by any
# combination of one or more alphanumeric characters, underscore, dot or hyphen."
CONTAINER_ID_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")
MAX_IFNAME_BYTES = 15  # IFNAMSIZ - 1: the kernel's dev_valid_name
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
# MACs the overlay derives itself: a pod's or a host gateway's 0a:58 + its IPv4 address.  A
# static MAC there could equal another pod's derived one (or a gateway's), so it is refused
# unless it is the one derived from the request's own IP.
DERIVED_MAC_PREFIX = "0a:58:"
EXAMPLE_MAC = "02:00:00:00:00:07"


def derived_mac(ip: str) -> str:
    """0a:58 + the IPv4 address: locally administered, unique wherever the IP is."""
    return DERIVED_MAC_PREFIX + ":".join(f"{b:02x}" for b in socket.inet_aton(ip))


class Refused(ValueError):
    """A request refused before any side effect; ``code`` is the CNI error code."""

    def __init__(self, msg: str, code: int = ERR_INVALID_ENV):
        super().__init__(msg)
        self.code = code


def check_container_id(value: str) -> None:
    """CNI_CONTAINERID as the spec defines it: it names host ports and store keys."""
    if not isinstance(value, str) or not CONTAINER_ID_RE.match(value):
        raise Refused(
            f"CNI_CONTAINERID {value!r} is invalid; the runtime must pass letters, digits, "
            "'_', '.' or '-', starting with a letter or digit (CNI spec)"
        )


def check_network_name(value: object) -> str | None:
    """The configuration's ``name`` (libcni's ValidateNetworkName: the container id's
    pattern); returns the refusal's message, or None.  A config error: code 7."""
    if not isinstance(value, str) or not CONTAINER_ID_RE.match(value):
        return (
            f"name {value!r} is not a valid network name; use letters, digits, '_', '.' or "
            "'-', starting with a letter or digit (CNI spec)"
        )
    return None


def check_ifname(value: str) -> None:
    """CNI_IFNAME as Linux accepts an interface name: 1-15 bytes, not '.' or '..', no '/',
    ':' or whitespace (netlink would refuse it with a bare errno, e.g. ERANGE)."""
    if not isinstance(value, str) or not value:
        raise Refused("CNI_IFNAME is not set; the runtime must name the container's interface")
    size = len(value.encode("utf-8", "surrogateescape"))
    if size > MAX_IFNAME_BYTES:
        raise Refused(
            f"CNI_IFNAME {value!r} is {size} bytes long; an interface name has at most "
            f"{MAX_IFNAME_BYTES} (e.g. eth0)"
        )
    if value in (".", "..") or any(c in "/:" or c.isspace() for c in value):
        raise Refused(
            f"CNI_IFNAME {value!r} is not a valid interface name; use one without '/', ':' "
            "or whitespace, and not '.' or '..' (e.g. eth0)"
        )


def check_netns_path(value: str) -> None:
    """CNI_NETNS for ADD and CHECK: an absolute path (the agent checks it is a netns)."""
    if not isinstance(value, str) or not value:
        raise Refused("CNI_NETNS is not set; ADD and CHECK need the container's netns path")
    if not value.startswith("/"):
        raise Refused(
            f"CNI_NETNS {value!r} is not an absolute path; pass the container's network "
            "namespace, e.g. /run/netns/NAME or /proc/PID/ns/net"
        )


def check_mac(value: str, ip: str | None = None) -> str:
    """A static ``MAC=`` of CNI_ARGS, normalised to lower case: six colon-separated hex
    bytes, unicast (a multicast source MAC is dropped by every switch), not all-zero, and
    outside the derived range unless it is ``ip``'s own derived MAC."""
    mac = value.lower() if isinstance(value, str) else ""
    if not MAC_RE.match(mac):
        raise Refused(
            f"CNI_ARGS MAC={value} is not a MAC address; write six hex bytes separated by "
            f"':', e.g. MAC={EXAMPLE_MAC}"
        )
    if int(mac[:2], 16) & 1:
        raise Refused(
            f"CNI_ARGS MAC={value} is a multicast address; a pod needs a unicast MAC (even "
            f"first byte), e.g. MAC={EXAMPLE_MAC}"
        )
    if mac == "00:00:00:00:00:00":
        raise Refused(
            f"CNI_ARGS MAC={value} is all zeros; pick a unicast MAC, e.g. MAC={EXAMPLE_MAC}"
        )
    if mac.startswith(DERIVED_MAC_PREFIX) and (ip is None or mac != derived_mac(ip)):
        raise Refused(
            f"CNI_ARGS MAC={value} is in {DERIVED_MAC_PREFIX}xx:xx:xx:xx, which ovs-overlay "
            "keeps for MACs derived from pod addresses and gateways; pick another, e.g. "
            f"MAC={EXAMPLE_MAC}, or leave MAC= out"
        )
    return mac


def check_ip(value: str) -> str:
    """A static ``IP=`` of CNI_ARGS: a dotted-quad IPv4 address (no prefix length)."""
    try:
        if not isinstance(value, str):
            raise OSError
        socket.inet_pton(socket.AF_INET, value)  # strict: four decimal bytes, no shorthand
    except OSError:
        raise Refused(
            f"CNI_ARGS IP={value} is not an IPv4 address; write it as e.g. IP=100.64.0.7 "
            "(no prefix length)"
        ) from None
    return value


def check_request(
    command: str, container_id: str, ifname: str, netns: str | None, ip: str | None, mac: str | None
) -> tuple[str | None, str | None]:
    """Every check of one ADD, CHECK or DEL (DEL needs no netns: containerd's second DEL
    passes an empty one); returns the static IP and MAC, normalised."""
    check_container_id(container_id)
    check_ifname(ifname)
    if command in ("ADD", "CHECK"):
        check_netns_path(netns or "")
    ip = check_ip(ip) if ip is not None else None
    return ip, check_mac(mac, ip) if mac is not None else None
