"""br-int's flows as ``ovs-overlayctl flows`` shows them: read from ``ovs-ofctl
--names dump-flows``, grouped by table (its name) and by feature (the cookie's top byte,
openflow/cookies.py), with packet and byte counters and totals.

A flow whose cookie carries another generation than the bridge's
``external_ids:ovs-overlay-generation`` is *stale* (left by an agent that died mid-sync,
or by a resync that has not finished removing it); one whose top byte is no feature is
*unknown* (someone else's flow, ``ovs-ofctl add-flow`` by hand).  Both are flagged:
the agent removes other generations after each full sync, so either one that stays is
worth a look (docs/troubleshooting.md, "Stale flows").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from netpol.evaluate import RuleRef
from netpol.hits import FlowCount, sum_hits
from openflow import cookies
from openflow.tables import PIPELINE

UNKNOWN = "unknown"
_STATS = {
    "cookie",
    "duration",
    "table",
    "n_packets",
    "n_bytes",
    "idle_timeout",
    "hard_timeout",
    "idle_age",
    "hard_age",
    "importance",
}


@dataclass(frozen=True)
class FlowEntry:
    table: str  # its name where it has one, else its number
    table_id: int | None
    cookie: str  # hex, as ovs-ofctl prints it
    feature: str  # a cookies.Feature name in lower case, or "unknown"
    generation: int
    priority: int
    match: str
    actions: str
    packets: int
    bytes: int
    stale: bool  # another generation than the bridge's
    unknown: bool  # no feature of ours


@dataclass(frozen=True)
class Totals:
    flows: int
    packets: int
    bytes: int
    stale: int
    unknown: int


@dataclass(frozen=True)
class FeatureGroup:
    feature: str
    totals: Totals
    flows: tuple[FlowEntry, ...]


@dataclass(frozen=True)
class TableGroup:
    table: str
    table_id: int | None
    totals: Totals
    features: tuple[FeatureGroup, ...]


@dataclass(frozen=True)
class FeatureTotals:
    feature: str
    totals: Totals


@dataclass(frozen=True)
class RuleTotals:
    """One NetworkPolicy rule's flows here and their counters (netpol/hits.py); policy,
    direction and index None when the store's policies have no rule with that id."""

    rule_id: int
    policy: str | None
    direction: str | None
    index: int | None
    flows: int
    packets: int
    bytes: int


@dataclass(frozen=True)
class DeniedTotals:
    """What the isolation flows of one direction dropped (no rule allowed it)."""

    direction: str
    flows: int
    packets: int
    bytes: int


@dataclass(frozen=True)
class FlowReport:
    bridge: str
    generation: int | None  # None: the bridge has no generation (no agent ever ran)
    table: str | None  # the filters asked for
    feature: str | None
    totals: Totals
    tables: tuple[TableGroup, ...]
    by_feature: tuple[FeatureTotals, ...]
    policy: str | None = None  # the --policy filter
    rules: tuple[RuleTotals, ...] = ()  # hits per policy rule, of the flows kept
    denied: tuple[DeniedTotals, ...] = ()  # per direction; none with a --policy filter


_TABLE_IDS = {t.name: t.table_id for t in PIPELINE}
_TABLE_NAMES = {t.table_id: t.name for t in PIPELINE}


def feature_name(cookie: int) -> str:
    try:
        return cookies.feature_of(cookie).name.lower()
    except ValueError:
        return UNKNOWN


def feature_filter(value: str) -> str:
    """A ``--feature`` value (a name in any case, ``-`` or ``_``, its number, or
    ``unknown``) as the name the report uses; ValueError listing the names."""
    names = [f.name.lower() for f in cookies.Feature]
    text = value.strip().lower().replace("-", "_")
    if text.isdigit() and int(text) in {int(f) for f in cookies.Feature}:
        return cookies.Feature(int(text)).name.lower()
    if text in names or text == UNKNOWN:
        return text
    raise ValueError(
        f"feature {value!r} is not one of {', '.join(names)}, {UNKNOWN} (or a feature number)"
    )


def table_filter(value: str) -> str:
    """A ``--table`` value (a name or a number) as the report names tables."""
    text = value.strip()
    if text in _TABLE_IDS:
        return text
    if text.isdigit() and 0 <= int(text) <= 254:
        return _TABLE_NAMES.get(int(text), text)
    raise ValueError(f"table {value!r} is not one of {', '.join(_TABLE_IDS)} (or a number 0-254)")


