"""OpenFlow 1.3 FLOW_MOD (add) bytes for a Flow, without os-ken's object model.

A full sync sends every flow (20,000 at 500 peers and 10,000 remote endpoints); os-ken
builds each flow mod from match-field, action and instruction objects and spent ~200 µs
a flow on it, most of a restart's time.  This encodes the few match fields and actions
the pipeline uses straight with ``struct`` (the Nicira extension actions in the layout
OVS's nx-match and ofp-actions define).  tests/unit/test_encode.py holds its bytes
equal to os-ken's for every flow the pipeline builds, so os-ken stays the reference.
"""

from __future__ import annotations

import functools
import ipaddress
import struct

from openflow.model import (
    REGISTERS,
    Bits,
    Conjunction,
    Ct,
    DecTtl,
    Flow,
    GroupAction,
    Learn,
    LearnLoadField,
    LearnLoadValue,
    LearnMatchField,
    LearnMatchValue,
    LearnOutput,
    Load,
    MatchField,
    Move,
    Nat,
    Output,
    OutputReg,
    Resubmit,
    SetField,
)

OFP_VERSION = 4
OFPT_FLOW_MOD = 14
OFPFC_ADD = 0
OFP_NO_BUFFER = 0xFFFFFFFF
OFPP_ANY = 0xFFFFFFFF
OFPG_ANY = 0xFFFFFFFF
OFPCML_MAX = 0xFFE5
OFPMT_OXM = 1
OFPIT_GOTO_TABLE, OFPIT_WRITE_METADATA, OFPIT_APPLY_ACTIONS = 1, 2, 4
OFPAT_OUTPUT, OFPAT_GROUP, OFPAT_SET_FIELD, OFPAT_EXPERIMENTER = 0, 22, 25, 0xFFFF
OFPAT_DEC_NW_TTL = 24
NX_EXPERIMENTER_ID = 0x00002320
NXAST_REG_MOVE = 6
NXAST_RESUBMIT_TABLE, NXAST_OUTPUT_REG, NXAST_LEARN = 14, 15, 16
NXAST_REG_LOAD2, NXAST_CONJUNCTION, NXAST_CT, NXAST_NAT = 33, 34, 35, 36
OFPP_IN_PORT_16 = 0xFFF8  # resubmit's in_port: "the packet's own"
NX_CT_F_COMMIT = 1
NX_CT_RECIRC_NONE = 0xFF
NX_NAT_F_SRC, NX_NAT_F_DST = 1, 2
NX_NAT_RANGE_IPV4_MIN, NX_NAT_RANGE_IPV4_MAX = 1, 2
NX_NAT_RANGE_PROTO_MIN, NX_NAT_RANGE_PROTO_MAX = 16, 32
OUTPUT_REG_MAX_LEN = 0xFFFF  # what ovs-ofctl writes for output:reg

# name -> (OXM class, field, bytes, kind); the classes are OpenFlow basic (0x8000) and
# Nicira's NXM_1 (0x0001) for the tunnel addresses.
_FIELDS = {
    "in_port": (0x8000, 0, 4, "int"),
    "metadata": (0x8000, 2, 8, "int"),
    "eth_dst": (0x8000, 3, 6, "mac"),
    "eth_src": (0x8000, 4, 6, "mac"),
    "eth_type": (0x8000, 5, 2, "int"),
    "ip_proto": (0x8000, 10, 1, "int"),
    "ipv4_src": (0x8000, 11, 4, "ip"),
    "ipv4_dst": (0x8000, 12, 4, "ip"),
    "arp_op": (0x8000, 21, 2, "int"),
    "arp_spa": (0x8000, 22, 4, "ip"),
    "arp_tpa": (0x8000, 23, 4, "ip"),
    "arp_sha": (0x8000, 24, 6, "mac"),
    "arp_tha": (0x8000, 25, 6, "mac"),
    "tunnel_id": (0x8000, 38, 8, "int"),
    "tun_ipv4_src": (0x0001, 31, 4, "ip"),
    "tun_ipv4_dst": (0x0001, 32, 4, "ip"),
    "tcp_src": (0x8000, 13, 2, "int"),
    "tcp_dst": (0x8000, 14, 2, "int"),
    "udp_src": (0x8000, 15, 2, "int"),
    "udp_dst": (0x8000, 16, 2, "int"),
    "sctp_src": (0x8000, 17, 2, "int"),
    "sctp_dst": (0x8000, 18, 2, "int"),
    "icmpv4_type": (0x8000, 19, 1, "int"),
    **{reg: (0x0001, i, 4, "int") for i, reg in enumerate(REGISTERS)},
    "conj_id": (0x0001, 37, 4, "int"),
    "ct_state": (0x0001, 105, 4, "int"),
    "ct_zone": (0x0001, 106, 2, "int"),
    "ct_mark": (0x0001, 107, 4, "int"),
}

