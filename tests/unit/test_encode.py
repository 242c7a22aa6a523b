"""Our flow-mod bytes equal os-ken's, for every flow the pipeline builds."""

from __future__ import annotations

from hypothesis import given, settings
from os_ken.ofproto import ofproto_protocol, ofproto_v1_3

from openflow import encode, pipeline, sender
from tests.unit import l3_flows
from tests.unit.test_pipeline import STATE, host_states

DP = ofproto_protocol.ProtocolDesc(ofproto_v1_3.OFP_VERSION)


def osken_bytes(flow, xid):
    msg = sender._flow_mod(DP, flow, DP.ofproto.OFPFC_ADD)
    msg.set_xid(xid)
    msg.serialize()
    return bytes(msg.buf)


def test_every_flow_of_a_rich_state_encodes_as_os_ken_does():
    flows, _ = pipeline.build(STATE, generation=0xDEADBEEF)
    for i, flow in enumerate(flows):
        assert encode.flow_add(flow, i + 1) == osken_bytes(flow, i + 1), flow


@settings(max_examples=40, deadline=None)
@given(host_states())
def test_any_state_encodes_as_os_ken_does(state):
    for flow in pipeline.build(state, generation=3)[0]:
        assert encode.flow_add(flow, 77) == osken_bytes(flow, 77), flow


def test_every_l3_and_conntrack_action_and_field_encodes_as_os_ken_does():
    """Registers, ct_state/ct_zone/ct_mark, L4 ports, conj_id; reg_load2, output:reg,
    resubmit, ct (zone immediate and from a register, commit, table, nat src/dst/plain,
    exec set_field and masked load of ct_mark), dec_ttl, conjunction."""
    flows = l3_flows.flows()
    kinds = {type(a).__name__ for f in flows for a in f.actions}
    assert kinds >= {"Load", "OutputReg", "Resubmit", "DecTtl", "Ct", "Conjunction"}
    for i, flow in enumerate(flows):
        assert encode.flow_add(flow, i + 1) == osken_bytes(flow, i + 1), flow
