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
#   60-79 egress and ingress policy (below), between deciding and acting; 80-89 the way back
#   for the host's forwarded connections (host_conntrack, host_return).
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
    (60, 90),
)
# NetworkPolicy (netpol/compile.py; docs/pipeline.md, 60-72): every unicast decision
# passes policy_conntrack, whose miss (another network, no policy program yet) goes on.
_L4_DST = frozenset({"eth_type", "ip_proto", "tcp_dst", "udp_dst", "sctp_dst"})
POLICY_CONNTRACK = Table(
    60,
    "policy_conntrack",
    "a pod network's IPv4 packet goes through conntrack (zone: the network); others pass",
    frozenset({"reg2", "eth_type"}),
    (61, 80),
)
POLICY_STATE = Table(
    61,
    "policy_state",
    "established and related pass, invalid is dropped, a new connection is judged",
    frozenset({"ct_state"}),
    (62, 80),
)
EGRESS_RULES = Table(
    62,
    "egress_rules",
    "a new connection from a local pod: allowed by a rule of a policy isolating it (a "
    "conjunction of pod, destination and port)",
    frozenset({"in_port", "ipv4_dst", "conj_id"}) | _L4_DST,
    (63, 70),
)
EGRESS_ISOLATION = Table(
    63,
    "egress_isolation",
    "no rule allowed it: dropped from a pod a policy isolates for egress, else on",
    frozenset({"in_port"}),
    (70,),
)
INGRESS_RULES = Table(
    70,
    "ingress_rules",
    "a new connection to a local pod: allowed by a rule of a policy isolating it (a "
    "conjunction of pod, source and port)",
    frozenset({"reg1", "ipv4_src", "conj_id"}) | _L4_DST,
    (71, 72),
)
INGRESS_ISOLATION = Table(
    71,
    "ingress_isolation",
    "no rule allowed it: dropped to a pod a policy isolates for ingress, else on",
    frozenset({"reg1"}),
    (72,),
)
POLICY_COMMIT = Table(
    72,
    "policy_commit",
    "both verdicts given: the connection is committed, so its later packets and replies pass",
    frozenset({"eth_type"}),
    (80,),
)
POLICY_TABLES = (
    POLICY_CONNTRACK,
    POLICY_STATE,
    EGRESS_RULES,
    EGRESS_ISOLATION,
    INGRESS_RULES,
    INGRESS_ISOLATION,
    POLICY_COMMIT,
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
    *POLICY_TABLES,
    HOST_CONNTRACK,
    HOST_RETURN,
    OUTPUT,
    CANARY,
)


def table_names() -> dict[int, str]:
    """Table id to name, as OVSDB's Bridge.flow_tables wants it."""
    return {t.table_id: t.name for t in PIPELINE}
