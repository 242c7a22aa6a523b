"""Cookies and group ids: which feature (and which of its objects) installed a flow or
a group, and in which agent generation.

cookie = feature (8 bits) << 56 | object id (24 bits) << 32 | generation (32 bits).
The feature lets a person (and a cookie mask) pick out, say, every ARP responder flow;
the object id gives one object of a feature (a policy rule) flows of its own, so
its flows and their counters are selected by mask (``feature_mask``, ``object_mask``);
the generation lets a restarted agent install its flows next to the old ones and then
delete the old generation by cookie mask (GENERATION_MASK, whatever the feature), so
traffic never meets an empty table.

Group ids are ranged per feature the same way: a network's flood group keeps the VNI
as its id (1 .. 2^24-1, what a VNI can be), every other feature's groups sit above
that, at feature << 24 | object id.
"""

from __future__ import annotations

from enum import IntEnum

GENERATION_BITS, OBJECT_BITS, FEATURE_BITS = 32, 24, 8
GENERATION_MASK = (1 << GENERATION_BITS) - 1
OBJECT_SHIFT = GENERATION_BITS
FEATURE_SHIFT = GENERATION_BITS + OBJECT_BITS
OBJECT_MASK = ((1 << OBJECT_BITS) - 1) << OBJECT_SHIFT
FEATURE_MASK = ((1 << FEATURE_BITS) - 1) << FEATURE_SHIFT
MAX_OBJECT_ID = (1 << OBJECT_BITS) - 1
GROUP_OBJECT_MASK = (1 << 24) - 1  # the object part of a group id


class Feature(IntEnum):
    DEFAULTS = 1
    CLASSIFY_LOCAL = 2
    CLASSIFY_TUNNEL = 3
    PORT_SECURITY = 4
    ARP_RESPONDER = 5
    L2_LOCAL = 6
    L2_REMOTE = 7
    FLOOD = 8
    GATEWAY = 9
    # Flows OVS adds itself (learn in host_conntrack), always generation 0: no generation
    # cleanup deletes them and none counts them as leftovers; their idle timeouts do.
    HOST_RETURN_LEARNED = 10
    # NetworkPolicy (netpol/compile.py): the fixed flows of its tables; a rule's own flows
    # (its conjunction's action, or its allow-all), object id = the rule's id, so its hits
    # are counted by cookie mask; the clause flows rules share; a pod's isolation drops.
    POLICY = 11
    POLICY_RULE = 12
    POLICY_CLAUSE = 13
    POLICY_ISOLATION = 14
    CANARY = 15


def cookie(feature: Feature, generation: int, object_id: int = 0) -> int:
    if not 0 <= generation <= GENERATION_MASK:
        raise ValueError(f"generation {generation} does not fit in {GENERATION_BITS} bits")
    if not 0 <= object_id <= MAX_OBJECT_ID:
        raise ValueError(f"object id {object_id} does not fit in {OBJECT_BITS} bits")
    return int(feature) << FEATURE_SHIFT | object_id << OBJECT_SHIFT | generation


def feature_of(value: int) -> Feature:
    return Feature(value >> FEATURE_SHIFT)


def object_of(value: int) -> int:
    return (value & OBJECT_MASK) >> OBJECT_SHIFT


def generation_of(value: int) -> int:
    return value & GENERATION_MASK


def feature_mask(feature: Feature) -> tuple[int, int]:
    """(cookie, cookie_mask) selecting every flow of ``feature``, any generation:
    ``ovs-ofctl dump-flows br-int cookie=0x700000000000000/0xff00000000000000``."""
    return int(feature) << FEATURE_SHIFT, FEATURE_MASK


def object_mask(feature: Feature, object_id: int) -> tuple[int, int]:
    """(cookie, cookie_mask) selecting the flows of one object of ``feature``."""
    return cookie(feature, 0, object_id), FEATURE_MASK | OBJECT_MASK


def group_id(feature: Feature, object_id: int) -> int:
    """A group's id: a flood group's is its network's VNI; any other feature's is
    feature << 24 | object id, above every VNI."""
    if not 1 <= object_id <= GROUP_OBJECT_MASK:
        raise ValueError(f"group object id {object_id} is not in 1..{GROUP_OBJECT_MASK}")
    if feature == Feature.FLOOD:
        return object_id
    return int(feature) << 24 | object_id
