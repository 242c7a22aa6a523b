"""Keeps br-int equal to the pipeline of the host's objects, one change at a time.

One worker thread owns the switch conversation and the incremental engine
(openflow/incremental.py).  Callers ``submit`` changes (a local port, a store record)
and may wait until br-int has them (``wait_applied``).  The worker applies each batch
to the engine and sends only the messages it returns.  When it does not know what the
switch has — a (re)connect, a lost canary, a failed send, or any exception at all — it
installs a fresh generation from the engine's full build and removes every older one.

The worker never dies of an exception: it logs what it was doing, backs off, and
resyncs with a full replay.  Only a failure of that fault boundary itself ends the
process (non-zero, so its supervisor restarts it): a live-looking agent whose
reconciler is dead would answer every ADD with a timeout.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence

from controller import heap, metrics
from controller.switch import SwitchError, SwitchLink
from netpol.evaluate import RuleRef
from openflow import cookies
from openflow.diff import (
    FlowAdd,
    FlowDelete,
    GenerationDelete,
    GroupAdd,
    GroupDelete,
    Message,
    replace_generation,
)
from openflow.incremental import Change, Engine, EngineCounts, Shadowed
from openflow.model import Output, SetField
from openflow.tables import CANARY, table_names

LOG = logging.getLogger(__name__)

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
# A burst of this many changes (a listing of the store, a host with its endpoints) leaves
# tens of MB freed behind it: once it is over (no change for SETTLE seconds), and after
# every full sync, the heap goes back to the OS (controller/heap.py; its gc.collect costs
# ~0.1 s at 10,000 endpoints, so not after every batch of a burst).
BURST = 1000
SETTLE = 0.5
# Store submits waiting for br-int whose arrival time is kept (for the watch lag metric);
# while no switch is connected they pile up, and past this many the newest go unmeasured.
LAG_PENDING_MAX = 10_000
# A full sync of more flows than this logs a line per PROGRESS_STEP flows sent, so a
# resync of a large host shows in the log as it goes (one of a small host stays one line).
PROGRESS_STEP = 5000


class Reconciler:
    def __init__(
        self,
        load_generation: Callable[[], int],
        save_generation: Callable[[int], None],
        after_full_sync: Callable[[], None],
        canary_interval: float,
        on_shadowed: Callable[[Shadowed], None] | None = None,
    ):
        self._load_generation = load_generation
        self._save_generation = save_generation
        self._after_full_sync = after_full_sync
        self._canary_interval = canary_interval
        self._on_shadowed = on_shadowed or _log_shadowed
        self._cond = threading.Condition()
        self._queue: list[Change] = []  # submitted, not yet in the engine
        self._version = 0  # bumped by every submit
        # (version, when) of the store's submits not yet on br-int: the watch lag metric
        self._from_store: list[tuple[int, float]] = []
        self._applied = 0  # the version br-int has
        self._link: SwitchLink | None = None
        self._in_sync = False  # the engine's flows are what the switch has
        self._suspect = False  # a failure may have left the engine's indexes inconsistent
        self._generation = 0
        self._stopped = False
        self._engine = Engine(tunnel_ofport=0, generation=0)
        self._engine_lock = threading.Lock()  # the worker changes it; CHECK reads it
        self._thread = threading.Thread(target=self._run, name="reconciler", daemon=True)
        self.full_syncs = 0
        self.failures = 0
        self.last_full_sync: float | None = None  # wall-clock time the last one finished
        self.connections = 0  # switch connections taken, the first one included
        # What br-int has, by table, and its groups: set by each full sync from the flows
        # it sends, then moved by each incremental apply's adds and deletes (the metrics).
        self._counts_lock = threading.Lock()
        self._flows_by_table: Counter[str] = Counter()
        self._groups = 0

    # -- inputs ---------------------------------------------------------------

    def start(self) -> None:
        # The engine builds its flows with the generation the first full sync will install
        # (the saved one + 1), so that sync sends them as they are instead of building all
        # of them twice (at 20,000 flows, a second of a cold start).
        with self._engine_lock:
            self._engine = Engine(tunnel_ofport=0, generation=self._next_generation())
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._thread.join(timeout=10)

    def submit(self, changes: Sequence[Change], from_store: bool = False) -> int:
        """Queue ``changes``; returns the version to pass to ``wait_applied``.
        ``from_store``: they are the cluster state's (their time to br-int is the store
        watch lag metric).

        No changes make no new version: the caller waits for the latest one, which holds
        whatever it expects (another ADD's ``sync_local`` read its port too).  A version
        with nothing queued would wake the worker for nothing to do: it went on sleeping
        until the next canary check, and its waiters with it (1.3-1.6 s for some of ten
        parallel CNI ADDs, found 2026-12-02)."""
        with self._cond:
            if not changes:
                return self._version
            self._queue.extend(changes)
            self._version += 1
            if from_store and len(self._from_store) < LAG_PENDING_MAX:
                self._from_store.append((self._version, time.monotonic()))
            self._cond.notify_all()
            return self._version

    def connected(self, link: SwitchLink) -> None:
        with self._cond:
            self._link = link
            self._in_sync = False
            if self.connections:
                metrics.OPENFLOW_RECONNECTS.inc()
            self.connections += 1
            self._cond.notify_all()

    def disconnected(self, link: SwitchLink) -> None:
        with self._cond:
            if self._link is link:
                self._link = None
                self._in_sync = False
                metrics.OPENFLOW_DISCONNECTS.inc()

    def is_connected(self) -> bool:
        with self._cond:
            return self._link is not None

    def wait_connected(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._link is not None or self._stopped, timeout)

    def wait_applied(self, version: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._applied < version:
                left = deadline - time.monotonic()
                if left <= 0 or self._stopped:
                    return False
                self._cond.wait(left)
            return True

    @property
    def generation(self) -> int:
        return self._generation

    def installed_counts(self) -> tuple[dict[str, int], int]:
        """What br-int has from the agent: flows by table name, and groups (as sent; a
        switch that lost them is found by the canary and gets a full sync)."""
        with self._counts_lock:
            return dict(self._flows_by_table), self._groups

    def counts(self) -> EngineCounts:
        """What the engine has installed (controller/status.py)."""
        with self._engine_lock:
            return self._engine.counts()

    def policy_rules(self) -> Mapping[int, RuleRef]:
        """Rule id -> rule, of the policy flows the engine has installed, read without the
        engine's lock (a mapping replaced whole, never changed in place)."""
        return self._engine.policy_rules

    def flow_stats(self, cookie: int, cookie_mask: int, timeout: float) -> list:
        """br-int's flows whose cookie matches ``cookie``/``cookie_mask`` (os-ken
        OFPFlowStats: cookie, table_id, packet_count, byte_count, ...), asked on the
        connection the worker uses.  SwitchError when no switch is connected or it does
        not answer within ``timeout``: the caller (a metrics scrape) goes without."""
        with self._cond:
            link = self._link
        if link is None:
            raise SwitchError("br-int is not connected to the agent")
        parser, ofp = link.dp.ofproto_parser, link.dp.ofproto
        req = parser.OFPFlowStatsRequest(
            link.dp, 0, ofp.OFPTT_ALL, cookie=cookie, cookie_mask=cookie_mask
        )
        return link.request(req, timeout=timeout)

    def is_active(self, key: Hashable) -> bool:
        """Whether the object under ``key`` has its flows (is not shadowed or waiting)."""
        with self._engine_lock:
            return self._engine.is_active(key)

    # -- the worker -------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException:  # the fault boundary itself failed: let a supervisor restart us
            LOG.critical("the reconciler cannot go on; the agent exits", exc_info=True)
            logging.shutdown()
            os._exit(1)

    def _loop(self) -> None:
        next_canary = time.monotonic() + self._canary_interval
        backoff = 0.0
        since_release = 0  # changes applied since the heap last went back
        release_at: float | None = None  # when to give it back, if nothing comes until then
        while True:
            with self._cond:
                while not self._stopped and not self._pending():
                    wake = next_canary if release_at is None else min(next_canary, release_at)
                    if time.monotonic() >= wake:
                        break
                    self._cond.wait(wake - time.monotonic())
                if self._stopped:
                    return
                quiet = not self._pending()
                batch, self._queue = self._queue, []
                link, version, in_sync = self._link, self._version, self._in_sync
            if quiet and release_at is not None and time.monotonic() >= release_at:
                heap.release()
                since_release, release_at = 0, None
                if time.monotonic() < next_canary:
                    continue
            doing = f"applying {len(batch)} change(s)"
            since_release += len(batch)
            try:
                messages, shadowed, lost = self._take(batch, in_sync and link is not None)
                if lost:
                    in_sync = False  # some messages went with the failure: replay everything
                for s in shadowed:
                    self._on_shadowed(s)
                if link is None or version == 0:  # no switch, or nothing submitted yet
                    next_canary = time.monotonic() + self._canary_interval
                    continue
                if in_sync and time.monotonic() >= next_canary:
                    doing = "checking the canary flow"
                    next_canary = time.monotonic() + self._canary_interval
                    if not self._canary_present(link):
                        LOG.warning("canary flow gone: ovs-vswitchd lost its flows; replaying")
                        in_sync = False
                started = time.monotonic()
                if in_sync:
                    doing = f"sending {len(messages)} message(s) for {len(batch)} change(s)"
                    link.apply(messages)
                    self._count(messages)
                    kind = "incremental"
                else:
                    doing = "installing a new generation (full sync)"
                    self._full_sync(link)
                    kind = "full_sync"
                metrics.RECONCILE_SECONDS.labels(kind).observe(time.monotonic() - started)
                backoff = 0.0
            except Exception as exc:
                self.failures += 1
                metrics.RECONCILE_ERRORS.labels(
                    "switch" if isinstance(exc, SwitchError) else "agent"
                ).inc()
                backoff = min(BACKOFF_MAX, max(BACKOFF_FIRST, backoff * 2))
                if isinstance(exc, SwitchError):
                    LOG.error("%s on br-int failed (%s); full replay in %.1fs", doing, exc, backoff)
                else:
                    LOG.exception(
                        "reconciler failed %s; it resyncs with a full replay in %.1fs",
                        doing,
                        backoff,
                    )
                with self._cond:
                    self._in_sync = False
                    self._suspect = self._suspect or not isinstance(exc, SwitchError)
                    self._cond.wait_for(lambda: self._stopped, backoff)
                continue
            with self._cond:
                if self._link is link:
                    self._in_sync = True
                    self._applied = max(self._applied, version)
                    arrived = [t for v, t in self._from_store if v <= version]
                    self._from_store = [(v, t) for v, t in self._from_store if v > version]
                else:
                    arrived = []
                self._cond.notify_all()
            now = time.monotonic()
            for t in arrived:
                metrics.STORE_WATCH_LAG_SECONDS.observe(now - t)
            if not in_sync:  # a full sync
                del batch, messages
                heap.release()
                since_release, release_at = 0, None
            elif since_release >= BURST:
                release_at = time.monotonic() + SETTLE

    def _take(self, batch: list[Change], want: bool) -> tuple[list, list[Shadowed], bool]:
        """The batch into the engine; if it raises, its changes one at a time, each one
        that raises logged and dropped (submits are merged into one batch, and one bad
        change must not take the others with it).  Returns (messages, newly shadowed,
        whether messages were lost)."""
        with self._engine_lock:
            try:
                messages, shadowed = self._engine.apply(batch, messages=want)
                return messages, shadowed, False
            except Exception:
                self.failures += 1
                metrics.RECONCILE_ERRORS.labels("agent").inc()
                LOG.exception(
                    "reconciler failed applying %d change(s); retrying them one at a time",
                    len(batch),
                )
            shadowed = []
            for change in batch:
                try:
                    shadowed += self._engine.apply([change], messages=False)[1]
                except Exception:
                    LOG.exception("reconciler dropped a change it cannot apply: %r", change)
            self._suspect = True
            return [], shadowed, True

    def _pending(self) -> bool:
        return bool(self._queue) or (
            self._link is not None and not self._in_sync and self._version > 0
        )

    def _full_sync(self, link: SwitchLink) -> None:
        """A new generation over whatever the switch has, then every older one removed.

        Only the last saved generation can be left (it is saved only after its
        predecessor is gone), so that one is deleted by cookie and the switch's flow
        count checked; only if flows remain that are not ours is every flow read to
        find their generations (reading 20,000 flows cost seconds and 150 MB of
        os-ken objects).  Flows OVS learned (Feature.HOST_RETURN_LEARNED, generation 0)
        are neither counted nor read as a generation: their idle timeouts remove them."""
        saved = self._load_generation()
        generation = (saved + 1) & cookies.GENERATION_MASK  # as _next_generation
        with self._engine_lock:
            if self._suspect:  # after a failure: every index again, from the objects
                self._engine.recompute()
                self._suspect = False
            self._engine.rebuild(generation)
            groups = self._engine.groups()
            total = self._engine.counts().flows
        # Each flow is built as it is sent (Engine.iter_flows, outside the lock: only this
        # thread changes the engine), so 20,000 of them are never alive at once; the time
        # logged includes building them.
        start = time.monotonic()
        flows = _Counted(
            self._engine.iter_flows(), _progress(generation, total, start), _table_name
        )
        link.apply(replace_generation(self._group_ids(link), flows, groups, None))
        count = flows.count
        with self._counts_lock:
            self._flows_by_table, self._groups = flows.by_kind, len(groups)
        link.apply([GenerationDelete(saved)])
        stale = []
        if self._flow_count(link) != count:
            stale = sorted(self._generations_on_switch(link) - {generation})
            link.apply([GenerationDelete(old) for old in stale])
        self._save_generation(generation)
        self._generation = generation
        self.full_syncs += 1
        self.last_full_sync = time.time()
        LOG.info(
            "br-int: generation %d in place (%d flows, %d groups, %.0f ms); removed generation "
            "%d%s",
            generation,
            count,
            len(groups),
            (time.monotonic() - start) * 1000,
            saved,
            f" and leftovers of {stale}" if stale else "",
        )
        self._after_full_sync()

    def _count(self, messages: Sequence[Message]) -> None:
        """An incremental apply's messages into the installed counts."""
        with self._counts_lock:
            self._groups += count_messages(self._flows_by_table, messages)

    def _next_generation(self) -> int:
        return (self._load_generation() + 1) & cookies.GENERATION_MASK

    # -- asking the switch ----------------------------------------------------------

    @staticmethod
    def _group_ids(link: SwitchLink) -> list[int]:
        parser = link.dp.ofproto_parser
        return [g.group_id for g in link.request(parser.OFPGroupDescStatsRequest(link.dp, 0))]

    @staticmethod
    def _flow_count(link: SwitchLink) -> int:
        parser, ofp = link.dp.ofproto_parser, link.dp.ofproto
        req = parser.OFPAggregateStatsRequest(
            link.dp, 0, ofp.OFPTT_ALL, ofp.OFPP_ANY, ofp.OFPG_ANY, 0, 0, parser.OFPMatch()
        )
        [stats] = link.request(req)
        # Flows OVS learned (generation 0, not the engine's) are not leftovers: not counted.
        value, mask = cookies.feature_mask(cookies.Feature.HOST_RETURN_LEARNED)
        learned = parser.OFPAggregateStatsRequest(
            link.dp, 0, ofp.OFPTT_ALL, ofp.OFPP_ANY, ofp.OFPG_ANY, value, mask, parser.OFPMatch()
        )
        [learned_stats] = link.request(learned)
        return stats.flow_count - learned_stats.flow_count

    @staticmethod
    def _generations_on_switch(link: SwitchLink) -> set[int]:
        parser, ofp = link.dp.ofproto_parser, link.dp.ofproto
        stats = link.request(parser.OFPFlowStatsRequest(link.dp, 0, ofp.OFPTT_ALL))
        value, mask = cookies.feature_mask(cookies.Feature.HOST_RETURN_LEARNED)
        return {cookies.generation_of(s.cookie) for s in stats if s.cookie & mask != value}

    def missing_port_flows(self, ofport: int) -> list[str]:
        """The tables where br-int itself (asked, not the model) lacks one of the current
        generation's flows that match ``in_port=ofport`` or output to ``ofport``: what
        CNI CHECK needs to know about an endpoint's flows."""
        with self._cond:
            link, in_sync = self._link, self._in_sync
        if link is None or not in_sync:
            raise SwitchError("br-int is not connected to the agent")
        with self._engine_lock:
            flows = self._engine.local_flows()
        parser, ofp = link.dp.ofproto_parser, link.dp.ofproto

        def on_switch(**filters) -> Counter:
            req = parser.OFPFlowStatsRequest(
                link.dp,
                table_id=ofp.OFPTT_ALL,
                cookie=self._generation,
                cookie_mask=cookies.GENERATION_MASK,
                **filters,
            )
            return Counter(stat.table_id for stat in link.request(req))

        want_in = Counter(
            f.table.table_id
            for f in flows
            if any(m.name == "in_port" and m.value == ofport for m in f.match)
        )
        want_out = Counter(f.table.table_id for f in flows if Output(ofport) in f.actions)
        # The forwarding decision for the port sets reg1 (the output stage outputs it, for
        # every port alike): found on the switch by the destination MAC it matches.
        deciding = [f for f in flows if SetField("reg1", ofport) in f.actions]
        want_dst = Counter(f.table.table_id for f in deciding)
        macs = {m.value for f in deciding for m in f.match if m.name == "eth_dst"}
        have_in = on_switch(match=parser.OFPMatch(in_port=ofport))
        have_out = on_switch(out_port=ofport)
        have_dst = Counter()
        for mac in macs:
            have_dst += on_switch(match=parser.OFPMatch(eth_dst=mac))
        short = {t for t, n in want_in.items() if have_in[t] < n}
        short |= {t for t, n in want_out.items() if have_out[t] < n}
        short |= {t for t, n in want_dst.items() if have_dst[t] < n}
        names = table_names()
        return sorted(names[t] for t in short)

    def _canary_present(self, link: SwitchLink) -> bool:
        parser = link.dp.ofproto_parser
        want = cookies.cookie(cookies.Feature.CANARY, self._generation)
        req = parser.OFPFlowStatsRequest(
            link.dp, 0, CANARY.table_id, cookie=want, cookie_mask=0xFFFFFFFFFFFFFFFF
        )
        return bool(link.request(req))


def count_messages(flows_by_table: Counter, messages: Iterable[Message]) -> int:
    """Move ``flows_by_table`` by an incremental apply's flow adds (not those replacing a
    flow in place) and deletes; returns how many groups it added, less those it deleted.
    (A full sync's GenerationDelete is not countable here: the full sync counts itself.)"""
    groups = 0
    for m in messages:
        if isinstance(m, FlowAdd) and not m.replaces:
            flows_by_table[m.flow.table.name] += 1
        elif isinstance(m, FlowDelete):
            flows_by_table[m.flow.table.name] -= 1
        elif isinstance(m, GroupAdd):
            groups += 1
        elif isinstance(m, GroupDelete):
            groups -= 1
    return groups


class _Counted:
    """An iterator's items, counted as they pass, in all and by ``kind`` (a full sync's
    flows by table name); ``every`` is called at each PROGRESS_STEP-th item with the count
    so far."""

    def __init__(
        self,
        items: Iterator,
        every: Callable[[int], None] | None = None,
        kind: Callable[[object], str] | None = None,
    ):
        self._items = items
        self._every = every
        self._kind = kind
        self.count = 0
        self.by_kind: Counter[str] = Counter()

    def __iter__(self) -> Iterator:
        for item in self._items:
            self.count += 1
            if self._kind is not None:
                self.by_kind[self._kind(item)] += 1
            if self._every is not None and self.count % PROGRESS_STEP == 0:
                self._every(self.count)
            yield item


def _table_name(flow) -> str:
    return flow.table.name


def _progress(generation: int, total: int, start: float) -> Callable[[int], None] | None:
    """The log line a large full sync writes as it goes; none for a small one."""
    if total <= PROGRESS_STEP:
        return None

    def report(sent: int) -> None:
        LOG.info(
            "br-int: generation %d: %d of %d flows sent (%.1f s)",
            generation,
            sent,
            total,
            time.monotonic() - start,
        )

    return report


def _log_shadowed(s: Shadowed) -> None:
    LOG.warning(
        "skipped %s (%s): %s is already held by %s, which came first",
        s.key,
        s.obj,
        " ".join(str(part) for part in s.claim),
        s.winner,
    )
