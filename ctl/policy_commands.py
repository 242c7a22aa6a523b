"""``ovs-overlayctl policy check``: what NetworkPolicy says of one new connection, from
the model (netpol/evaluate.py, the spec read literally) over exactly the state the
agents compile (store/policy_records.py), so it answers what the data path should do
without touching a switch.

The answer is allowed or denied, and why in one sentence per direction: the rule that
allows it (policy NAMESPACE/NAME, direction, index in that list) or the policies that
isolate the pod with no rule of theirs allowing.  As ``kubectl auth can-i``, the exit
status is the answer: 0 allowed, 1 denied (or an error, on stderr).
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import sys
from dataclasses import dataclass

from ctl.store_options import add_store_options, open_store
from netpol.evaluate import EGRESS, INGRESS, DirectionVerdict, Endpoint, RuleRef, evaluate
from netpol.state import PolicyState
from store.policy_records import read_policy_state

DEFAULT_NETWORK = "default"  # the agent's kubernetes_network default (controller/config.py)
PROTOCOLS = ("TCP", "UDP", "SCTP")


@dataclass(frozen=True)
class RuleName:
    """A rule as the policy's author wrote it: ``policy`` NAMESPACE/NAME, ``direction``
    (Ingress or Egress) and its ``index`` in that list."""

    policy: str
    direction: str
    index: int


@dataclass(frozen=True)
class DirectionCheck:
    """One direction's verdict: judged at ``pod`` (None: an address, no policy of its
    own), ``isolated_by`` the policies selecting it, ``allowed_by`` the rules that allow."""

    direction: str
    pod: str | None
    allowed: bool
    isolated_by: tuple[str, ...]
    allowed_by: tuple[RuleName, ...]
    why: str


@dataclass(frozen=True)
class CheckReport:
    source: str
    destination: str
    protocol: str
    port: int
    allowed: bool
    egress: DirectionCheck
    ingress: DirectionCheck
    skipped: tuple[str, ...]  # broken records the state was built without


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("policy", help="NetworkPolicy: what the model says of a connection")
    sub = p.add_subparsers(dest="policy_command", required=True)
    check = sub.add_parser(
        "check",
        help="is a new connection allowed, and by which rule (exit 0) or denied by whom (1)",
    )
    check.add_argument(
        "--from", dest="source", required=True, help="NAMESPACE/POD or an IPv4 address"
    )
    check.add_argument(
        "--to", dest="destination", required=True, help="NAMESPACE/POD or an IPv4 address"
    )
    check.add_argument(
        "--port", required=True, help="the destination port and protocol: 80/TCP, 53/UDP (TCP)"
    )
    check.add_argument(
        "--network",
        default=DEFAULT_NETWORK,
        help=f"the network Kubernetes pods are on (the agents' kubernetes_network; "
        f"default {DEFAULT_NETWORK})",
    )
    add_store_options(check)
    check.set_defaults(func=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:
    port, protocol = parse_port(args.port)
    with open_store(args) as cluster:
        state, skipped = read_policy_state(cluster.kv, args.network)
    report = check(state, args.source, args.destination, protocol, port, args.network, skipped)
    if args.output == "json":
        print(json.dumps(dataclasses.asdict(report), indent=2))
    else:
        print("\n".join(render(report)))
    for error in skipped:
        print(f"ovs-overlayctl: skipped a broken record: {error}", file=sys.stderr)
    return 0 if report.allowed else 1


def parse_port(text: str) -> tuple[int, str]:
    """``80/TCP`` (protocol any case; TCP when left out) as (80, "TCP")."""
    number, _, protocol = text.partition("/")
    protocol = (protocol or "TCP").upper()
    if protocol not in PROTOCOLS:
        raise ValueError(f"--port {text!r}: protocol {protocol} is not TCP, UDP or SCTP")
    if not number.isdigit() or not 1 <= int(number) <= 65535:
        raise ValueError(f"--port {text!r}: the port must be a number 1-65535, as in 80/TCP")
    return int(number), protocol


def endpoint(state: PolicyState, name: str, network: str) -> Endpoint:
    """``name`` as the model knows it: a pod by NAMESPACE/NAME or by its address, or an
    address that is no pod's; ValueError says why a pod is not there."""
    if "/" in name:
        found = next((p for p in state.pods if p.key == name), None)
        if found is None:
            raise ValueError(
                f"pod {name} is not in the policy state: it needs a Pod object "
                f"('ovs-overlayctl get pods -n {name.split('/')[0]}') and an endpoint in "
                f"network {network} that names it ('ovs-overlayctl endpoint list')"
            )
        return found
    try:
        ipaddress.IPv4Address(name)
    except ValueError:
        raise ValueError(f"{name!r} is neither NAMESPACE/POD nor an IPv4 address") from None
    return state.by_ip.get(name, name)


