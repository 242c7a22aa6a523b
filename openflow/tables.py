"""The br-int tables: ids and names.

The names are written into OVSDB's Flow_Table rows so that
``ovs-ofctl --names dump-flows br-int`` prints ``table=l2_lookup`` instead of
``table=30``; a person debugging the pipeline reads what a table is for.
Ids leave gaps of ten so a table can be inserted later without renumbering.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Table:
    """One OpenFlow table of the pipeline."""

    table_id: int
    name: str
    purpose: str


CLASSIFIER = Table(0, "classifier", "which network a packet belongs to, by in_port or VNI")
PORT_SECURITY = Table(10, "port_security", "a pod may send only from its own MAC and IP")
ARP_RESPONDER = Table(20, "arp_responder", "ARP for known addresses answered in the switch")
L2_LOOKUP = Table(30, "l2_lookup", "destination MAC to a local port or a peer host")
POLICY = Table(40, "policy", "reserved for network policy")
OUTPUT = Table(50, "output", "final output")

PIPELINE: tuple[Table, ...] = (
    CLASSIFIER,
    PORT_SECURITY,
    ARP_RESPONDER,
    L2_LOOKUP,
    POLICY,
    OUTPUT,
)


def table_names() -> dict[int, str]:
    """Table id to name, as OVSDB's Bridge.flow_tables wants it."""
    return {t.table_id: t.name for t in PIPELINE}
