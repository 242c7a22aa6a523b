"""The per-host agent: br-int, the host's record in the cluster state, the pipeline
kept in sync with both, and the local API that attaches endpoints.

The pipeline's inputs arrive as changes: this host's ports from OVSDB (``publish``,
after an ADD or DEL, and at start), everything else from the cluster cache
(controller/cluster_cache.py).  The reconciler applies them incrementally.

The OpenFlow side (switch connect/disconnect, replies) comes in through the
os-ken app (controller.app), which owns an Agent and starts it.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import threading
import time
from collections.abc import Sequence

from pyroute2 import IPRoute

from controller import cni_gateway, egress, hoststate, metrics, nftables, status, underlay
from controller.api import ApiError, ApiServer
from controller.cluster_cache import ClusterCache
from controller.cnm import cleanup as cnm_cleanup
from controller.cnm.common import Context as CnmContext
from controller.cnm.server import CnmServer
from controller.config import AgentConfig
from controller.endpoints import (
    HOST_PORT_PREFIX,
    AttachError,
    AttachRequest,
    EndpointManager,
    mac_for,
)
from controller.membership import Membership
from controller.policy_metrics import PolicyHitsCollector
from controller.policy_watch import PolicyWatch
from controller.reconciler import Reconciler
from controller.switch import SwitchError
from openflow.incremental import Change, Object, Peer, Remove, SetTunnel, Upsert
from openflow.state import Gateway, LocalPort
from openflow.tables import table_names
from ovsdb.client import IntegrationBridge, OvsdbClient, endpoint_ports
from ovsdb.datapath import choose_datapath_type
from ovsdb.tunnel import TunnelPort
from store import open_cluster
from store.cluster import HostGateway, gateway_attachment, pod_name

LOG = logging.getLogger(__name__)

GENERATION_KEY = "ovs-overlay-generation"
DEFAULT_NETWORK = "default"
PUBLISH_TIMEOUT = 10.0
RESTORE_POLL = 0.2
LOCAL_RANK = (0,)  # this host's ports win any conflict with a store record


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
        self.endpoints: EndpointManager | None = None
        self.policy: PolicyWatch | None = None
        self.api: ApiServer | None = None
        self.cnm: CnmServer | None = None  # Docker's drivers, with [docker] plugin_dir
        self.metrics: metrics.MetricsServer | None = None
        self._threads: list[threading.Thread] = []
        self._solicited: set[str] = set()
        self._route_ok = True  # whether the last look found the underlay route in OVS
        self._local_lock = threading.Lock()
        self._local: dict[str, Object] = {}  # what was last submitted from OVSDB, by key
        self._tunnel_ofport = 0
        self._gateway: hoststate.GatewayPort | None = None
        self._host_gateway: HostGateway | None = None  # claimed at start, published
        self._egress_lock = threading.Lock()
        self._egress_rules: str | None = None  # the nftables table last written
        self._forwarding_warned = False
        self.underlay_mtu = 0  # set at start: configured, or read from the tunnel IP's link
        self.datapath_type: str | None = None  # set at start

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        cfg = self.config
        self.underlay_mtu = self._underlay_mtu()
        self.cluster = open_cluster(cfg.store)
        self.ovsdb = OvsdbClient(cfg.ovsdb_sock)
        choice = choose_datapath_type(cfg.datapath_type)
        LOG.info("datapath_type %s: %s", choice.datapath_type, choice.reason)
        self.datapath_type = choice.datapath_type
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
        self.cache = ClusterCache(
            self.cluster,
            cfg.host,
            cfg.tunnel_ip,
            self._submit_remote,
            self._store_back,
            on_networks=self._networks_changed,
        )
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
        self._spawn(lambda: self.endpoints.keep_store_clean(self._stop), "store-cleanup")
        self._host_gateway = self._claim_gateway()
        self.membership = Membership(
            self.cluster,
            cfg.host,
            cfg.tunnel_ip,
            cfg.host_ttl,
            self._republish,
            [self._host_gateway] if self._host_gateway else [],
        )
        self.membership.register()
        self._spawn(lambda: self.membership.run(self._stop), "keepalive")
        gateway = self._host_gateway
        keep = [(gateway.network, self._gateway_attachment())] if gateway else []
        cnm = CnmContext(cfg.host, self.cluster, self.endpoints)
        if cfg.docker_plugin_dir:  # Docker's addresses may have no port yet: not orphans
            keep += cnm_cleanup.keep(cnm, time.time())
        for what in self.endpoints.reconcile(keep):
            LOG.warning("removed an orphan left while the agent was away: %s", what)
        if cfg.docker_plugin_dir:  # after reconcile: it removed the ports of dead sandboxes
            try:
                cnm_cleanup.collect(cnm, time.time(), activate=False)
            except Exception:  # the store failing a read: the periodic collect retries
                LOG.exception("removing what dockerd left failed; tried again in a minute")
            self._spawn(lambda: cnm_cleanup.keep_clean(cnm, self._stop), "docker-cleanup")
        # The store's state first, so the first full sync (on connect) has everything.
        revisions = self.cache.load()
        self.policy = PolicyWatch(
            self.cluster,
            cfg.kubernetes_network,
            self._network_index,
            self.reconciler.submit,
            self._kubernetes_host_ip,
        )
        policy_revisions = self.policy.load()
        self.policy.compile_now()  # conntrack for the Kubernetes network from the start
        self._ensure_gateway()
        self._keep_underlay_route()
        if cfg.underlay_cidr:
            self._spawn(self._underlay_route_watch, "underlay-route")
        self.sync_local()
        for prefix, revision in revisions.items():
            self._spawn(
                lambda p=prefix, r=revision: self.cache.watch(p, r, self._stop), f"watch-{prefix}"
            )
        for prefix, revision in policy_revisions.items():
            self._spawn(
                lambda p=prefix, r=revision: self.policy.watch(p, r, self._stop),
                f"policy-watch-{prefix}",
            )
        self._spawn(lambda: self.policy.run(self._stop), "policy-compile")
        if self._connect_unix is not None:
            self._spawn(self._dial_watch, "dial-watch")
        handlers = {
            "status": self._api_status,
            "attach": self._api_attach,
            "detach": self._api_detach,
            "check": self._api_check,
            "gc": self._api_gc,
        }
        # The compiled CNI shim's requests, served with the plugin's code (cni/shim.c).
        handlers["cni"] = lambda env, stdin: cni_gateway.serve(handlers, cfg.socket, env, stdin)
        self.api = ApiServer(cfg.socket, handlers)
        self.api.start()
        if cfg.docker_plugin_dir:
            self.cnm = CnmServer(cfg.docker_plugin_dir, cnm)
            self.cnm.start()
            LOG.info("serving Docker's ovs-overlay drivers on %s", self.cnm.path)
        self.metrics = metrics.serve(
            cfg.metrics_address,
            cfg.metrics_port,
            self._metrics,
            (PolicyHitsCollector(self.reconciler),),
        )
        LOG.info(
            "agent for host %s started (tunnel %s from %s)",
            cfg.host,
            self.tunnel.name,
            cfg.tunnel_ip,
        )

    def stop(self) -> None:
        self._stop.set()
        if self.endpoints is not None:
            self.endpoints.wake_store_cleanup()  # to see the stop
        if self.policy is not None:
            self.policy.stop()
        if self.metrics is not None:
            self.metrics.close()
        if self.api is not None:
            self.api.stop()
        if self.cnm is not None:
            self.cnm.stop()
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

    def sync_local(self) -> int:
        """Submit what changed in this host's own ports (one OVSDB read, no store read);
        returns the version to wait for.  Local ports rank first: a store record that
        collides with one is the one skipped."""
        cfg = self.config
        with self._local_lock:
            interfaces = self.ovsdb.interfaces(cfg.bridge)
            tunnel = interfaces.get(self.tunnel.name)
            if not tunnel or not tunnel["ofport"] or tunnel["ofport"] < 0:
                raise RuntimeError(
                    f"tunnel port {self.tunnel.name} has no OpenFlow port on {cfg.bridge}"
                )
            want: dict[str, Object] = {}
            pods: dict[str, tuple[int, str | None]] = {}  # the Kubernetes network's, by IP
            for a in endpoint_ports(interfaces):
                if a.ofport and a.ofport > 0:
                    ep = a.endpoint
                    want[f"port/{ep.port}"] = LocalPort(ep.network, a.ofport, ep.mac, ep.ip)
                    if ep.network == cfg.kubernetes_network:
                        pods[ep.ip] = (a.ofport, ep.pod)
            for gw in self._gateway_ports(interfaces.get(hoststate.GATEWAY_PORT)):
                key = f"gateway/{hoststate.GATEWAY_PORT}"
                want[key] = Gateway(gw.network, gw.ofport, gw.mac, gw.ip, gw.anycast)
            changes: list[Change] = []
            if tunnel["ofport"] != self._tunnel_ofport:
                changes.append(SetTunnel(tunnel["ofport"]))
            changes += [Remove(k) for k in self._local.keys() - want.keys()]
            changes += [
                Upsert(k, o, LOCAL_RANK) for k, o in want.items() if self._local.get(k) != o
            ]
            if self.policy is None:
                version = self.reconciler.submit(changes)
            else:  # a pod's port and its policy flows in one batch (PolicyWatch.submit_with)
                version = self.policy.submit_with(changes, pods)
            # Only once submitted: a failure above leaves the next call the same diff.
            self._local = want
            self._tunnel_ofport = tunnel["ofport"]
            return version

    def _submit_remote(self, changes) -> int:
        """The cluster cache's changes to the reconciler; a new peer's underlay neighbour
        is warmed first (controller/underlay.py)."""
        peers = [c.obj.ip for c in changes if isinstance(c, Upsert) and isinstance(c.obj, Peer)]
        if any(isinstance(c, Remove) and str(c.key).startswith("hosts/") for c in changes):
            self._solicited &= set(self.cache.peer_ips())  # bounded by the live peers
        if peers:
            self._warm_neighbours(peers)
        return self.reconciler.submit(changes, from_store=True)

    def _warm_neighbours(self, peers) -> None:
        new = set(peers) - self._solicited
        if new:
            try:
                if underlay.solicit(self.config.tunnel_ip, sorted(new)):
                    self._solicited |= new
            except OSError as exc:
                LOG.warning("could not solicit underlay neighbours %s: %s", sorted(new), exc)

    def publish(self) -> None:
        """Submit this host's port changes and wait until br-int has them (an endpoint
        is reachable on return).  The store is not read: remote state arrives by watch."""
        try:
            version = self.sync_local()
        except Exception as exc:
            raise AttachError(
                f"the agent could not read br-int's ports: {exc}", code=11, reason="agent_error"
            ) from exc
        if not self.reconciler.wait_applied(version, PUBLISH_TIMEOUT):
            raise AttachError(
                f"br-int did not take the new flows within {PUBLISH_TIMEOUT:.0f}s; "
                "check that ovs-vswitchd is connected to the agent",
                code=11,
                reason="switch_not_applied",
            )

    def _republish(self) -> int:
        """Put this host's endpoints into the store again from OVSDB (after the host's
        lease expired during a store outage: same addresses, same MACs)."""
        count = 0
        for a in self.ovsdb.list_endpoint_ports(self.config.bridge):
            ep = a.endpoint
            try:
                self.cluster.put_endpoint(
                    ep.network,
                    self.config.host,
                    ep.attachment,
                    mac=ep.mac,
                    ip=ep.ip,
                    container_id=ep.container_id,
                    ifname=ep.ifname,
                    pod=ep.pod,
                )
                count += 1
            except ValueError as exc:  # e.g. its network was deleted meanwhile
                LOG.warning("could not re-publish endpoint %s: %s", ep.attachment, exc)
        return count

    def _dial_watch(self) -> None:
        """Connect to br-int's management socket whenever no switch is connected.

        ovs-vswitchd dials our listener, but late when it came up before the agent
        listened: OVS 3.1 (ofproto/connmgr.c, ``ofservice_create``) makes a controller's
        connection with a fixed 8 s maximum backoff and applies the Controller row's
        ``max_backoff`` only once that connection has been up, so its first attempts come
        1, 2, 4 and 8 s apart whatever the row says ("waiting 4 seconds before reconnect"
        in its log; 0.9-2.1 s of a new host's join and 0.6-1.9 s of every agent start).
        One started with flow-restore-wait=true connects to no controller at all (only
        the management socket is open) and forwards nothing until the flag is cleared.
        So the agent does not wait for it: it connects to the management socket itself,
        as ovs-ofctl and Antrea's agent do; the full sync runs over that connection, and
        vswitchd's own connection, when it comes, is kept as a spare (controller/app.py).
        """
        mgmt = os.path.join(os.path.dirname(self.config.ovsdb_sock), f"{self.config.bridge}.mgmt")
        failing = False
        while True:
            if not self.reconciler.is_connected():
                try:
                    self._connect_unix(mgmt)
                except OSError as exc:
                    if not failing:
                        LOG.warning("cannot connect to %s yet (%s); retrying", mgmt, exc)
                    failing = True
                else:
                    failing = False
                    LOG.info("no switch connected: connected to %s", mgmt)
                    self.reconciler.wait_connected(RESTORE_POLL * 20)
            if self._stop.wait(RESTORE_POLL):
                return

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

    # -- networks: MTU and the host gateway ----------------------------------------

    def _store_back(self) -> None:
        """What failed requests left in the store while it was away goes now, not at the
        next request (which may never come) nor the cleanup's next retry."""
        self.endpoints.wake_store_cleanup()

    def _underlay_mtu(self) -> int:
        """The configured underlay MTU, else the MTU of the link holding the tunnel IP: a
        9000-byte underlay gives 8950-byte pods over VXLAN, and no MTU is assumed."""
        cfg = self.config
        if cfg.underlay_mtu:
            return cfg.underlay_mtu
        mtu = underlay.mtu_of(cfg.tunnel_ip)
        if mtu is None:
            raise RuntimeError(
                f"tunnel_ip {cfg.tunnel_ip} is on no interface of this host, so the underlay "
                "MTU is unknown; put the address on the underlay interface (or br-phy) before "
                "starting the agent, or set [agent] underlay_mtu"
            )
        LOG.info("underlay MTU %d (the link holding %s)", mtu, cfg.tunnel_ip)
        return mtu

    def _mtu_for(self, network) -> int:
        mtu = self.underlay_mtu - self.tunnel.overhead
        return min(mtu, network.mtu) if getattr(network, "mtu", None) else mtu

    def _gateway_for(self, network) -> str | None:
        return hoststate.gateway_ip(network.cidr) if network.gateway else None

    def _claim_gateway(self) -> HostGateway | None:
        """This host's own address in the default network, claimed in the store like a
        pod's (from this host's blocks) under an attachment id no container can have
        (store.cluster.gateway_attachment), so every restart finds the same one; its MAC
        is derived from it as a pod's is.  Raises KvError while the store is away (the
        agent's start needs it, as it needs to register)."""
        net = self.cluster.get_network(DEFAULT_NETWORK)
        if net is None or not net.gateway:
            return None
        host = self.config.host
        claim = self.cluster.claim_address(
            DEFAULT_NETWORK, host, self._gateway_attachment(), known=net
        )
        LOG.info("host gateway %s in network %s: %s", hoststate.GATEWAY_PORT, net.name, claim.ip)
        return HostGateway(DEFAULT_NETWORK, claim.ip, mac_for(claim.ip))

    def _gateway_attachment(self) -> str:
        return gateway_attachment(self.config.host, hoststate.GATEWAY_PORT)

    def _ensure_gateway(self) -> None:
        """The host's port into the default network: an internal port whose primary
        address is this host's own (the host reaches every pod from it, and replies come
        back here) and which also holds the network's anycast gateway as a /32 (pods'
        default route; the switch answers ARP for it with this port's MAC, so a pod's
        next hop is always its own host)."""
        net = self.cache.network(DEFAULT_NETWORK)
        gw = self._host_gateway
        if net is None or not net.gateway or gw is None:
            return
        port = hoststate.GATEWAY_PORT
        self.ovsdb.ensure_port(
            self.config.bridge,
            port,
            type="internal",
            mac=gw.mac,
            external_ids={"ovs-overlay-gateway": DEFAULT_NETWORK},
        )
        anycast = hoststate.gateway_ip(net.cidr)
        want = {(gw.ip, ipaddress.ip_network(net.cidr).prefixlen), (anycast, 32)}
        with IPRoute() as ipr:
            idx = ipr.link_lookup(ifname=port)[0]
            ipr.link("set", index=idx, mtu=self._mtu_for(net), state="up")
            # Anything else goes first (an agent before host gateways had the anycast as
            # the /16): deleting a primary address takes its secondaries with it.
            for addr in ipr.get_addr(index=idx, family=socket.AF_INET):
                have = (addr.get_attr("IFA_ADDRESS"), addr["prefixlen"])
                if have not in want:
                    ipr.addr("del", index=idx, address=have[0], prefixlen=have[1])
            for address, prefixlen in sorted(want, key=lambda a: a[1]):  # the subnet's first
                try:
                    ipr.addr("add", index=idx, address=address, prefixlen=prefixlen)
                except Exception as exc:  # already there after an agent restart
                    if getattr(exc, "code", None) != errno.EEXIST:
                        raise
        self._gateway = hoststate.GatewayPort(DEFAULT_NETWORK, 0, gw.mac, gw.ip, anycast)
        self._keep_egress(rewrite=True)

    def _network_index(self, name: str) -> int | None:
        network = self.cache.network(name)
        return None if network is None else network.index

    def _kubernetes_host_ip(self) -> str | None:
        """This host's own address in the Kubernetes network (its gateway's), if any."""
        gw = self._host_gateway
        return gw.ip if gw is not None and gw.network == self.config.kubernetes_network else None

    def _networks_changed(self) -> None:
        """A network record changed (the cluster cache's watch): the default network made
        after this agent started gets its gateway now (claimed, published with the host,
        the port made, its flows submitted), and the egress table follows the network's
        flag.  Failures are logged: the next change or full sync tries again."""
        if self.policy is not None:
            self.policy.changed()  # the Kubernetes network's index may be known now
        try:
            if self._host_gateway is None:
                gateway = self._claim_gateway()
                if gateway is None:
                    return
                self._host_gateway = gateway
                if self.policy is not None:
                    self.policy.changed()  # the node's own address now reaches its pods
                self.membership.publish([gateway])
                self._ensure_gateway()
                self.sync_local()
            else:
                self._keep_egress()
        except Exception:
            LOG.exception("could not follow the change of network %s", DEFAULT_NETWORK)

    def _keep_egress(self, rewrite: bool = False) -> None:
        """The host's nftables table for the gateway (controller/egress.py) as the default
        network now wants it: written when it changed (a network's egress turned on or
        off), or always with ``rewrite`` (start, and after a full sync: cheap, and it puts
        back a table someone flushed).  A refusal is logged, never fatal: pods keep
        everything but egress."""
        net = self.cache.network(DEFAULT_NETWORK)
        if self._gateway is None or net is None or not net.gateway:
            return
        spec = egress.EgressSpec(hoststate.GATEWAY_PORT, net.cidr, net.egress, HOST_PORT_PREFIX)
        rules = egress.ruleset(spec)
        with self._egress_lock:
            if rules == self._egress_rules and not rewrite:
                return
            try:
                nftables.run(rules)
            except nftables.NftError as exc:
                LOG.error("could not write the egress table %s: %s", egress.TABLE, exc)
                self._egress_rules = None
                return
            if rules != self._egress_rules:
                LOG.info(
                    "egress of network %s (%s) %s",
                    net.name,
                    net.cidr,
                    "on: SNAT through this host" if net.egress else "off",
                )
            self._egress_rules = rules
        if net.egress and not self._forwarding_warned and not _forwarding():
            self._forwarding_warned = True
            LOG.warning(
                "net.ipv4.ip_forward is 0 in the agent's namespace, so pods reach nothing "
                "outside the overlay; set it to 1 (docs/operations.md)"
            )

    def _missing_port_flows(self, ofport: int) -> list[str]:
        try:
            return self.reconciler.missing_port_flows(ofport)
        except SwitchError as exc:
            raise AttachError(f"cannot read br-int's flows: {exc}", code=11) from None

    def _gateway_ports(self, iface: dict | None) -> list[hoststate.GatewayPort]:
        gw = self._gateway
        if gw is None:
            return []
        if not iface or not iface["ofport"] or iface["ofport"] < 0:
            return []
        return [hoststate.GatewayPort(gw.network, iface["ofport"], gw.mac, gw.ip, gw.anycast)]

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
        try:
            self._ensure_gateway()
        except Exception:  # not the switch's fault: the full sync stands, CHECK will tell
            LOG.exception("could not restore the gateway port %s", hoststate.GATEWAY_PORT)
        self._keep_underlay_route()
        self._solicited = set()
        self._warm_neighbours(self.cache.peer_ips())
        try:  # a restarted vswitchd may have given the gateway port another number
            self.sync_local()
        except Exception:
            LOG.exception("could not re-read br-int's ports after the full sync")
        if self.ovsdb.set_flow_restore_wait(False):
            LOG.info("flows restored: cleared flow-restore-wait, ovs-vswitchd forwards again")
        self.ready.set()

    def _metrics(self) -> metrics.Snapshot:
        """The state part of a scrape, from counts kept anyway (controller/metrics.py)."""
        flows, groups = self.reconciler.installed_counts()
        local = sum(1 for key in self._local if key.startswith("port/"))  # replaced, not changed
        return metrics.Snapshot(
            local_endpoints=local,
            peers=self.cache.peer_count(),
            flows_by_table=flows,
            groups=groups,
            generation=self.reconciler.generation,
            full_syncs=self.reconciler.full_syncs,
            openflow_connected=self.reconciler.is_connected(),
            ovsdb_reconnects=self.ovsdb.reconnects,
            store_up=self.cache.store_reachable(),
            ready=self.ready.is_set(),
        )

    # -- API ----------------------------------------------------------------------------

    def _api_status(self) -> dict:
        policy = self.policy
        return status.agent_status(
            self.config,
            self.ready.is_set(),
            self.datapath_type,
            self.reconciler,
            self.membership,
            policy.policy_count() if policy is not None else 0,
        )

    def _api_attach(
        self,
        network: str,
        container_id: str,
        ifname: str,
        netns: str,
        ip: str | None = None,
        mac: str | None = None,
        mtu: int | None = None,
        pod: str | None = None,
    ) -> dict:
        try:
            return self.endpoints.attach(
                AttachRequest(network, container_id, ifname, netns, ip, mac, mtu, pod_name(pod))
            ).to_json()
        except AttachError as exc:
            raise ApiError(str(exc), exc.code, exc.reason) from None

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
            raise ApiError(str(exc), exc.code, exc.reason) from None
        return {}

    def _api_gc(self, network: str, keep: list[str]) -> dict:
        return {"removed": self.endpoints.gc(network, keep)}


def _forwarding() -> bool:
    """Whether this namespace forwards IPv4 (/proc/sys/net shows the reader's namespace)."""
    try:
        with open("/proc/sys/net/ipv4/ip_forward") as f:
            return f.read().strip() == "1"
    except OSError:
        return False