def check(
    state: PolicyState,
    source: str,
    destination: str,
    protocol: str,
    port: int,
    network: str = DEFAULT_NETWORK,
    skipped: tuple[str, ...] = (),
) -> CheckReport:
    """The model's verdict on a new ``protocol`` connection to ``port``, with its reasons."""
    src = endpoint(state, source, network)
    dst = endpoint(state, destination, network)
    verdict = evaluate(state, src, dst, protocol, port)
    what = f"{port}/{protocol}"
    src_name = _name(src)
    dst_name = _name(dst)
    if not isinstance(src, str) and not isinstance(dst, str) and src.key == dst.key:
        why = f"{src_name} reaching itself is always allowed"
        return CheckReport(
            source, destination, protocol, port, True,
            DirectionCheck("egress", src_name, True, (), (), why),
            DirectionCheck("ingress", dst_name, True, (), (), why),
            skipped,
        )  # fmt: skip
    egress = direction_check(
        EGRESS, verdict.egress, None if isinstance(src, str) else src_name, f"{what} to {dst_name}"
    )
    ingress = direction_check(
        INGRESS,
        verdict.ingress,
        None if isinstance(dst, str) else dst_name,
        f"{what} from {src_name}",
    )
    return CheckReport(
        source, destination, protocol, port, verdict.allowed, egress, ingress, skipped
    )


def _name(e: Endpoint) -> str:
    return e if isinstance(e, str) else e.key


def rule_name(ref: RuleRef) -> RuleName:
    return RuleName(ref.policy, ref.direction, ref.index)


def rule_words(rule: RuleName) -> str:
    return f"rule {rule.direction.lower()}[{rule.index}] of policy {rule.policy}"


def direction_check(
    direction: str, v: DirectionVerdict, pod: str | None, connection: str
) -> DirectionCheck:
    """One direction in one sentence: who judged, and the rule or the isolating policies."""
    way = direction.lower()
    rules = tuple(rule_name(r) for r in v.allowed_by)
    if pod is None:
        why = f"{way}: the address is no pod's, so no policy applies to it"
    elif not v.isolated_by:
        why = f"{way}: no policy selects {pod} for {way}, so it allows everything"
    elif rules:
        why = f"{way}: {rule_words(rules[0])} allows {connection}"
        if len(rules) > 1:
            why += f" (and {len(rules) - 1} more rule(s))"
    else:
        why = (
            f"{way}: {', '.join(v.isolated_by)} isolate(s) {pod} for {way} and "
            f"no rule of theirs allows {connection}"
        )
    return DirectionCheck(way, pod, v.allowed, v.isolated_by, rules, why)


def render(r: CheckReport) -> list[str]:
    answer = "allowed" if r.allowed else "denied"
    return [
        f"{r.source} -> {r.destination} {r.port}/{r.protocol}: {answer}",
        f"  {r.egress.why}",
        f"  {r.ingress.why}",
    ]
