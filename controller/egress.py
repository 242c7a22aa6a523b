"""The host's nftables table for its gateway: pods' egress SNATed to the host, nothing from
outside opening a connection to a pod, and the pods' veths kept out of the host's stack.

Why nftables in the host's namespace and not OVS conntrack NAT in br-int: egress leaves
through the host's own stack anyway (its routes, its underlay address, its interfaces);
SNAT there works the same on the kernel and the userspace datapath (an internal port is a
kernel device on both), and it composes with what else runs on a Kubernetes node
(kube-proxy's DNAT in the same namespace, the node's firewall) as every CNI's
masquerade rule does.  NAT in br-int would need the host's address, routes and ARP for
the outside inside the switch, and would bypass the node's own firewall.

The table is the agent's own (``ip ovs_overlay``): the agent writes it whole and replaces
it atomically (one libnftables transaction: declare, delete, define), and touches no
other table.  Its rules:

- ``prerouting`` (priority raw): anything the host's stack receives on a pod's veth end
  is dropped.  On the userspace datapath OVS reads those veths through packet sockets and
  the stack still sees the frames; a pod must enter the host only through br-int (its
  port security) and the gateway port.  (The kernel datapath takes the frames before the
  stack: the rule never matches there.)
- ``forward``: toward the gateway port from anywhere else, only connections that are
  replies (established/related) or that the host itself DNATed (kube-proxy's NodePort or
  ClusterIP rules) pass: a route to the pod network outside changes nothing.  From the
  gateway port to anywhere else, dropped when the network's egress is off.
- ``postrouting`` (srcnat): pods' packets leaving by any interface but the gateway port
  are masqueraded: their source becomes the address of the interface they leave by (the
  host's underlay address in the lab; on a node with several interfaces, the right one
  for each destination, which a fixed SNAT address would not be).
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass

LOG = logging.getLogger(__name__)

TABLE = "ovs_overlay"
FAMILY = "ip"


@dataclass(frozen=True)
class EgressSpec:
    """What the table is computed from: the gateway port, its network's CIDR, whether the
    network has egress, and the prefix of the pods' host-side veth names."""

    gateway_port: str
    cidr: str
    egress: bool
    pod_port_prefix: str

    def __post_init__(self) -> None:
        ipaddress.IPv4Network(self.cidr)  # a bad CIDR never reaches nft
        for name in (self.gateway_port, self.pod_port_prefix):
            if not name or not name.replace("-", "").replace("_", "").isalnum():
                raise ValueError(f"interface name {name!r} is not one nft can quote safely")


def ruleset(spec: EgressSpec) -> str:
    """The table as nft commands that replace it in one transaction."""
    gw, cidr, pods = spec.gateway_port, spec.cidr, spec.pod_port_prefix
    egress = [f'        ip saddr {cidr} oifname != "{gw}" masquerade'] if spec.egress else []
    no_egress = [] if spec.egress else [f'        iifname "{gw}" oifname != "{gw}" drop']
    lines = [
        f"table {FAMILY} {TABLE}",  # so the delete below never fails on a first run
        f"delete table {FAMILY} {TABLE}",
        f"table {FAMILY} {TABLE} {{",
        "    chain prerouting {",
        "        type filter hook prerouting priority raw; policy accept;",
        f'        iifname "{pods}*" drop',
        "    }",
        "    chain forward {",
        "        type filter hook forward priority filter; policy accept;",
        f'        oifname "{gw}" iifname != "{gw}" ct state established,related accept',
        f'        oifname "{gw}" iifname != "{gw}" ct status dnat accept',
        f'        oifname "{gw}" iifname != "{gw}" drop',
        *no_egress,
        "    }",
        "    chain postrouting {",
        "        type nat hook postrouting priority srcnat; policy accept;",
        *egress,
        "    }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def remove() -> str:
    """The commands that remove the table (nothing else), whether or not it exists."""
    return f"table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n"