def parse_dump(text: str, generation: int | None) -> list[FlowEntry]:
    """``ovs-ofctl -O OpenFlow13 --names dump-flows`` output as entries (header lines, as
    OpenFlow 1.0 prints them, are skipped); ValueError on a flow line it cannot read."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("cookie="):
            continue
        head, sep, actions = line.partition(" actions=")
        if not sep:
            raise ValueError(f"a flow line without actions: {line!r}")
        # Statistics are separated by ", ", the match's fields by "," alone.
        parts = head.split(", ")
        rest = ""
        if parts[-1].split("=", 1)[0] not in _STATS:
            rest = parts.pop()
        fields = dict(p.split("=", 1) for p in parts if "=" in p)
        first, _, more = rest.partition(",")
        if first.startswith("priority="):
            fields["priority"], rest = first.removeprefix("priority="), more
        try:
            cookie = int(fields["cookie"], 16)
            table = fields["table"].strip('"')
            priority = int(fields.get("priority", "32768"))
            packets, nbytes = int(fields["n_packets"]), int(fields["n_bytes"])
        except (KeyError, ValueError):
            raise ValueError(f"a flow line ovs-overlayctl cannot read: {line!r}") from None
        table_id = int(table) if table.isdigit() else _TABLE_IDS.get(table)
        table = _TABLE_NAMES.get(table_id, table) if table.isdigit() else table
        feature = feature_name(cookie)
        gen = cookies.generation_of(cookie)
        out.append(
            FlowEntry(
                table=table,
                table_id=table_id,
                cookie=hex(cookie),
                feature=feature,
                generation=gen,
                priority=priority,
                match=rest.strip(),
                actions=actions.strip(),
                packets=packets,
                bytes=nbytes,
                # Learned flows (OVS adds them, generation 0) belong to no generation.
                stale=generation is not None
                and gen != generation
                and feature != cookies.Feature.HOST_RETURN_LEARNED.name.lower(),
                unknown=feature == UNKNOWN,
            )
        )
    return out


def totals(flows: Iterable[FlowEntry]) -> Totals:
    flows = list(flows)
    return Totals(
        flows=len(flows),
        packets=sum(f.packets for f in flows),
        bytes=sum(f.bytes for f in flows),
        stale=sum(f.stale for f in flows),
        unknown=sum(f.unknown for f in flows),
    )


def policy_filter(value: str) -> str:
    """A ``--policy`` value: NAMESPACE/NAME."""
    namespace, _, name = value.strip().partition("/")
    if not namespace or not name or "/" in name:
        raise ValueError(f"--policy {value!r} is not NAMESPACE/NAME, as in x/allow-b")
    return f"{namespace}/{name}"


def has_rule_flows(flows: Iterable[FlowEntry]) -> bool:
    """Whether any flow is a policy rule's (its name needs the policy state)."""
    rule = cookies.Feature.POLICY_RULE.name.lower()
    return any(f.feature == rule for f in flows)


def report(
    bridge: str,
    generation: int | None,
    flows: list[FlowEntry],
    table: str | None = None,
    feature: str | None = None,
    names: Mapping[int, RuleRef] | None = None,
    policy: str | None = None,
) -> FlowReport:
    """``flows`` (those matching the filters) grouped by table in pipeline order, then by
    feature in feature order (unknown last), with totals at each level; and the policy
    rules' hits among them, named by ``names`` (rule id -> rule, from the policy state:
    netpol.hits.rule_names).  ``policy`` keeps only that policy's rules' flows."""
    names = names or {}
    kept = [
        f
        for f in flows
        if (table is None or f.table == table)
        and (feature is None or f.feature == feature)
        and (policy is None or getattr(_rule_of(f, names), "policy", None) == policy)
    ]
    order = {f.name.lower(): int(f) for f in cookies.Feature}

    def feature_key(name: str) -> int:
        return order.get(name, 256)

    tables = []
    for name in sorted({f.table for f in kept}, key=lambda n: (_table_key(kept, n), n)):
        in_table = [f for f in kept if f.table == name]
        groups = tuple(
            FeatureGroup(feat, totals(fs), tuple(fs))
            for feat in sorted({f.feature for f in in_table}, key=feature_key)
            for fs in [[f for f in in_table if f.feature == feat]]
        )
        tables.append(TableGroup(name, in_table[0].table_id, totals(in_table), groups))
    by_feature = tuple(
        FeatureTotals(feat, totals(f for f in kept if f.feature == feat))
        for feat in sorted({f.feature for f in kept}, key=feature_key)
    )
    hits = sum_hits((_count(f) for f in kept), names)
    rules = tuple(
        RuleTotals(
            h.rule_id,
            h.rule and h.rule.policy,
            h.rule and h.rule.direction,
            h.rule and h.rule.index,
            h.flows,
            h.packets,
            h.bytes,
        )
        for h in hits.rules
    )
    denied = (
        ()
        if policy is not None
        else tuple(DeniedTotals(d.direction, d.flows, d.packets, d.bytes) for d in hits.denied)
    )
    return FlowReport(
        bridge, generation, table, feature, totals(kept), tuple(tables), by_feature,
        policy, rules, denied,
    )  # fmt: skip


