"""The per-host agent: br-int, the host's record in the cluster state, the pipeline
kept in sync with both, and the local API that attaches endpoints.

The OpenFlow side (switch connect/disconnect, replies) comes in through the
os-ken app (controller.app), which owns an Agent and starts it.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import threading
from collections.abc import Sequence

from pyroute2 import IPRoute

from controller import hoststate, underlay
from controller.api import ApiError, ApiServer
from controller.config import AgentConfig
from controller.endpoints import AttachError, AttachRequest, EndpointManager
from controller.reconciler import Reconciler
from controller.switch import SwitchError
from openflow.tables import table_names
from ovsdb.client import IntegrationBridge, OvsdbClient, endpoint_ports
from ovsdb.datapath import choose_datapath_type
from ovsdb.tunnel import TunnelPort
from store import open_cluster

LOG = logging.getLogger(__name__)

GENERATION_KEY = "ovs-overlay-generation"
DEFAULT_NETWORK = "default"
PUBLISH_TIMEOUT = 10.0
RESTORE_POLL = 0.2
REFRESH_RETRY = 0.5


class Agent:
    def __init__(self, config: AgentConfig, connect_unix=None):
        self.config = config
        self._connect_unix = connect_unix
        self.tunnel = TunnelPort(tunnel_type=config.tunnel_type)
        self._stop = threading.Event()
        self.ready = threading.Event()  # set after the first full pipeline install
        self.cluster = None
        self.ovsdb: OvsdbClient | None = None
        self.reconciler: Reconciler | None = None
        self.api: ApiServer | None = None
        self._threads: list[threading.Thread] = []
        self._solicited: set[str] = set()
        self._route_ok = True  # whether the last look found the underlay route in OVS
        self._tickets = threading.Condition()
        self._ticket = 0  # publish requests taken
        self._served = 0  # the last ticket a finished refresh covered
        self._served_version = 0  # the reconciler version that refresh produced
        self._refreshing = False  # a refresh is running (in the refresher or a publisher)

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        cfg = self.config
        self.cluster = open_cluster(cfg.store)
        self.ovsdb = OvsdbClient(cfg.ovsdb_sock)
        choice = choose_datapath_type(cfg.datapath_type)
        LOG.info("datapath_type %s: %s", choice.datapath_type, choice.reason)
        self.ovsdb.ensure_integration_bridge(
            IntegrationBridge(cfg.bridge, choice, cfg.controller_port, table_names())
        )
        self.ovsdb.ensure_tunnel_port(cfg.bridge, self.tunnel)
        self.reconciler = Reconciler(
            load_generation=self._load_generation,
            save_generation=self._save_generation,
            after_full_sync=self._after_full_sync,
            canary_interval=cfg.canary_interval,
        )
        self.reconciler.start()
        self.endpoints = EndpointManager(
            cfg.host,
            cfg.bridge,
            self.ovsdb,
            self.cluster,
            self._mtu_for,
            self._gateway_for,
            self.publish,
            self._missing_port_flows,
        )
        self.lease = self.cluster.register_host(cfg.host, cfg.tunnel_ip, cfg.host_ttl)
        self._spawn(self._keepalive, "keepalive")
        for what in self.endpoints.reconcile():
            LOG.warning("removed an orphan left while the agent was away: %s", what)
        self._ensure_gateway()
        self._keep_underlay_route()
        if cfg.underlay_cidr:
            self._spawn(self._underlay_route_watch, "underlay-route")
        # Watch from the revision read before the first refresh, so a change made in
        # between is not missed.
        self._watch_from = self.cluster.revision()
        self.refresh()
        self._spawn(self._refresher, "refresher")
        self._spawn(self._watch, "store-watch")
        if self._connect_unix is not None:
            self._spawn(self._restore_watch, "restore-watch")
        self.api = ApiServer(
            cfg.socket,
            {
                "status": self._api_status,
                "attach": self._api_attach,
                "detach": self._api_detach,
                "check": self._api_check,
                "gc": self._api_gc,
            },
        )
        self.api.start()
        LOG.info(
            "agent for host %s started (tunnel %s from %s)",
            cfg.host,
            self.tunnel.name,
            cfg.tunnel_ip,
        )

    def stop(self) -> None:
        self._stop.set()
        if self.api is not None:
            self.api.stop()
        if self.reconciler is not None:
            self.reconciler.stop()
        if self.ovsdb is not None:
            self.ovsdb.close()

    def _spawn(self, target, name: str) -> None:
        t = threading.Thread(target=self._loud(target, name), name=name, daemon=True)
        t.start()
        self._threads.append(t)

    @staticmethod
    def _loud(target, name):
        """A thread the agent cannot do without: if it dies, the process exits non-zero
        (to be restarted) rather than go on half-working while it reports ready."""

        def run():
            try:
                target()
            except Exception:
                LOG.critical("agent thread %s died; exiting", name, exc_info=True)
                logging.shutdown()
                os._exit(1)

        return run

    # -- the state the pipeline is computed from ---------------------------------

    def refresh(self) -> int:
        """Rebuild the host state from OVSDB and the store; returns the version to wait for.
        One at a time: the start, then only whoever claimed the refresh (_claim_refresh)."""
        cfg = self.config
        interfaces = self.ovsdb.interfaces(cfg.bridge)
        tunnel = interfaces.get(self.tunnel.name)
        if not tunnel or not tunnel["ofport"] or tunnel["ofport"] < 0:
            raise RuntimeError(
                f"tunnel port {self.tunnel.name} has no OpenFlow port on {cfg.bridge}"
            )
        state = hoststate.build_host_state(
            me=cfg.host,
            tunnel_ofport=tunnel["ofport"],
            networks=self.cluster.list_networks(),
            hosts=self.cluster.list_hosts(),
            endpoints=self.cluster.list_endpoints(),
            local_ports=endpoint_ports(interfaces),
            gateways=self._gateway_ports(interfaces.get(hoststate.GATEWAY_PORT)),
        )
        self._warm_neighbours(state.peers)
        return self.reconciler.update(state)

    def _warm_neighbours(self, peers) -> None:
        new = set(peers) - self._solicited
        if new:
            try:
                if underlay.solicit(self.config.tunnel_ip, sorted(new)):
                    self._solicited |= new
            except OSError as exc:
                LOG.warning("could not solicit underlay neighbours %s: %s", sorted(new), exc)

    def publish(self) -> None:
        """Refresh and wait until br-int has the result (an endpoint is reachable on return).

        Concurrent callers share refreshes: each takes a ticket, and one refresh that
        starts after a ticket was taken serves every caller up to that ticket.  Fifty
        parallel ADDs then cost a few refreshes, not fifty in a row.  A caller that finds
        no refresh running does its own in its thread, rather than hand it to the
        refresher thread and wait to be woken.
        """
        with self._tickets:
            self._ticket += 1
            mine = self._ticket
            claimed = self._claim_refresh()
            self._tickets.notify_all()
        if claimed is not None:
            try:
                self._run_refresh(claimed)
            except Exception as exc:  # the refresher thread retries the ticket
                raise AttachError(f"the agent could not refresh its state: {exc}", code=11) from exc
        with self._tickets:
            if not self._tickets.wait_for(lambda: self._served >= mine, PUBLISH_TIMEOUT):
                raise AttachError(
                    f"the agent did not refresh its state within {PUBLISH_TIMEOUT:.0f}s", code=11
                )
            version = self._served_version
        if not self.reconciler.wait_applied(version, PUBLISH_TIMEOUT):
            raise AttachError(
                f"br-int did not take the new flows within {PUBLISH_TIMEOUT:.0f}s; "
                "check that ovs-vswitchd is connected to the agent",
                code=11,
            )

    def _claim_refresh(self) -> int | None:
        """(Holding ``_tickets``.)  Take the next refresh if one is due and none runs;
        returns the ticket it will serve."""
        if self._refreshing or self._ticket <= self._served:
            return None
        self._refreshing = True
        return self._ticket

    def _run_refresh(self, ticket: int) -> None:
        version = None
        try:
            version = self.refresh()
        finally:
            with self._tickets:
                self._refreshing = False
                if version is not None:
                    self._served = max(self._served, ticket)
                    self._served_version = version
                self._tickets.notify_all()

    def _request_refresh(self) -> None:
        """A refresh that starts from now, by the refresher thread (store changes)."""
        with self._tickets:
            self._ticket += 1
            self._tickets.notify_all()

    def _refresher(self) -> None:
        """Serve the tickets nobody is refreshing for: those of store changes (_watch),
        and those of ADDs and DELs that arrived while a refresh was running."""
        while not self._stop.is_set():
            with self._tickets:
                self._tickets.wait_for(
                    lambda: (
                        (self._ticket > self._served and not self._refreshing)
                        or self._stop.is_set()
                    ),
                    1.0,
                )
                claimed = self._claim_refresh()
            if claimed is None:
                continue
            try:
                self._run_refresh(claimed)
            except Exception:  # OVSDB or the store briefly away: retried, not spun on
                LOG.exception("refreshing the pipeline state failed; retrying")
                self._stop.wait(REFRESH_RETRY)

    def _watch(self) -> None:
        """A refresh for each change of other hosts, networks and other hosts' endpoints.
        This host's own endpoints are left out: the pipeline takes them from OVSDB, and
        the ADD or DEL that wrote one publishes itself (a refresh for the echo of its
        own write made every ADD wait for two)."""
        changes = self.cluster.watch_changes(
            self._stop, self._watch_from, except_endpoints_of=self.config.host
        )
        for _events in changes:
            self._request_refresh()

    def _restore_watch(self) -> None:
        """Put the pipeline back into a restarted ovs-vswitchd that waits for it.

        A vswitchd started with flow-restore-wait=true connects to no controller
        (OVS 3.1 keeps only the bridge's management socket open) and forwards
        nothing until the flag is cleared.  So while no switch is connected and
        the flag is set, the agent connects to br-int's management socket itself,
        as Antrea's agent does; the replay runs over that connection, and clearing
        the flag afterwards (``_after_full_sync``) lets vswitchd forward and dial
        our listener again.
        """
        mgmt = os.path.join(os.path.dirname(self.config.ovsdb_sock), f"{self.config.bridge}.mgmt")
        while not self._stop.wait(RESTORE_POLL):
            if self.reconciler.is_connected() or not self.ovsdb.flow_restore_wait():
                continue
            LOG.info("ovs-vswitchd waits for its flows; connecting to %s to restore them", mgmt)
            try:
                self._connect_unix(mgmt)
            except OSError as exc:
                LOG.warning("cannot connect to %s yet: %s", mgmt, exc)
                continue
            self.reconciler.wait_connected(RESTORE_POLL * 20)

    def _keep_underlay_route(self) -> None:
        """The OVS route userspace tunnels need (controller/underlay.py); ``_route_ok``
        says whether it is there."""
        cfg = self.config
        if not cfg.underlay_cidr:
            return
        rundir = os.path.dirname(cfg.ovsdb_sock)
        try:
            if underlay.ensure_route(rundir, cfg.underlay_cidr, cfg.underlay_bridge):
                LOG.info(
                    "added OVS route %s via %s for the tunnels",
                    cfg.underlay_cidr,
                    cfg.underlay_bridge,
                )
        except underlay.UnixctlError as exc:
            if self._route_ok:
                LOG.warning("tunnels have no OVS route to the underlay yet: %s", exc)
            self._route_ok = False
            return
        self._route_ok = True

    def _underlay_route_watch(self) -> None:
        """Retry the route while adding it fails (br-phy has no address yet, vswitchd is
        restarting).  A restarted vswitchd, which starts without it, reconnects to us,
        and that full sync adds it again (_after_full_sync)."""
        while not self._stop.wait(RESTORE_POLL):
            if not self._route_ok:
                self._keep_underlay_route()

    def _keepalive(self) -> None:
        interval = max(1.0, self.config.host_ttl / 3)
        while not self._stop.wait(interval):
            if not self.cluster.keepalive(self.lease):
                LOG.warning("host lease expired; registering %s again", self.config.host)
                self.lease = self.cluster.register_host(
                    self.config.host, self.config.tunnel_ip, self.config.host_ttl
                )

    # -- networks: MTU and the host gateway ----------------------------------------

    def _mtu_for(self, network) -> int:
        mtu = self.config.underlay_mtu - self.tunnel.overhead
        return min(mtu, network.mtu) if getattr(network, "mtu", None) else mtu

    def _gateway_for(self, network) -> str | None:
        return hoststate.gateway_ip(network.cidr) if network.gateway else None

    def _ensure_gateway(self) -> None:
        """The host's port into the default network: an internal port with the network's
        gateway address, so the host reaches its pods (and pods have a next hop)."""
        net = self.cluster.get_network(DEFAULT_NETWORK)
        if net is None or not net.gateway:
            return
        port = hoststate.GATEWAY_PORT
        mac = hoststate.gateway_mac(net.vni)
        self.ovsdb.ensure_port(
            self.config.bridge,
            port,
            type="internal",
            mac=mac,
            external_ids={"ovs-overlay-gateway": DEFAULT_NETWORK},
        )
        ip = hoststate.gateway_ip(net.cidr)
        prefix = ipaddress.ip_network(net.cidr).prefixlen
        with IPRoute() as ipr:
            idx = ipr.link_lookup(ifname=port)[0]
            ipr.link("set", index=idx, mtu=self._mtu_for(net), state="up")
            try:
                ipr.addr("add", index=idx, address=ip, prefixlen=prefix)
            except Exception as exc:  # already there after an agent restart
                if getattr(exc, "code", None) != errno.EEXIST:
                    raise
        self._gateway = hoststate.GatewayPort(DEFAULT_NETWORK, 0, mac, ip)

    def _missing_port_flows(self, ofport: int) -> list[str]:
        try:
            return self.reconciler.missing_port_flows(ofport)
        except SwitchError as exc:
            raise AttachError(f"cannot read br-int's flows: {exc}", code=11) from None

    def _gateway_ports(self, iface: dict | None) -> list[hoststate.GatewayPort]:
        gw = getattr(self, "_gateway", None)
        if gw is None:
            return []
        if not iface or not iface["ofport"] or iface["ofport"] < 0:
            return []
        return [hoststate.GatewayPort(gw.network, iface["ofport"], gw.mac, gw.ip)]

    # -- generation and restarts ------------------------------------------------------

    def _load_generation(self) -> int:
        info = self.ovsdb.bridge_info(self.config.bridge)
        return int(info.external_ids.get(GENERATION_KEY, "0"))

    def _save_generation(self, generation: int) -> None:
        self.ovsdb.set_bridge_external_ids(self.config.bridge, {GENERATION_KEY: str(generation)})

    def _after_full_sync(self) -> None:
        """After a (re)connect: a restarted ovs-vswitchd recreated its internal ports (the
        gateway lost its address), and forgot the tunnels' route and neighbours; restore
        all three, then let it forward."""
        self._ensure_gateway()
        self._keep_underlay_route()
        self._solicited = set()
        self._warm_neighbours(
            [h.tunnel_ip for h in self.cluster.list_hosts() if h.name != self.config.host]
        )
        if self.ovsdb.set_flow_restore_wait(False):
            LOG.info("flows restored: cleared flow-restore-wait, ovs-vswitchd forwards again")
        self.ready.set()

    # -- API ----------------------------------------------------------------------------

    def _api_status(self) -> dict:
        return {
            "host": self.config.host,
            "ready": self.ready.is_set(),
            "generation": self.reconciler.generation,
            "full_syncs": self.reconciler.full_syncs,
        }

    def _api_attach(
        self,
        network: str,
        container_id: str,
        ifname: str,
        netns: str,
        ip: str | None = None,
        mac: str | None = None,
        mtu: int | None = None,
    ) -> dict:
        try:
            return self.endpoints.attach(
                AttachRequest(network, container_id, ifname, netns, ip, mac, mtu)
            ).to_json()
        except AttachError as exc:
            raise ApiError(str(exc), exc.code) from None

    def _api_detach(self, network: str, container_id: str, ifname: str) -> dict:
        self.endpoints.detach(network, container_id, ifname)
        return {}

    def _api_check(
        self,
        network: str,
        container_id: str,
        ifname: str,
        netns: str,
        routes: Sequence[dict] = (),
    ) -> dict:
        try:
            self.endpoints.check(network, container_id, ifname, netns, routes)
        except AttachError as exc:
            raise ApiError(str(exc), exc.code) from None
        return {}

    def _api_gc(self, network: str, keep: list[str]) -> dict:
        return {"removed": self.endpoints.gc(network, keep)}
