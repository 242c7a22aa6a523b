"""The registers br-int's stages pass to each other, and what their values mean.

A stage writes what it decided into a register field and a later stage acts on it, so
stages that come later (conntrack, policy) sit between deciding and acting without
either knowing:

    reg0[0..3]    source kind: pod, gateway (the host), tunnel        classifier writes
    reg0[4..7]    destination kind: a port (reg1), a local pod's port     l2_forward writes
                  (reg1), or the flood group
    reg1          the output port                                     l2_forward writes
    reg2[0..15]   the network's dense index, also its conntrack zone  classifier writes
    reg3          the policy rule that allowed a new connection's egress  egress_rules
    reg4          the policy rule that allowed its ingress               ingress_rules
                  (rule ids: netpol/compile.py, the cookies' object ids; 0: not isolated)

Registers are zero when a packet enters the bridge.  reg0[8..31], reg2[16..31] and
reg5..reg15 are free for the stages to come.
"""

from __future__ import annotations

from enum import IntEnum

from openflow.model import Bits, Load

SOURCE_KIND = Bits("reg0", 0, 3)
DEST_KIND = Bits("reg0", 4, 7)
OUT_PORT = Bits("reg1", 0, 31)
NETWORK = Bits("reg2", 0, 15)
EGRESS_RULE = Bits("reg3", 0, 31)
INGRESS_RULE = Bits("reg4", 0, 31)


class Source(IntEnum):
    POD = 1
    GATEWAY = 2  # the host's own port into a network
    TUNNEL = 3


class Dest(IntEnum):
    PORT = 1  # output to the port in OUT_PORT
    FLOOD = 2  # the network's flood group
    POD = 3  # output to the local pod's port in OUT_PORT (a reply may go to the gateway)


def mask(bits: Bits) -> int:
    return ((1 << (bits.end - bits.start + 1)) - 1) << bits.start


def load(bits: Bits, value: int) -> Load:
    """Write ``value`` into ``bits``, leaving the register's other bits alone."""
    return Load(bits.name, value << bits.start, mask(bits))


def matching(bits: Bits, value: int) -> tuple[int, int] | int:
    """The match value for ``bits`` holding ``value``: masked unless it is the whole
    register."""
    if bits.start == 0 and bits.end == 31:
        return value
    return (value << bits.start, mask(bits))
