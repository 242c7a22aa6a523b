"""``ovs-appctl ofproto/trace`` output as values: the br-int steps (table, match, priority,
cookie, actions, OVS's notes) of every pass, and each pass's datapath actions.

A ``ct(table=N)`` makes OVS trace a second pass (``recirc(0x1) - resume conntrack``), so a
trace is a list of passes; the packet's fate is the last pass's.  Steps on other bridges
(``br-phy``, where a tunnelled packet leaves) are not the pipeline's and are skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_STEP = re.compile(r"^\s*(\d+)\. (?:(.*), )?priority (\d+)(?:, cookie (0x[0-9a-f]+))?$")
_BRIDGE = re.compile(r'^bridge\("([^"]+)"\)$')
_OUTPUT = re.compile(r"^output port is (\d+)$")


@dataclass(frozen=True)
class RawStep:
    """One flow the packet matched, as ofproto/trace prints it."""

    table_id: int
    match: str  # "" for a table's catch-all
    priority: int
    cookie: int | None
    actions: tuple[str, ...]
    notes: tuple[str, ...]  # OVS's "-> ..." lines under the step

    @property
    def output_ports(self) -> tuple[int, ...]:
        return tuple(int(m.group(1)) for n in self.notes if (m := _OUTPUT.search(n)))


@dataclass(frozen=True)
class TracePass:
    steps: tuple[RawStep, ...]
    datapath_actions: str


def parse(text: str, bridge: str = "br-int") -> tuple[TracePass, ...]:
    """The passes of one ofproto/trace run; ValueError if ``text`` has no pass."""
    passes: list[TracePass] = []
    steps: list[RawStep] = []
    current: dict | None = None
    on_bridge = False

    def close_step() -> None:
        nonlocal current
        if current is not None:
            steps.append(
                RawStep(
                    current["table_id"],
                    current["match"],
                    current["priority"],
                    current["cookie"],
                    tuple(current["actions"]),
                    tuple(current["notes"]),
                )
            )
            current = None

    for line in text.splitlines():
        stripped = line.strip()
        if m := _BRIDGE.match(stripped):
            close_step()
            on_bridge = m.group(1) == bridge
        elif stripped.startswith("Datapath actions:"):
            close_step()
            passes.append(TracePass(tuple(steps), stripped.split(":", 1)[1].strip()))
            steps = []
            on_bridge = False
        elif stripped.startswith(("Final flow:", "Megaflow:")):
            close_step()
            on_bridge = False
        elif not on_bridge or not stripped or stripped.startswith("---"):
            continue
        elif m := _STEP.match(line):
            close_step()
            current = {
                "table_id": int(m.group(1)),
                "match": m.group(2) or "",
                "priority": int(m.group(3)),
                "cookie": int(m.group(4), 16) if m.group(4) else None,
                "actions": [],
                "notes": [],
            }
        elif current is not None:
            if stripped.startswith("->"):
                current["notes"].append(stripped[2:].strip())
            else:
                current["actions"].append(stripped)
    if not passes:
        raise ValueError("ofproto/trace printed no datapath actions; is this its output?")
    return tuple(passes)


def fields(match: str) -> dict[str, str]:
    """A printed match as field -> value (``ip`` -> "")."""
    out: dict[str, str] = {}
    for part in match.split(","):
        if part:
            key, _, value = part.partition("=")
            out[key] = value.strip('"')
    return out