# A learn spec names its fields by NXM header, as ovs-ofctl writes them (NXM_OF_ETH_SRC[]):
# NXM_OF_* (class 0) here, registers as in _FIELDS; in_port is NXM_OF_IN_PORT (16 bits).
_NXM0 = {
    "in_port": (0, 2),
    "eth_dst": (1, 6),
    "eth_src": (2, 6),
    "eth_type": (3, 2),
    "ip_proto": (6, 1),
    "ipv4_src": (7, 4),
    "ipv4_dst": (8, 4),
    "tcp_src": (9, 2),
    "tcp_dst": (10, 2),
    "udp_src": (11, 2),
    "udp_dst": (12, 2),
}
NX_LEARN_SRC_FIELD, NX_LEARN_SRC_IMMEDIATE = 0, 1
NX_LEARN_DST_MATCH, NX_LEARN_DST_LOAD, NX_LEARN_DST_OUTPUT = 0, 1, 2


def _value(kind: str, size: int, value: int | str) -> bytes:
    if kind == "mac":
        return bytes.fromhex(str(value).replace(":", ""))
    if kind == "ip":
        return ipaddress.IPv4Address(value).packed
    return int(value).to_bytes(size, "big")


def _header(name: str, masked: bool = False) -> int:
    cls, field, size, _ = _FIELDS[name]
    return cls << 16 | field << 9 | int(masked) << 8 | (size * 2 if masked else size)


def _oxm(name: str, value, mask=None) -> bytes:
    _, _, size, kind = _FIELDS[name]
    body = _value(kind, size, value)
    if mask is not None:
        body += _value(kind, size, mask)
    return struct.pack("!I", _header(name, mask is not None)) + body


def _sort_key(name: str) -> int:
    """os-ken writes match fields ordered by its OXM number: class << 7 | field."""
    cls, field, _, _ = _FIELDS[name]
    return cls << 7 | field


def _pad8(data: bytes) -> bytes:
    return data + bytes(-len(data) % 8)


@functools.lru_cache(maxsize=64)
def _match_prefix(names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sorted(names, key=_sort_key))


def _match(fields: tuple[MatchField, ...]) -> bytes:
    by_name = {f.name: f for f in fields}
    oxms = b"".join(
        _oxm(n, by_name[n].value, by_name[n].mask) for n in _match_prefix(tuple(by_name))
    )
    return _pad8(struct.pack("!HH", OFPMT_OXM, 4 + len(oxms)) + oxms)


def _nx(subtype: int, body: bytes) -> bytes:
    """A Nicira experimenter action: header, subtype and body, padded to 8 bytes."""
    data = struct.pack("!H", subtype) + body
    length = 8 + len(data) + (-(8 + len(data)) % 8)
    return _pad8(struct.pack("!HHI", OFPAT_EXPERIMENTER, length, NX_EXPERIMENTER_ID) + data)


def _nat(nat: Nat) -> bytes:
    flags = {None: 0, "src": NX_NAT_F_SRC, "dst": NX_NAT_F_DST}[nat.kind]
    present, ranges = 0, b""
    if nat.ip_min is not None:
        present |= NX_NAT_RANGE_IPV4_MIN
        ranges += ipaddress.IPv4Address(nat.ip_min).packed
    if nat.ip_max is not None:
        present |= NX_NAT_RANGE_IPV4_MAX
        ranges += ipaddress.IPv4Address(nat.ip_max).packed
    if nat.port_min is not None:
        present |= NX_NAT_RANGE_PROTO_MIN | NX_NAT_RANGE_PROTO_MAX
        ranges += struct.pack("!HH", nat.port_min, nat.port_max)
    return _nx(NXAST_NAT, struct.pack("!2xHH", flags, present) + ranges)


def _ct(ct: Ct) -> bytes:
    if isinstance(ct.zone, int):
        zone_src, zone = 0, ct.zone
    else:
        zone_src, zone = _header(ct.zone.name), ct.zone.ofs_nbits
    table = ct.table.table_id if ct.table is not None else NX_CT_RECIRC_NONE
    nested = (_nat(ct.nat) if ct.nat is not None else b"") + b"".join(_action(a) for a in ct.exec)
    body = struct.pack("!HIHB3xH", NX_CT_F_COMMIT if ct.commit else 0, zone_src, zone, table, 0)
    return _nx(NXAST_CT, body + nested)


def _subfield(bits: Bits) -> bytes:
    if bits.name in _NXM0:
        field, size = _NXM0[bits.name]
        header = field << 9 | size
    else:
        header = _header(bits.name)
    return struct.pack("!IH", header, bits.start)


