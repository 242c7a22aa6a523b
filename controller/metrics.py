"""The agent's Prometheus metrics: one registry of its own, the metric objects, and the
HTTP listener that serves them (127.0.0.1:9810/metrics by default).

Events are counted where they happen (the API, the reconciler, the cluster cache, the
OpenFlow app), through the objects here.  What is state rather than an event (local
endpoints, peers, flows by table, groups, generation, OVSDB reconnects) is read at
scrape time from a snapshot the agent gives: counts it keeps anyway, so a scrape costs
nothing proportional to the cluster.

The registry is the process's own, not prometheus_client's default one: no process or
platform collectors appear unasked, and tests read exactly what the agent counted.
Labels are from closed sets (a CNI command, a CNI error code, a reason from REASONS, a
table name): never a container id, pod or address.  The one exception is bounded by
what the host enforces: the policy hits name a rule (namespace, policy, direction,
index) with flows on this host (controller/policy_metrics.py).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

LOG = logging.getLogger(__name__)

# No ``*_created`` series (a creation timestamp per counter and histogram child): they
# double the text and say only when the agent started.  Process-wide, as is the agent.
disable_created_metrics()
REGISTRY = CollectorRegistry(auto_describe=True)

# The API's operations as CNI names them (the plugin maps ADD to attach, ...).
COMMANDS = {"attach": "ADD", "detach": "DEL", "check": "CHECK", "gc": "GC", "status": "STATUS"}
CNM_COMMAND = "CNM"  # the command label of a refused Docker driver request

# Why a request was refused: a short, closed vocabulary (a label, so bounded).  Raise
# sites name one (ApiError's ``reason``); otherwise the CNI code's default applies.
REASONS = frozenset(
    {
        "container_gone",  # 3: the netns is gone
        "not_whole",  # 3 on CHECK: a part of the attachment is missing
        "bad_env",  # 4: a CNI_* or CNI_ARGS value refused
        "address_in_use",  # 4: a static IP or MAC another attachment holds
        "not_a_netns",  # 4: CNI_NETNS is something else
        "ifname_exists",  # 4: the pod has that interface already
        "bad_request",  # 6: not a JSON object with a known op
        "bad_config",  # 7
        "bad_arguments",  # 7: the API request's arguments do not fit the op
        "unknown_network",  # 7
        "attached_already",  # 7
        "mtu_too_large",  # 7
        "try_again",  # 11
        "store_unavailable",  # 11: the cluster store did not answer
        "addresses_exhausted",  # 11: this host's blocks are full and no block is free
        "switch_not_applied",  # 11: br-int did not take the flows in time
        "agent_error",  # 11: an unexpected exception in the agent (logged with a traceback)
        "not_ready",  # 50
        "other",
    }
)
_CODE_REASONS = {
    3: "container_gone",
    4: "bad_env",
    6: "bad_request",
    7: "bad_config",
    11: "try_again",
    50: "not_ready",
}

# CNI request latency: a cached-everything ADD takes ~30 ms, a loaded one seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

CNI_REQUEST_SECONDS = Histogram(
    "ovs_overlay_cni_request_seconds",
    "CNI requests served by the agent, by command (ADD, DEL, CHECK) and result (ok or the "
    "CNI error code), from the request's arrival on the agent's socket to its answer",
    ["command", "result"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
CNM_REQUEST_SECONDS = Histogram(
    "ovs_overlay_cnm_request_seconds",
    "Docker libnetwork remote driver requests served by the agent, by method (e.g. "
    "NetworkDriver.Join; 'unknown' for any other path) and result: 'ok', 'refused' (an Err "
    "answer; also counted in ovs_overlay_refused_requests with command CNM) or 'error' (an "
    "unexpected exception in the agent, logged with its traceback)",
    ["method", "result"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
REFUSED = Counter(
    "ovs_overlay_refused_requests",
    "requests to the agent's API answered with an error, by CNI command, CNI error code and "
    "a short reason",
    ["command", "code", "reason"],
    registry=REGISTRY,
)
RECONCILE_SECONDS = Histogram(
    "ovs_overlay_reconcile_seconds",
    "time to bring br-int to the engine's flows: a full sync (a new generation after a "
    "(re)connect or a failure) or an incremental apply of a batch of changes",
    ["kind"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
RECONCILE_ERRORS = Counter(
    "ovs_overlay_reconcile_errors",
    "reconciler failures, each followed by a full replay: 'switch' (br-int refused or did "
    "not answer) or 'agent' (an exception in the agent, logged with its traceback)",
    ["kind"],
    registry=REGISTRY,
)
STORE_WATCH_LAG_SECONDS = Histogram(
    "ovs_overlay_store_watch_lag_seconds",
    "from a cluster-state change arriving at this agent (a watch event or a re-list) to "
    "its flows on br-int",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
STORE_OUTAGES = Counter(
    "ovs_overlay_store_outages",
    "times the cluster store became unreachable for this agent's watches",
    registry=REGISTRY,
)
STORE_RECONNECTS = Counter(
    "ovs_overlay_store_reconnects",
    "times the cluster store answered this agent's watches again after an outage",
    registry=REGISTRY,
)
STORE_RELISTS = Counter(
    "ovs_overlay_store_relists",
    "re-lists of a watched prefix, by reason: 'compacted' (the history the watch needed is "
    "gone), 'outage' (after the store was unreachable) or 'error' (a bug, logged)",
    ["reason"],
    registry=REGISTRY,
)
OPENFLOW_RECONNECTS = Counter(
    "ovs_overlay_openflow_reconnects",
    "br-int connections the reconciler took after its first (each one a full sync)",
    registry=REGISTRY,
)
OPENFLOW_DISCONNECTS = Counter(
    "ovs_overlay_openflow_disconnects",
    "times the OpenFlow connection the reconciler used went down",
    registry=REGISTRY,
)

for _label in ("full_sync", "incremental"):  # present at zero from the start
    RECONCILE_SECONDS.labels(_label)
for _label in ("switch", "agent"):
    RECONCILE_ERRORS.labels(_label)
for _label in ("compacted", "outage", "error"):
    STORE_RELISTS.labels(_label)
for _label in ("ADD", "DEL", "CHECK"):
    CNI_REQUEST_SECONDS.labels(_label, "ok")


def reason_label(code: int, reason: str | None, command: str) -> str:
    """A refusal's reason label: the raise site's, else the code's default; always one of
    REASONS, so the label set stays bounded whatever an error says."""
    if reason is None:
        reason = "not_whole" if (command, code) == ("CHECK", 3) else _CODE_REASONS.get(code)
    return reason if reason in REASONS else "other"


def command_label(op: str) -> str:
    return COMMANDS.get(op, "unknown")


@dataclass(frozen=True)
class Snapshot:
    """The agent's state at a scrape, from counts it keeps anyway."""

    local_endpoints: int
    peers: int
    flows_by_table: Mapping[str, int]
    groups: int
    generation: int
    full_syncs: int
    openflow_connected: bool
    ovsdb_reconnects: int
    store_up: bool
    ready: bool


