"""NetworkPolicy hits as Prometheus counters, read from br-int at each scrape.

Per rule that has flows on this host, ``ovs_overlay_policy_rule_packets_total`` and
``..._bytes_total`` {namespace, policy, direction, rule (its index in that direction's
list, as ``trace`` names it)}; per direction, what isolated pods dropped because no rule
allowed it, ``ovs_overlay_policy_denied_packets_total`` and ``..._bytes_total``.

The counters are the switch's own: at a scrape the agent asks br-int, over its OpenFlow
connection, one OFPFlowStatsRequest per feature (the rules' flows, the isolation flows)
selected by cookie and mask, so the reply holds only policy flows, never the pipeline's
thousands of others.  OpenFlow and not ``ovs-ofctl`` (as ``ovs-overlayctl flows`` does):
the agent runs no OVS tool on a production path, and it has the connection already.  The
rule ids in the cookies are named by the ids the agent's compiler gave them
(``Reconciler.policy_rules``), so a name is what the switch's flows were built from,
across every change.

A scrape never stalls the agent: it runs on the metrics server's thread, reads the
names without the engine's lock, and waits for the switch at most ``timeout`` (the lock
the reconciler sends under included).  A switch that is away or slow costs the scrape
these series, counted in ``ovs_overlay_policy_stats_failures_total``; nothing else.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from controller.reconciler import Reconciler
from controller.switch import SwitchError
from netpol.hits import FlowCount, PolicyHits, sum_hits
from openflow import cookies

LOG = logging.getLogger(__name__)

STATS_TIMEOUT = 2.0  # seconds a scrape waits for br-int (Prometheus' default timeout is 10)
_FEATURES = (cookies.Feature.POLICY_RULE, cookies.Feature.POLICY_ISOLATION)
RULE_LABELS = ["namespace", "policy", "direction", "rule"]


class PolicyHitsCollector(Collector):
    """The policy counters of one agent's br-int (registered next to the snapshot's)."""

    def __init__(self, reconciler: Reconciler, timeout: float = STATS_TIMEOUT):
        self._reconciler = reconciler
        self._timeout = timeout
        self._lock = threading.Lock()  # the failure count; concurrent scrapes
        self.failures = 0

    def describe(self) -> list:
        return []  # collect() asks the switch: not at registration

    def collect(self) -> Iterator:
        failures = CounterMetricFamily(
            "ovs_overlay_policy_stats_failures",
            "scrapes that went without the policy counters: br-int was not connected, "
            "busy or did not answer in time",
        )
        hits = self.hits()
        failures.add_metric([], self.failures)
        yield failures
        if hits is None:
            return
        packets = CounterMetricFamily(
            "ovs_overlay_policy_rule_packets",
            "packets of new connections a NetworkPolicy rule allowed on this host, summed "
            "over the rule's flows on br-int (rule: its index in the policy's list of that "
            "direction)",
            labels=RULE_LABELS,
        )
        nbytes = CounterMetricFamily(
            "ovs_overlay_policy_rule_bytes",
            "bytes of the packets in ovs_overlay_policy_rule_packets",
            labels=RULE_LABELS,
        )
        for h in hits.rules:
            if h.rule is None:  # the switch is ahead of or behind the program: no name
                continue
            namespace, _, name = h.rule.policy.partition("/")
            labels = [namespace, name, h.rule.direction.lower(), str(h.rule.index)]
            packets.add_metric(labels, h.packets)
            nbytes.add_metric(labels, h.bytes)
        denied_packets = CounterMetricFamily(
            "ovs_overlay_policy_denied_packets",
            "new connections' packets dropped on this host because a policy isolates the pod "
            "for that direction and none of its rules allowed them",
            labels=["direction"],
        )
        denied_bytes = CounterMetricFamily(
            "ovs_overlay_policy_denied_bytes",
            "bytes of the packets in ovs_overlay_policy_denied_packets",
            labels=["direction"],
        )
        for d in hits.denied:
            denied_packets.add_metric([d.direction.lower()], d.packets)
            denied_bytes.add_metric([d.direction.lower()], d.bytes)
        yield from (packets, nbytes, denied_packets, denied_bytes)

    def hits(self) -> PolicyHits | None:
        """br-int's policy counters summed, or None (counted) when the switch did not
        give them."""
        names = self._reconciler.policy_rules()
        try:
            stats = [
                s
                for feature in _FEATURES
                for s in self._reconciler.flow_stats(
                    *cookies.feature_mask(feature), timeout=self._timeout
                )
            ]
        except SwitchError as exc:
            with self._lock:
                self.failures += 1
            LOG.debug("metrics scrape without policy counters: %s", exc)
            return None
        counts = [FlowCount(s.cookie, s.table_id, s.packet_count, s.byte_count) for s in stats]
        return sum_hits(counts, names)
