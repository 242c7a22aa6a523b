"""The br-int tables: ids, names, and what each may match and where it may go.

The names are written into OVSDB's Flow_Table rows so that
``ovs-ofctl --names dump-flows br-int`` prints ``table=l2_forward`` instead of
``table=50``; a person debugging the pipeline reads what a table is for.
Ids leave gaps of ten so a table can be inserted later without renumbering.

Each table declares the fields its flows may match and the tables they may go
to; a flow that breaks its table's declaration fails when it is built, in the
pure code and its tests, not later on the switch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Table:
    """One OpenFlow table of the pipeline."""

    table_id: int
    name: str
    purpose: str
    matches: frozenset[str] = frozenset()
    next_tables: tuple[int, ...] = ()

    def check(self, flow) -> None:
        """Raise if ``flow`` matches a field or goes to a table this table does not allow
        (by goto, resubmit, or ct's recirculation)."""
        for field in flow.match:
            if field.name not in self.matches:
                raise ValueError(f"table {self.name} does not match on {field.name}")
        targets = [flow.goto] + [getattr(a, "table", None) for a in flow.actions]
        for target in targets:
            if target is not None and target.table_id not in self.next_tables:
                raise ValueError(f"table {self.name} may not go to table {target.name}")


# Table ids.  Ranges left free for the stages still to come (docs/pipeline.md):
#   30-39 conntrack and service load balancing, 40-49 l3_forward (routing),
#   60-79 egress and ingress policy, between deciding and acting; 80-89 the way back for the
#   host's forwarded connections (host_conntrack, host_return).
CLASSIFIER = Table(
    0,
    "classifier",
    "source kind and network into registers: by in_port, or by VNI from a known peer",
    frozenset({"in_port", "tun_ipv4_src", "tunnel_id"}),
    (10, 20, 50),
)
PORT_SECURITY = Table(
    10,
    "port_security",
    "a pod may send only from its own MAC and IP, and ARP only for its own IP",
    frozenset({"in_port", "eth_src", "eth_type", "ipv4_src", "arp_spa", "arp_sha"}),
    (20,),
)
ARP_RESPONDER = Table(
    20,
    "arp_responder",
    "ARP requests for known addresses answered in the switch",
    frozenset({"reg2", "eth_type", "arp_op", "arp_tpa"}),
    (50,),
)
L2_FORWARD = Table(
    50,
    "l2_forward",
    "decide: (network, destination MAC) to a port (and tunnel destination), or flood",
    frozenset({"reg2", "eth_dst"}),
    (80, 90),
)
HOST_CONNTRACK = Table(
    80,
    "host_conntrack",
    "a pod's TCP/UDP packet the host forwards learns its reply's way back to the gateway; "
    "a local pod's packets go on to host_return",
    frozenset({"reg0", "reg2", "eth_type", "ipv4_src", "ip_proto"}),
    (81, 90),
)
HOST_RETURN = Table(
    81,
    "host_return",
    "learned flows: replies of connections the gateway sent go back to the gateway, not to "
    "the pod (kube-proxy's DNAT is undone there)",
    frozenset(
        {"reg2", "eth_type", "ip_proto", "ipv4_src", "ipv4_dst"}
        | {"tcp_src", "tcp_dst", "udp_src", "udp_dst"}
    ),
    (90,),
)
OUTPUT = Table(
    90,
    "output",
    "act on the decision: output to the port in reg1, or to the network's flood group",
    frozenset({"reg0", "reg2"}),
    (),
)
CANARY = Table(
    250,
    "canary",
    "one flow the agent watches: gone means ovs-vswitchd restarted and lost its flows",
    frozenset(),
    (),
)

PIPELINE: tuple[Table, ...] = (
    CLASSIFIER,
    PORT_SECURITY,
    ARP_RESPONDER,
    L2_FORWARD,
    HOST_CONNTRACK,
    HOST_RETURN,
    OUTPUT,
    CANARY,
)


def table_names() -> dict[int, str]:
    """Table id to name, as OVSDB's Bridge.flow_tables wants it."""
    return {t.table_id: t.name for t in PIPELINE}
