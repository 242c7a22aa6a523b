"""The flow-based tunnel port.

One port per tunnel type, whose remote end and key are set per packet by flows
(``options:remote_ip=flow``, ``options:key=flow``): hosts join and leave the
mesh by changing flows, never ports, as in Antrea.  The outer source address is
the underlay route's (this host's tunnel IP on br-phy), which peers check as
``tun_src``.  The port sets no ``options:local_ip``: with it, OVS 3.1's userspace
tunnel lookup also wants a *local* route for the source, which it only has from
the kernel's routes, and those it drops on every link change (docs/architecture.md).
"""

from __future__ import annotations

from dataclasses import dataclass

# Bytes of outer headers each type adds to an IPv4 underlay packet; the pod MTU
# is the underlay MTU minus this.
TUNNEL_OVERHEAD = {"vxlan": 50, "geneve": 58, "gre": 38}
TUNNEL_TYPES = tuple(TUNNEL_OVERHEAD)


@dataclass(frozen=True)
class TunnelPort:
    """The tunnel port this host puts on its integration bridge."""

    tunnel_type: str = "vxlan"
    dst_port: int | None = None

    def __post_init__(self) -> None:
        if self.tunnel_type not in TUNNEL_TYPES:
            raise ValueError(
                f"tunnel type {self.tunnel_type!r} is not supported; use one of "
                f"{', '.join(TUNNEL_TYPES)}"
            )
        if self.dst_port is not None:
            if self.tunnel_type == "gre":
                raise ValueError("a GRE tunnel has no UDP port; leave dst_port unset for gre")
            if not 1 <= self.dst_port <= 65535:
                raise ValueError(f"tunnel dst_port {self.dst_port} is outside 1..65535")

    @property
    def name(self) -> str:
        return f"tun-{self.tunnel_type}"

    @property
    def overhead(self) -> int:
        return TUNNEL_OVERHEAD[self.tunnel_type]

    def options(self) -> dict[str, str]:
        """The Interface.options that make the port flow-based."""
        opts = {"remote_ip": "flow", "key": "flow"}
        if self.dst_port is not None:
            opts["dst_port"] = str(self.dst_port)
        return opts
