"""Cookies: which feature installed a flow, and in which agent generation.

cookie = feature << 32 | generation.  The feature lets a person (and a cookie
mask) pick out, say, every ARP responder flow; the generation lets a restarted
agent install its flows next to the old ones and then delete the old
generation by cookie mask, so traffic never meets an empty table.
"""

from __future__ import annotations

from enum import IntEnum

GENERATION_MASK = 0xFFFFFFFF
FEATURE_MASK = 0xFFFFFFFF << 32


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
    CANARY = 15


def cookie(feature: Feature, generation: int) -> int:
    if not 0 <= generation <= GENERATION_MASK:
        raise ValueError(f"generation {generation} does not fit in 32 bits")
    return int(feature) << 32 | generation


def feature_of(value: int) -> Feature:
    return Feature(value >> 32)


def generation_of(value: int) -> int:
    return value & GENERATION_MASK
