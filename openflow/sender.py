"""The one module in openflow/ that talks to a switch: messages to os-ken, then send.

Everything else in openflow/ is values.  Here each value becomes an os-ken
OpenFlow 1.3 message with the datapath attached and is sent; the caller keeps
the xids to match errors and barrier replies.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from openflow import cookies, encode
from openflow.diff import (
    Barrier,
    FlowAdd,
    FlowDelete,
    GenerationDelete,
    GroupAdd,
    GroupDelete,
    GroupModify,
    Message,
)
from openflow.model import (
    FIELD_BITS,
    Action,
    Bits,
    Conjunction,
    Ct,
    DecTtl,
    Flow,
    GroupAction,
    Learn,
    LearnLoadValue,
    LearnMatchField,
    LearnMatchValue,
    LearnOutput,
    Load,
    Move,
    Nat,
    Output,
    OutputReg,
    Resubmit,
    SetField,
)


def to_ofmsg(dp, message: Message):
    """The os-ken message for one of our messages, on datapath ``dp``."""
    ofp, parser = dp.ofproto, dp.ofproto_parser
    if isinstance(message, FlowAdd):
        return _flow_mod(dp, message.flow, ofp.OFPFC_ADD)
    if isinstance(message, FlowDelete):
        # A strict delete names table, priority and match; its instructions are ignored,
        # so none are sent (and os-ken's REG_LOAD2 grows a class-level list each time it
        # serializes one).
        return _flow_mod(dp, message.flow, ofp.OFPFC_DELETE_STRICT, instructions=False)
    if isinstance(message, GenerationDelete):
        return parser.OFPFlowMod(
            dp,
            cookie=message.generation,
            cookie_mask=cookies.GENERATION_MASK,
            table_id=ofp.OFPTT_ALL,
            command=ofp.OFPFC_DELETE,
            out_port=ofp.OFPP_ANY,
            out_group=ofp.OFPG_ANY,
        )
    if isinstance(message, GroupAdd | GroupModify):
        command = ofp.OFPGC_ADD if isinstance(message, GroupAdd) else ofp.OFPGC_MODIFY
        buckets = [parser.OFPBucket(actions=_actions(dp, b.actions)) for b in message.group.buckets]
        return parser.OFPGroupMod(dp, command, ofp.OFPGT_ALL, message.group.group_id, buckets)
    if isinstance(message, GroupDelete):
        return parser.OFPGroupMod(dp, ofp.OFPGC_DELETE, ofp.OFPGT_ALL, message.group_id, [])
    if isinstance(message, Barrier):
        return parser.OFPBarrierRequest(dp)
    raise TypeError(f"unknown message {message!r}")


# Flow adds go to os-ken's send queue in chunks of about this many bytes.  One write per
# flow mod (os-ken's way) cost a green-thread switch and a syscall each, and over
# br-int.mgmt (a unix socket) it woke vswitchd for every message: 20,000 flow adds took
# 3 s to send there, 0.9 s over TCP; a raw socket wrote them in 0.15 s.
CHUNK = 64 * 1024


def send(dp, messages: Iterable[Message], sent: Callable[[int, Message], None]) -> int | None:
    """Send ``messages`` in order, calling ``sent(xid, message)`` for each (for error
    reports); returns the last xid (None: nothing sent).  ``messages`` may be a
    generator: each is dropped once encoded, so a full sync never holds its flows.

    Flow adds, the bulk of a full sync, are encoded by openflow/encode.py (byte for
    byte what os-ken would send, tested) and written in chunks (CHUNK); everything
    else goes through os-ken, after the flow adds before it."""
    xid = None
    chunk = bytearray()
    for message in messages:
        if isinstance(message, FlowAdd):
            xid = dp.set_xid(_Xid())
            chunk += encode.flow_add(message.flow, xid)
            if len(chunk) >= CHUNK:
                dp.send(bytes(chunk))
                chunk.clear()
        else:
            if chunk:
                dp.send(bytes(chunk))
                chunk.clear()
            msg = to_ofmsg(dp, message)
            dp.set_xid(msg)
            dp.send_msg(msg)
            xid = msg.xid
        sent(xid, message)
    if chunk:
        dp.send(bytes(chunk))
    return xid


class _Xid:
    """What Datapath.set_xid needs to hand out the next xid for bytes we encode."""

    xid = None

    def set_xid(self, xid: int) -> None:
        self.xid = xid


def _match(dp, flow: Flow):
    fields = {}
    for f in flow.match:
        fields[f.name] = f.value if f.mask is None else (f.value, f.mask)
    return dp.ofproto_parser.OFPMatch(**fields)


def _flow_mod(dp, flow: Flow, command: int, instructions: bool = True):
    ofp, parser = dp.ofproto, dp.ofproto_parser
    inst = _instructions(dp, flow) if instructions else []
    return parser.OFPFlowMod(
        dp,
        cookie=flow.cookie,
        table_id=flow.table.table_id,
        command=command,
        priority=flow.priority,
        match=_match(dp, flow),
        instructions=inst,
        out_port=ofp.OFPP_ANY,
        out_group=ofp.OFPG_ANY,
    )


def _instructions(dp, flow: Flow) -> list:
    ofp, parser = dp.ofproto, dp.ofproto_parser
    inst = []
    if flow.actions:
        inst.append(
            parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, _actions(dp, flow.actions))
        )
    if flow.write_metadata is not None:
        inst.append(parser.OFPInstructionWriteMetadata(*flow.write_metadata))
    if flow.goto is not None:
        inst.append(parser.OFPInstructionGotoTable(flow.goto.table_id))
    return inst


def _actions(dp, actions: tuple[Action, ...]) -> list:
    parser = dp.ofproto_parser
    out = []
    for a in actions:
        if isinstance(a, Output):
            out.append(parser.OFPActionOutput(a.port))
        elif isinstance(a, SetField):
            out.append(parser.OFPActionSetField(**{a.name: a.value}))
        elif isinstance(a, Move):
            out.append(parser.NXActionRegMove(a.src, a.dst, FIELD_BITS[a.src]))
        elif isinstance(a, GroupAction):
            out.append(parser.OFPActionGroup(a.group_id))
        elif isinstance(a, Load):
            out.append(parser.NXActionRegLoad2(a.name, a.value, a.mask))
        elif isinstance(a, OutputReg):
            out.append(parser.NXActionOutputReg(a.src.ofs_nbits, a.src.name, 0xFFFF))
        elif isinstance(a, Resubmit):
            out.append(parser.NXActionResubmitTable(table_id=a.table.table_id))
        elif isinstance(a, DecTtl):
            out.append(parser.OFPActionDecNwTtl())
        elif isinstance(a, Ct):
            out.append(_ct(dp, a))
        elif isinstance(a, Conjunction):
            out.append(parser.NXActionConjunction(a.clause - 1, a.n_clauses, a.conj_id))
        elif isinstance(a, Learn):
            out.append(_learn(dp, a))
        else:
            raise TypeError(f"unknown action {a!r}")
    return out


def _ct(dp, ct: Ct):
    parser = dp.ofproto_parser
    if isinstance(ct.zone, int):
        zone_src, zone = "", ct.zone
    else:
        zone_src, zone = ct.zone.name, ct.zone.ofs_nbits
    nested = ([_nat(dp, ct.nat)] if ct.nat is not None else []) + _actions(dp, ct.exec)
    return parser.NXActionCT(
        flags=1 if ct.commit else 0,
        zone_src=zone_src,
        zone_ofs_nbits=zone,
        recirc_table=ct.table.table_id if ct.table is not None else 0xFF,
        alg=0,
        actions=nested,
    )


def _nat(dp, nat: Nat):
    kwargs = {}
    if nat.ip_min is not None:
        kwargs["range_ipv4_min"] = nat.ip_min
    if nat.ip_max is not None:
        kwargs["range_ipv4_max"] = nat.ip_max
    if nat.port_min is not None:
        kwargs["range_proto_min"] = nat.port_min
        kwargs["range_proto_max"] = nat.port_max
    flags = {None: 0, "src": 1, "dst": 2}[nat.kind]
    return dp.ofproto_parser.NXActionNAT(flags, **kwargs)


# os-ken's names of the NXM_OF_* fields a learn spec names (as encode.py's _NXM0).
_NXM_NAMES = {
    name: f"{name}_nxm"
    for name in ("in_port", "eth_dst", "eth_src", "eth_type", "ip_proto", "ipv4_src")
    + ("ipv4_dst", "tcp_src", "tcp_dst", "udp_src", "udp_dst")
}


def _subfield(bits: Bits) -> tuple[str, int]:
    return (_NXM_NAMES.get(bits.name, bits.name), bits.start)


def _learn(dp, learn: Learn):
    parser = dp.ofproto_parser
    specs = []
    for s in learn.specs:
        if isinstance(s, LearnOutput):
            n_bits = s.src.end - s.src.start + 1
            specs.append(parser.NXFlowSpecOutput(src=_subfield(s.src), dst="", n_bits=n_bits))
            continue
        n_bits = s.dst.end - s.dst.start + 1
        src = s.value if isinstance(s, LearnMatchValue | LearnLoadValue) else _subfield(s.src)
        kind = (
            parser.NXFlowSpecMatch
            if isinstance(s, LearnMatchValue | LearnMatchField)
            else (parser.NXFlowSpecLoad)
        )
        specs.append(kind(src=src, dst=_subfield(s.dst), n_bits=n_bits))
    return parser.NXActionLearn(
        table_id=learn.table.table_id,
        specs=specs,
        idle_timeout=learn.idle_timeout,
        hard_timeout=learn.hard_timeout,
        priority=learn.priority,
        cookie=learn.cookie,
        fin_idle_timeout=learn.fin_idle_timeout,
        fin_hard_timeout=learn.fin_hard_timeout,
    )