class _SnapshotCollector(Collector):
    def __init__(self, snapshot: Callable[[], Snapshot]):
        self._snapshot = snapshot

    def describe(self) -> list:
        return []  # unchecked: collect() may not run at registration (the agent is starting)

    def collect(self) -> Iterator:
        s = self._snapshot()
        yield _gauge("ovs_overlay_ready", "1 once the first pipeline is on br-int", s.ready)
        yield _gauge(
            "ovs_overlay_endpoints", "endpoints (pod interfaces) on this host", s.local_endpoints
        )
        yield _gauge("ovs_overlay_peers", "other hosts this host has tunnels to", s.peers)
        flows = GaugeMetricFamily(
            "ovs_overlay_flows",
            "flows the agent installed on br-int, by table (counted as they are sent)",
            labels=["table"],
        )
        for table, count in sorted(s.flows_by_table.items()):
            flows.add_metric([table], count)
        yield flows
        yield _gauge("ovs_overlay_groups", "OpenFlow groups on br-int (flooding)", s.groups)
        yield _gauge(
            "ovs_overlay_generation", "the flow generation on br-int (cookies)", s.generation
        )
        yield CounterMetricFamily(
            "ovs_overlay_full_syncs",
            "full syncs of br-int (a new generation) since the agent started",
            value=s.full_syncs,
        )
        yield _gauge(
            "ovs_overlay_openflow_connected",
            "1 while br-int is connected to the agent",
            s.openflow_connected,
        )
        yield CounterMetricFamily(
            "ovs_overlay_ovsdb_reconnects",
            "times the OVSDB connection to ovsdb-server was made again after the first",
            value=s.ovsdb_reconnects,
        )
        yield _gauge(
            "ovs_overlay_store_up",
            "1 while the cluster store answers this agent's watches",
            s.store_up,
        )


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=float(value))


class MetricsServer:
    """The listener and the agent's snapshot collector; ``close`` undoes both."""

    def __init__(
        self,
        address: str,
        port: int,
        snapshot: Callable[[], Snapshot],
        collectors: Sequence[Collector] = (),
    ):
        self._collectors = (_SnapshotCollector(snapshot), *collectors)
        try:
            self._httpd, self._thread = start_http_server(port, address, REGISTRY)
        except OSError as exc:
            raise RuntimeError(
                f"cannot serve metrics on {address}:{port} ({exc.strerror or exc}); set "
                "[agent] metrics_address/metrics_port to a free address, or metrics_port = 0 "
                "to turn metrics off"
            ) from None
        for collector in self._collectors:
            REGISTRY.register(collector)
        self.address = self._httpd.server_address[:2]
        LOG.info("metrics on http://%s:%d/metrics", *self.address)

    def close(self) -> None:
        for collector in self._collectors:
            REGISTRY.unregister(collector)
        # shutdown() waits for serve_forever to notice (0.5 s poll): not on the caller.
        threading.Thread(target=self._stop, name="metrics-stop", daemon=True).start()

    def _stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def serve(
    address: str,
    port: int,
    snapshot: Callable[[], Snapshot],
    collectors: Sequence[Collector] = (),
) -> MetricsServer | None:
    """Serve the registry on ``address:port`` (0: metrics off, returns None), with the
    snapshot's metrics and those ``collectors`` read at each scrape (the policy hits,
    controller/policy_metrics.py)."""
    if not port:
        LOG.info("metrics off ([agent] metrics_port = 0)")
        return None
    return MetricsServer(address, port, snapshot, collectors)
