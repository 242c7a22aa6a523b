"""Keeps br-int equal to the pipeline of the current host state.

One worker thread owns the switch conversation.  Callers publish a new
HostState (``update``) and may wait until br-int has it (``wait_applied``);
switch connects and lost canaries make the worker forget what is installed,
so its next pass installs a fresh generation and removes every older one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

from controller.switch import SwitchError, SwitchLink
from openflow import cookies, pipeline
from openflow.diff import GenerationDelete, diff, index_flows, replace_generation
from openflow.model import Flow, Group, Output
from openflow.state import HostState
from openflow.tables import CANARY, table_names

LOG = logging.getLogger(__name__)


class Reconciler:
    def __init__(
        self,
        load_generation: Callable[[], int],
        save_generation: Callable[[int], None],
        after_full_sync: Callable[[], None],
        canary_interval: float,
    ):
        self._load_generation = load_generation
        self._save_generation = save_generation
        self._after_full_sync = after_full_sync
        self._canary_interval = canary_interval
        self._cond = threading.Condition()
        self._state: HostState | None = None
        self._version = 0  # bumped by every update
        self._applied = 0  # the version br-int has
        self._link: SwitchLink | None = None
        self._installed: tuple[list[Flow], list[Group]] | None = None
        self._generation = 0
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="reconciler", daemon=True)
        self.full_syncs = 0

    # -- inputs ---------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._thread.join(timeout=10)

    def update(self, state: HostState) -> int:
        with self._cond:
            self._state = state
            self._version += 1
            self._cond.notify_all()
            return self._version

    def connected(self, link: SwitchLink) -> None:
        with self._cond:
            self._link = link
            self._installed = None
            self._cond.notify_all()

    def disconnected(self, link: SwitchLink) -> None:
        with self._cond:
            if self._link is link:
                self._link = None
                self._installed = None

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

    # -- the worker -------------------------------------------------------------

    def _run(self) -> None:
        next_canary = time.monotonic() + self._canary_interval
        while True:
            with self._cond:
                while not self._stopped and not self._pending() and time.monotonic() < next_canary:
                    self._cond.wait(max(0.0, next_canary - time.monotonic()))
                if self._stopped:
                    return
                link, state, version = self._link, self._state, self._version
                installed = self._installed
            if link is None or state is None:
                next_canary = time.monotonic() + self._canary_interval
                continue
            try:
                if installed is not None and time.monotonic() >= next_canary:
                    next_canary = time.monotonic() + self._canary_interval
                    if not self._canary_present(link):
                        LOG.warning("canary flow gone: ovs-vswitchd lost its flows; replaying")
                        installed = None
                self._sync(link, state, installed)
            except SwitchError as exc:
                LOG.error("syncing br-int failed, will retry with a full replay: %s", exc)
                with self._cond:
                    self._installed = None
                    self._cond.wait(1.0)
                continue
            with self._cond:
                self._applied = max(self._applied, version)
                self._cond.notify_all()

    def _pending(self) -> bool:
        return (
            self._link is not None
            and self._state is not None
            and (self._installed is None or self._applied < self._version)
        )

    def _sync(self, link: SwitchLink, state: HostState, installed) -> None:
        if installed is None:
            self._full_sync(link, state)
            return
        flows, groups = pipeline.build(state, self._generation)
        index_flows(flows)
        link.apply(diff(installed[0], installed[1], flows, groups))
        with self._cond:
            self._installed = (flows, groups)

    def _full_sync(self, link: SwitchLink, state: HostState) -> None:
        """A new generation over whatever the switch has, then every older generation removed."""
        generation = (self._load_generation() + 1) & cookies.GENERATION_MASK
        flows, groups = pipeline.build(state, generation)
        index_flows(flows)
        existing_groups = self._group_ids(link)
        start = time.monotonic()
        link.apply(replace_generation(existing_groups, flows, groups, None))
        stale = self._generations_on_switch(link) - {generation}
        link.apply([GenerationDelete(old) for old in sorted(stale)])
        self._save_generation(generation)
        with self._cond:
            self._generation = generation
            self._installed = (flows, groups)
        self.full_syncs += 1
        LOG.info(
            "br-int: generation %d in place (%d flows, %d groups, %.0f ms); removed generations %s",
            generation,
            len(flows),
            len(groups),
            (time.monotonic() - start) * 1000,
            sorted(stale) or "none",
        )
        self._after_full_sync()

    # -- asking the switch ----------------------------------------------------------

    @staticmethod
    def _group_ids(link: SwitchLink) -> list[int]:
        parser = link.dp.ofproto_parser
        return [g.group_id for g in link.request(parser.OFPGroupDescStatsRequest(link.dp, 0))]

    @staticmethod
    def _generations_on_switch(link: SwitchLink) -> set[int]:
        parser, ofp = link.dp.ofproto_parser, link.dp.ofproto
        stats = link.request(parser.OFPFlowStatsRequest(link.dp, 0, ofp.OFPTT_ALL))
        return {cookies.generation_of(s.cookie) for s in stats}

    def missing_port_flows(self, ofport: int) -> list[str]:
        """The tables where br-int itself (asked, not the model) lacks one of the current
        generation's flows that match ``in_port=ofport`` or output to ``ofport``: what
        CNI CHECK needs to know about an endpoint's flows."""
        with self._cond:
            link, installed = self._link, self._installed
        if link is None or installed is None:
            raise SwitchError("br-int is not connected to the agent")
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

        flows = installed[0]
        want_in = Counter(
            f.table.table_id
            for f in flows
            if any(m.name == "in_port" and m.value == ofport for m in f.match)
        )
        want_out = Counter(f.table.table_id for f in flows if Output(ofport) in f.actions)
        have_in = on_switch(match=parser.OFPMatch(in_port=ofport))
        have_out = on_switch(out_port=ofport)
        short = {t for t, n in want_in.items() if have_in[t] < n}
        short |= {t for t, n in want_out.items() if have_out[t] < n}
        names = table_names()
        return sorted(names[t] for t in short)

    def _canary_present(self, link: SwitchLink) -> bool:
        parser = link.dp.ofproto_parser
        want = cookies.cookie(cookies.Feature.CANARY, self._generation)
        req = parser.OFPFlowStatsRequest(
            link.dp, 0, CANARY.table_id, cookie=want, cookie_mask=0xFFFFFFFFFFFFFFFF
        )
        return bool(link.request(req))