def _rule_of(flow: FlowEntry, names: Mapping[int, RuleRef]) -> RuleRef | None:
    cookie = int(flow.cookie, 16)
    if flow.unknown or cookies.feature_of(cookie) is not cookies.Feature.POLICY_RULE:
        return None
    return names.get(cookies.object_of(cookie))


def _count(flow: FlowEntry) -> FlowCount:
    table_id = -1 if flow.table_id is None else flow.table_id
    return FlowCount(int(flow.cookie, 16), table_id, flow.packets, flow.bytes)


def _table_key(flows: list[FlowEntry], name: str) -> int:
    ids = {f.table_id for f in flows if f.table == name}
    return min((i for i in ids if i is not None), default=255)


def render(rep: FlowReport) -> list[str]:
    """The report as lines for a terminal: per table, per feature, each flow with its
    counters; stale and unknown flows marked."""
    t = rep.totals
    gen = "no generation" if rep.generation is None else f"generation {rep.generation}"
    lines = [
        f"{rep.bridge} ({gen}): {_counts(t, flags=False)}; {t.stale} stale, {t.unknown} unknown"
    ]
    for tg in rep.tables:
        number = "" if tg.table_id is None or tg.table == str(tg.table_id) else f" ({tg.table_id})"
        lines += ["", f"table {tg.table}{number}: {_counts(tg.totals)}"]
        for fg in tg.features:
            lines.append(f"  {fg.feature}: {_counts(fg.totals)}")
            for f in fg.flows:
                flag = ""
                if f.unknown:
                    flag = f" [UNKNOWN cookie {f.cookie}]"
                elif f.stale:
                    flag = f" [STALE generation {f.generation}]"
                match = f"priority={f.priority}" + (f",{f.match}" if f.match else "")
                lines.append(
                    f"    {f.packets:>8} pkts {f.bytes:>10} B  {match} actions={f.actions}{flag}"
                )
    if rep.by_feature:
        lines += ["", "per feature"]
        width = max(len(ft.feature) for ft in rep.by_feature)
        for ft in rep.by_feature:
            lines.append(f"  {ft.feature:<{width}}  {_counts(ft.totals)}")
    if rep.rules or rep.policy is not None:
        lines += ["", "per policy rule" + (f" of {rep.policy}" if rep.policy else "")]
        words = [_rule_words(r) for r in rep.rules]
        width = max((len(w) for w in words), default=0)
        for w, r in zip(words, rep.rules, strict=True):
            lines.append(f"  {w:<{width}}  {_hits(r.flows, r.packets, r.bytes)}")
        if not rep.rules:
            lines.append("  none: the policy has no rule with flows on this bridge")
    if any(d.flows for d in rep.denied):
        lines += ["", "denied (an isolated pod, no rule allowed it)"]
        for d in rep.denied:
            lines.append(f"  {d.direction.lower():<7}  {_hits(d.flows, d.packets, d.bytes)}")
    return lines


def _rule_words(r: RuleTotals) -> str:
    """A rule as ``trace`` names it (ctl/policy_commands.rule_words)."""
    if r.policy is None:
        return f"rule id {r.rule_id} (no rule of the store's policies now)"
    return f"rule {r.direction.lower()}[{r.index}] of policy {r.policy}"


def _counts(t: Totals, flags: bool = True) -> str:
    marks = ""
    if flags:
        marks = "".join(f", {n} {w}" for n, w in ((t.stale, "stale"), (t.unknown, "unknown")) if n)
    plural = "s" if t.flows != 1 else ""
    return f"{t.flows} flow{plural}, {t.packets} packets, {t.bytes} bytes{marks}"


def _hits(flows: int, packets: int, nbytes: int) -> str:
    return _counts(Totals(flows, packets, nbytes, 0, 0))