def _learn_spec(spec) -> bytes:
    if isinstance(spec, LearnOutput):
        dst_type, bits, src, dst = NX_LEARN_DST_OUTPUT, spec.src, spec.src, None
    else:
        load = isinstance(spec, LearnLoadField | LearnLoadValue)
        dst_type = NX_LEARN_DST_LOAD if load else NX_LEARN_DST_MATCH
        bits, dst = spec.dst, spec.dst
        src = spec.src if isinstance(spec, LearnMatchField | LearnLoadField) else None
    n_bits = bits.end - bits.start + 1
    if isinstance(spec, LearnMatchValue | LearnLoadValue):
        head = NX_LEARN_SRC_IMMEDIATE << 13 | dst_type << 11 | n_bits
        body = spec.value.to_bytes((n_bits + 15) // 16 * 2, "big")
    else:
        head = NX_LEARN_SRC_FIELD << 13 | dst_type << 11 | n_bits
        body = _subfield(src)
    return struct.pack("!H", head) + body + (_subfield(dst) if dst is not None else b"")


def _learn(learn: Learn) -> bytes:
    body = struct.pack(
        "!HHHQHBxHH",
        learn.idle_timeout,
        learn.hard_timeout,
        learn.priority,
        learn.cookie,
        0,
        learn.table.table_id,
        learn.fin_idle_timeout,
        learn.fin_hard_timeout,
    )
    return _nx(NXAST_LEARN, body + b"".join(_learn_spec(s) for s in learn.specs))


def _action(action) -> bytes:
    if isinstance(action, Output):
        return struct.pack("!HHIH6x", OFPAT_OUTPUT, 16, action.port, OFPCML_MAX)
    if isinstance(action, SetField):
        oxm = _oxm(action.name, action.value)
        body = _pad8(struct.pack("!HH", OFPAT_SET_FIELD, 0) + oxm)
        return struct.pack("!HH", OFPAT_SET_FIELD, len(body)) + body[4:]
    if isinstance(action, GroupAction):
        return struct.pack("!HHI", OFPAT_GROUP, 8, action.group_id)
    if isinstance(action, Move):
        bits = _FIELDS[action.src][2] * 8
        return struct.pack(
            "!HHIHHHHII",
            OFPAT_EXPERIMENTER,
            24,
            NX_EXPERIMENTER_ID,
            NXAST_REG_MOVE,
            bits,
            0,
            0,
            _header(action.src),
            _header(action.dst),
        )
    if isinstance(action, Load):
        return _nx(NXAST_REG_LOAD2, _oxm(action.name, action.value, action.mask))
    if isinstance(action, OutputReg):
        src = action.src
        body = struct.pack("!HIH6x", src.ofs_nbits, _header(src.name), OUTPUT_REG_MAX_LEN)
        return _nx(NXAST_OUTPUT_REG, body)
    if isinstance(action, Resubmit):
        return _nx(
            NXAST_RESUBMIT_TABLE, struct.pack("!HB3x", OFPP_IN_PORT_16, action.table.table_id)
        )
    if isinstance(action, DecTtl):
        return struct.pack("!HH4x", OFPAT_DEC_NW_TTL, 8)
    if isinstance(action, Ct):
        return _ct(action)
    if isinstance(action, Conjunction):
        body = struct.pack("!BBI", action.clause - 1, action.n_clauses, action.conj_id)
        return _nx(NXAST_CONJUNCTION, body)
    if isinstance(action, Learn):
        return _learn(action)
    raise TypeError(f"no encoding for action {action!r}")


def flow_add(flow: Flow, xid: int) -> bytes:
    """The FLOW_MOD that adds ``flow`` (OFPFC_ADD), as os-ken would serialize it."""
    instructions = b""
    if flow.actions:
        actions = b"".join(_action(a) for a in flow.actions)
        instructions += struct.pack("!HH4x", OFPIT_APPLY_ACTIONS, 8 + len(actions)) + actions
    if flow.write_metadata is not None:
        instructions += struct.pack("!HH4xQQ", OFPIT_WRITE_METADATA, 24, *flow.write_metadata)
    if flow.goto is not None:
        instructions += struct.pack("!HHB3x", OFPIT_GOTO_TABLE, 8, flow.goto.table_id)
    body = (
        struct.pack(
            "!QQBBHHHIIIH2x",
            flow.cookie,
            0,
            flow.table.table_id,
            OFPFC_ADD,
            0,
            0,
            flow.priority,
            OFP_NO_BUFFER,
            OFPP_ANY,
            OFPG_ANY,
            0,
        )
        + _match(flow.match)
        + instructions
    )
    return struct.pack("!BBHI", OFP_VERSION, OFPT_FLOW_MOD, 8 + len(body), xid) + body
