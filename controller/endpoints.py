"""Attaching an endpoint (a pod's interface) to the overlay, and detaching it.

This is the agent's half of CNI ADD/DEL, and what ``lab pod add`` calls today.
ADD is admitted first (controller/admission.py: every check before any side
effect), then does its steps, recording an undo for each; a failing step undoes
the earlier ones in reverse, so a failed ADD leaves nothing behind.  DEL succeeds
when any part is already gone.  ADD, DEL and CHECK of one attachment hold its lock.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from functools import partial

from pyroute2 import IPRoute

from cni import admission as request_checks
from controller import netns, requestlog, veth
from controller.admission import (
    ERR_INVALID_ENV,
    ERR_TRY_AGAIN,
    AttachError,
    AttachmentLocks,
    admit,
    require_netns,
    store_unavailable,
)
from ovsdb.client import OvsdbClient
from ovsdb.endpoint import IP_KEY, MAC_KEY, POD_KEY, EndpointPort
from store.cluster import AddressExhaustedError, AddressInUseError, Network, StoreError
from store.kv import KvError

LOG = logging.getLogger(__name__)
# Seconds between tries to release what failed requests left while the store was away.
CLEANUP_RETRY_FIRST, CLEANUP_RETRY_MAX = 0.5, 5.0


@dataclass(frozen=True)
class AttachRequest:
    network: str
    container_id: str
    ifname: str
    netns: str
    ip: str | None = None  # static, from CNI_ARGS
    mac: str | None = None
    mtu: int | None = None
    pod: str | None = None  # "NAMESPACE/NAME", from K8S_POD_NAMESPACE/K8S_POD_NAME


@dataclass(frozen=True)
class Attachment:
    network: str
    container_id: str
    ifname: str
    netns: str
    host_port: str
    host_mac: str
    mac: str
    ip: str
    prefixlen: int
    gateway: str | None
    mtu: int
    default_route: bool = False  # via gateway; not when the pod had one (a second network)

    def to_json(self) -> dict:
        return dict(self.__dict__)


HOST_PORT_PREFIX = "ovo"


def host_port_name(container_id: str, ifname: str) -> str:
    """The host end's name: stable per attachment, 15 characters, recognisably ours."""
    return HOST_PORT_PREFIX + hashlib.sha256(f"{container_id}/{ifname}".encode()).hexdigest()[:12]


mac_for = request_checks.derived_mac

# Docker's endpoints and address claims hold attachment ids under this prefix
# (controller/cnm/): no CNI attachment has one (CNI's container ids refuse ':').
DOCKER_ATTACHMENT_PREFIX = "docker:"


def is_docker(attachment: str) -> bool:
    """Whether an attachment id is one of Docker's (controller/cnm/), not a CNI one."""
    return attachment.startswith(DOCKER_ATTACHMENT_PREFIX)


class _Steps:
    """Milliseconds per step of an ADD or DEL, noted for the request's log line
    (controller/requestlog.py): where a slow pod start went."""

    def __init__(self):
        self._last = time.perf_counter()
        self._ms: dict[str, float] = {}

    def done(self, step: str) -> None:
        now = time.perf_counter()
        self._ms[step] = (now - self._last) * 1000
        self._last = now
        requestlog.note(steps=dict(self._ms))


def _in_use(req: AttachRequest, exc: AddressInUseError) -> str:
    """The refusal of an address or MAC another attachment holds, in the request's terms."""
    if exc.kind == "MAC" and req.mac is not None:
        return (
            f"CNI_ARGS MAC={req.mac} is already used in network {req.network} by "
            f"{exc.holder}; pick another MAC or leave MAC= out"
        )
    if exc.kind == "MAC":
        return f"the MAC derived from the address: {exc}"
    return f"CNI_ARGS IP={req.ip}: {exc}"


class _Beside:
    """``fn`` run in a thread of its own while the caller does something else; ``join``
    returns what it raised (None when it returned), for the caller to raise in its own
    thread."""

    def __init__(self, fn: Callable[[], object]):
        self._error: BaseException | None = None

        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # handed to the caller by join
                self._error = exc

        self._thread = threading.Thread(target=run, name="beside-request")
        self._thread.start()

    def join(self) -> BaseException | None:
        self._thread.join()
        return self._error


class EndpointManager:
    def __init__(
        self,
        host: str,
        bridge: str,
        ovsdb: OvsdbClient,
        cluster,
        mtu_for: Callable[[object], int],
        gateway_for: Callable[[object], str | None],
        publish: Callable[[], None],
        missing_port_flows: Callable[[int], list[str]],
    ):
        self.host = host
        self.bridge = bridge
        self.ovsdb = ovsdb
        self.cluster = cluster
        self.mtu_for = mtu_for
        self.gateway_for = gateway_for
        self.publish = publish  # rebuilds the pipeline and waits until br-int has it
        self.missing_port_flows = missing_port_flows  # tables lacking a port's flows
        self.locks = AttachmentLocks()
        # (network, attachment) whose store records a failed request could not remove
        # because the store was away: removed by keep_store_clean once the store is back,
        # or by the next request that finds it back, whichever comes first.
        self._unfinished: set[tuple[str, str, str | None]] = set()  # + the MAC if known
        self._unfinished_lock = threading.Lock()
        self._cleanup_due = threading.Event()  # something was deferred, or the store is back

    def attach(self, req: AttachRequest) -> Attachment:
        """Admit the request (every check before any side effect: a refusal changes
        nothing), then attach it, holding the attachment's lock.  The API has other
        clients than the plugin, so the plugin's checks are made again here."""
        ip, mac = admit("ADD", req.container_id, req.ifname, req.netns, req.ip, req.mac, req.mtu)
        req = replace(req, ip=ip, mac=mac)
        attachment_id = f"{req.container_id}/{req.ifname}"
        self.finish_store_cleanup(f"ADD of {attachment_id}")
        with self.locks.hold(attachment_id):
            self._forget_unfinished(req.network, attachment_id)  # ADD retried: its own now
            try:
                return self._attach(req, attachment_id)
            except KvError as exc:  # rolled back already, as far as the store let us
                raise store_unavailable(f"ADD of {attachment_id}", exc) from None

    def finish_store_cleanup(self, request: str | None = None) -> None:
        """Remove the store records that failed requests left while the store was away
        (their address, endpoint record and MAC), each under its attachment's lock and
        only if it was not attached since.  Nothing to do in the common case.  Called by
        each request (``request`` names it: if the store is still away, it fails now with
        code 11 rather than wait for the store a second time) and when the cluster cache
        finds the store back (no request: it just stops)."""
        with self._unfinished_lock:
            pending = sorted(self._unfinished, key=lambda u: (u[0], u[1], u[2] or ""))
        for network, attachment, mac in pending:
            with self.locks.hold(attachment):
                if (network, attachment, mac) not in self._unfinished:
                    continue
                container_id, _, ifname = attachment.rpartition("/")
                if self.ovsdb.interface(self.bridge, host_port_name(container_id, ifname)):
                    self._forget_unfinished(network, attachment)  # live again: keep it
                    continue
                try:
                    self._release_store(network, attachment, mac)
                except KvError as exc:  # still away: the next request tries again
                    if request is None:
                        return
                    raise store_unavailable(request, exc) from None
                with self._unfinished_lock:
                    self._unfinished.discard((network, attachment, mac))
                LOG.info("released the store records %s left while the store was away", attachment)

    def keep_store_clean(self, stop: threading.Event) -> None:
        """Release what failed requests left in the store as soon as it takes writes
        again, with no request needed (the next may never come).  Retries with a backoff
        while anything is deferred; idle otherwise.  The cluster cache's notice that the
        store is back (``wake_store_cleanup``) only makes it sooner: a watch may not notice
        a short outage at all (etcd ends a watch for want of a leader only after some
        election timeouts), so the retry is what guarantees it.  Survives every exception:
        a failure here is logged and retried, never a reason to stop."""
        backoff = CLEANUP_RETRY_FIRST
        while True:
            self._cleanup_due.wait(backoff if self._deferred() else None)
            self._cleanup_due.clear()
            if stop.is_set():
                return
            try:
                self.finish_store_cleanup()
            except Exception:  # an OVSDB error, a bug: say it; the next round tries again
                LOG.exception("releasing the store records failed requests left")
            backoff = (
                min(CLEANUP_RETRY_MAX, backoff * 2) if self._deferred() else CLEANUP_RETRY_FIRST
            )

    def wake_store_cleanup(self) -> None:
        """Try the deferred releases now (the store is back, or the agent stops)."""
        self._cleanup_due.set()

    def _deferred(self) -> bool:
        with self._unfinished_lock:
            return bool(self._unfinished)

    def _defer(self, network: str, attachment: str, mac: str | None) -> None:
        with self._unfinished_lock:
            self._unfinished.add((network, attachment, mac))
        self._cleanup_due.set()

    def _forget_unfinished(self, network: str, attachment: str) -> None:
        with self._unfinished_lock:
            self._unfinished -= {u for u in self._unfinished if u[:2] == (network, attachment)}

    def _attach(self, req: AttachRequest, attachment_id: str) -> Attachment:
        network = self.cluster.get_network(req.network)
        if network is None:
            raise AttachError(
                f"network {req.network!r} does not exist; create it with "
                f"'ovs-overlayctl network create {req.network} --cidr CIDR --vni VNI'",
                reason="unknown_network",
            )
        require_netns(req.netns)
        mtu = self.mtu_for(network)
        if req.mtu is not None and req.mtu > mtu:
            raise AttachError(
                f"mtu {req.mtu} is larger than network {req.network} carries ({mtu}); "
                f"use {mtu} or less",
                reason="mtu_too_large",
            )
        if self.ovsdb.interface(self.bridge, host_port_name(req.container_id, req.ifname)):
            # Without this, the ADD would fail at the veth and its rollback would release
            # the address the live attachment holds.
            raise AttachError(
                f"{attachment_id} is attached already; DEL it before adding it again",
                reason="attached_already",
            )
        undo: list[tuple[str, Callable[[], None]]] = []
        steps = _Steps()
        claimed_mac: str | None = None
        try:
            try:  # the address and the MAC at once, before anything carries either
                claim = self.cluster.claim_address(
                    req.network,
                    self.host,
                    attachment_id,
                    ip=req.ip,
                    mac=req.mac,
                    derive_mac=mac_for,
                    known=network,
                )
            except AddressExhaustedError as exc:
                # Not the runtime's fault and not permanent: deleting pods frees addresses.
                raise AttachError(
                    str(exc), code=ERR_TRY_AGAIN, reason="addresses_exhausted"
                ) from None
            except AddressInUseError as exc:
                raise AttachError(
                    _in_use(req, exc), code=ERR_INVALID_ENV, reason="address_in_use"
                ) from None
            except KvError:  # its outcome may be unknown: if it landed, release it later
                self._defer(req.network, attachment_id, req.mac)
                raise
            except StoreError as exc:  # a static IP outside the network
                raise AttachError(f"CNI_ARGS IP={req.ip}: {exc}", code=ERR_INVALID_ENV) from None
            claimed_mac = claim.mac
            undo.append(
                (
                    "release IP and MAC",
                    lambda: self._release_store(req.network, attachment_id, claim.mac),
                )
            )
            att = Attachment(
                network=req.network,
                container_id=req.container_id,
                ifname=req.ifname,
                netns=req.netns,
                host_port=host_port_name(req.container_id, req.ifname),
                host_mac="",
                mac=claim.mac,
                ip=claim.ip,
                prefixlen=ipaddress.ip_network(network.cidr).prefixlen,
                gateway=self.gateway_for(network),
                mtu=req.mtu or mtu,
            )
            steps.done("ipam")  # the address and the MAC
            # Undone from before it begins, so a step failing after `link add` (address,
            # route, offloads) leaves no host end behind.  (No live attachment owns this
            # name: that was refused above.)
            undo.append(("delete veth", lambda: veth.delete(att.host_port)))
            host_mac, default_route = veth.create(
                req.netns,
                host_port=att.host_port,
                ifname=att.ifname,
                mac=att.mac,
                ip=att.ip,
                prefixlen=att.prefixlen,
                gateway=att.gateway,
                mtu=att.mtu,
            )
            att = replace(att, host_mac=host_mac, default_route=default_route)
            steps.done("veth")
            self.plug(
                network,
                EndpointPort(
                    att.host_port,
                    req.network,
                    network.vni,
                    req.container_id,
                    req.ifname,
                    att.mac,
                    att.ip,
                    req.pod,
                ),
                undo,
                claimed=claim.revision,
                steps=steps,
            )
            steps.done("store")  # what the record took beyond the port
            self.publish()
            steps.done("flows")
            return att
        except Exception:
            self.roll_back(undo, req.network, attachment_id, claimed_mac)
            raise

    def plug(
        self,
        network: Network,
        port: EndpointPort,
        undo: list[tuple[str, Callable[[], None]]],
        *,
        claimed: int = 0,
        steps: _Steps | None = None,
    ) -> None:
        """Put ``port`` (its host end exists) on br-int tagged by network, and publish its
        endpoint record (claiming its MAC against ``claimed``, the revision of its address
        claim, 0 if unknown), appending the undo of each to ``undo``.  The CNI ADD and
        Docker's Join both end here, so a port is the same whoever asked for it.

        The endpoint record goes to the store while this thread adds the port: the
        store's round trips overlap vswitchd's reconfiguration, which the port waits for
        (its own agent ignores a record of this host: its ports come from OVSDB).  Not
        beside the veth: a refused CNI_IFNAME must publish nothing, and the record's HTTP
        and JSON would hold the GIL the veth's requests need."""
        steps = steps or _Steps()
        attachment_id = port.attachment
        record = _Beside(
            partial(
                self.cluster.put_endpoint,
                port.network,
                self.host,
                attachment_id,
                mac=port.mac,
                ip=port.ip,
                container_id=port.container_id,
                ifname=port.ifname,
                known=network,
                claimed=claimed,
                pod=port.pod,
            )
        )
        try:
            # Undone from before it begins: a port add that timed out may have landed.
            undo.append(("delete port", lambda: self.ovsdb.delete_port(port.port)))
            self.ovsdb.add_endpoint_port(self.bridge, port)
            steps.done("port")
        finally:
            published = record.join()
            if published is None:
                undo.append(
                    (
                        "unpublish",
                        lambda: self.cluster.delete_endpoint(
                            port.network, self.host, attachment_id
                        ),
                    )
                )
        if isinstance(published, AddressInUseError):  # the claim was taken from us
            raise AttachError(
                str(published), code=ERR_INVALID_ENV, reason="address_in_use"
            ) from None
        if published is not None:
            raise published

    def roll_back(
        self,
        undo: list[tuple[str, Callable[[], None]]],
        network: str,
        attachment_id: str,
        mac: str | None,
    ) -> None:
        """Undo a failed request's steps in reverse; a store that is away defers the
        release of its records (keep_store_clean), anything else is logged."""
        for what, step in reversed(undo):
            try:
                step()
            except KvError as exc:
                LOG.warning("rolling back %s for %s: %s; later", what, attachment_id, exc)
                self._defer(network, attachment_id, mac)
            except Exception:
                LOG.exception("rolling back %s for %s failed", what, attachment_id)

    def detach(self, network: str, container_id: str, ifname: str) -> None:
        """Remove every trace of an attachment; parts already gone are fine.  Unlike ADD,
        no name is refused: an attachment made before a rule existed must still go."""
        attachment_id = f"{container_id}/{ifname}"
        self.finish_store_cleanup(f"DEL of {attachment_id}")
        with self.locks.hold(attachment_id):
            steps = _Steps()
            try:
                self._remove(network, container_id, ifname, steps)
            except KvError as exc:
                self._defer(network, attachment_id, None)  # the record has the MAC
                raise store_unavailable(f"DEL of {attachment_id}", exc) from None
            self._forget_unfinished(network, attachment_id)
            self.publish()
            steps.done("flows")

    def _remove(self, network: str, container_id: str, ifname: str, steps=None) -> None:
        steps = steps or _Steps()
        attachment_id = f"{container_id}/{ifname}"
        port = host_port_name(container_id, ifname)
        # The port's MAC, for its claim: an ADD killed after the port but before the
        # endpoint record left a claim no record releases.
        ids = (self.ovsdb.interface(self.bridge, port) or {}).get("external_ids") or {}
        port_mac = ids.get(MAC_KEY)
        requestlog.note(ip=ids.get(IP_KEY), pod=ids.get(POD_KEY))  # for the DEL's log line
        self.unplug(port)
        steps.done("port and veth")
        self._release_store(network, attachment_id, port_mac)
        steps.done("store")

    def unplug(self, port: str) -> None:
        """Delete ``port`` from br-int and its veth pair; either already gone is fine.

        The kernel takes ~20 ms to destroy a veth (RCU grace periods) and vswitchd
        ~15 ms to drop the port: both at once.  vswitchd copes with a device that
        vanishes first, as when a runtime deletes the netns before DEL."""
        deleting = _Beside(lambda: veth.delete(port))
        try:
            self.ovsdb.delete_port(port)
        finally:
            failed = deleting.join()
        if failed is not None:
            raise failed

    def _release_store(self, network: str, attachment: str, mac: str | None = None) -> None:
        """Everything the store holds for ``attachment`` of this host: its endpoint record
        (with the MAC claim it keeps), its address, and the claims of ``mac`` and of the
        MAC derived from the address, which an interrupted ADD may have left alone.  Each
        part already gone is fine."""
        self.cluster.release_attachment(
            network, self.host, attachment, [mac] if mac else [], derive_mac=mac_for
        )

    def check(
        self,
        network: str,
        container_id: str,
        ifname: str,
        netns_path: str,
        routes: Sequence[dict] = (),
    ) -> None:
        """Raise AttachError unless the attachment is whole: the store record, the OVS port
        with an OpenFlow number and its flows on br-int, both veth ends, the pod's MAC,
        address, and ``routes`` (the ADD result's, ``{"dst", "gw"}``) via ``ifname``."""
        admit("CHECK", container_id, ifname, netns_path)
        attachment_id = f"{container_id}/{ifname}"
        with self.locks.hold(attachment_id):
            try:
                self._check(network, container_id, ifname, netns_path, routes)
            except KvError as exc:
                raise store_unavailable(f"CHECK of {attachment_id}", exc) from None

    def _check(
        self, network: str, container_id: str, ifname: str, netns_path: str, routes: Sequence[dict]
    ) -> None:
        attachment_id = f"{container_id}/{ifname}"
        port = host_port_name(container_id, ifname)
        ep = next(
            (
                e
                for e in self.cluster.list_endpoints(network)
                if e.host == self.host and e.attachment == attachment_id
            ),
            None,
        )
        if ep is None:
            raise AttachError(f"attachment {attachment_id} is not in the cluster state", code=3)
        iface = self.ovsdb.interface(self.bridge, port)
        if not iface or not iface["ofport"] or iface["ofport"] < 0:
            raise AttachError(f"OVS port {port} of {attachment_id} is missing or down", code=3)
        missing = self.missing_port_flows(iface["ofport"])
        if missing:
            raise AttachError(
                f"br-int lacks flows of {attachment_id} (port {port}) in {', '.join(missing)}; "
                "restart the agent to replay them",
                code=3,
            )
        with IPRoute() as ipr:
            if not ipr.link_lookup(ifname=port):
                raise AttachError(f"host veth {port} of {attachment_id} is missing", code=3)
        require_netns(netns_path, not_a_netns_code=3)
        with netns.in_namespace(netns_path), IPRoute() as pod:
            found = pod.link_lookup(ifname=ifname)
            if not found:
                raise AttachError(f"interface {ifname} is missing in {netns_path}", code=3)
            link = pod.get_links(found[0])[0]
            if link.get("IFLA_ADDRESS") != ep.mac:
                raise AttachError(
                    f"{ifname} in {netns_path} has MAC {link.get('IFLA_ADDRESS')}, not {ep.mac}",
                    code=3,
                )
            addrs = {a.get("IFA_ADDRESS") for a in pod.get_addr(index=found[0])}
            if ep.ip not in addrs:
                raise AttachError(f"{ifname} in {netns_path} lacks address {ep.ip}", code=3)
            present = {
                (f"{r.get('RTA_DST') or '0.0.0.0'}/{r.get('dst_len')}", r.get("RTA_GATEWAY"))
                for r in pod.get_routes(family=socket.AF_INET, oif=found[0])
            }
            for route in routes:
                if (route["dst"], route.get("gw")) not in present:
                    via = f" via {route['gw']}" if route.get("gw") else ""
                    raise AttachError(
                        f"{ifname} in {netns_path} has no route to {route['dst']}{via}", code=3
                    )

    def gc(self, network: str, keep: list[str]) -> list[str]:
        """Detach every attachment of ``network`` on this host that is not in ``keep``
        (CNI GC: the runtime's list); Docker's endpoints are not the runtime's to judge
        (controller/cnm/ keeps them)."""
        removed = []
        for att in self.ovsdb.list_endpoint_ports(self.bridge):
            ep = att.endpoint
            if ep.network == network and ep.attachment not in keep and not is_docker(ep.attachment):
                self.detach(network, ep.container_id, ep.ifname)
                removed.append(ep.attachment)
        for ep in self.cluster.list_endpoints(network):
            if (
                ep.host == self.host
                and ep.attachment not in keep
                and ep.attachment not in removed
                and not is_docker(ep.attachment)
            ):
                self.detach(network, ep.container_id, ep.ifname)
                removed.append(ep.attachment)
        for attachment in removed:
            LOG.info("GC detached %s of network %s", attachment, network)
        return removed

    def reconcile(self, keep: Iterable[tuple[str, str]] = ()) -> list[str]:
        """Make OVS ports, host veths and the store agree after the agent was away.

        A pod whose namespace vanished took its veth with it and leaves an OVS port,
        an endpoint record and an address; an agent killed mid-ADD can leave a veth with
        no port, or an address with no endpoint.  What is whole (veth, port and record)
        stays; every orphan goes, except the (network, attachment) addresses in ``keep``
        (the host gateway's, which is no pod's).  Returns what was removed, for the log.
        """
        removed = []
        with IPRoute() as ipr:
            veths = {
                link.get("IFLA_IFNAME")
                for link in ipr.get_links()
                if link.get("IFLA_IFNAME", "").startswith(HOST_PORT_PREFIX)
            }
        live = set(keep)
        for attached in self.ovsdb.list_endpoint_ports(self.bridge):
            ep = attached.endpoint
            if ep.port in veths:
                live.add((ep.network, ep.attachment))
            else:  # no publish: the agent's first refresh follows
                self._remove(ep.network, ep.container_id, ep.ifname)
                removed.append(f"port {ep.port} of {ep.attachment} (its veth is gone)")
        ports = {a.endpoint.port for a in self.ovsdb.list_endpoint_ports(self.bridge)}
        for host_end in sorted(veths - ports):
            veth.delete(host_end)
            removed.append(f"veth {host_end} (no OVS port)")
        for ep in self.cluster.list_endpoints():
            if ep.host == self.host and (ep.network, ep.attachment) not in live:
                self._release_store(ep.network, ep.attachment, ep.mac)
                removed.append(f"endpoint {ep.attachment} in {ep.network} (no port)")
            elif ep.host == self.host and self.cluster.mac_holder(ep.network, ep.mac) is None:
                self._claim_mac(ep)
        for network, mac, attachment in self.cluster.mac_claims_of(self.host):
            if (network, attachment) not in live:  # an ADD killed between claim and record
                self.cluster.release_mac(network, mac, attachment, self.host)
                removed.append(f"MAC {mac} of {attachment} in {network} (no endpoint)")
        for net in self.cluster.list_networks():
            mine = [
                ipaddress.ip_network(b.cidr) for b in self.cluster.blocks_of(net.name, self.host)
            ]
            for ip, attachment in self.cluster.allocations(net.name).items():
                in_mine = any(ipaddress.ip_address(ip) in block for block in mine)
                if in_mine and (net.name, attachment) not in live:
                    self.cluster.release_ip(net.name, attachment)
                    removed.append(f"address {ip} of {attachment} in {net.name} (no endpoint)")
        return removed

    def _claim_mac(self, ep) -> None:
        """Claim the MAC of a live endpoint published by a version that made no claims
        (republishing it claims it); a conflict between two such is logged, not fatal."""
        try:
            self.cluster.put_endpoint(
                ep.network,
                self.host,
                ep.attachment,
                mac=ep.mac,
                ip=ep.ip,
                container_id=ep.container_id,
                ifname=ep.ifname,
                pod=ep.pod,
            )
        except AddressInUseError as exc:
            LOG.error(
                "endpoint %s in %s keeps an unclaimed MAC: %s", ep.attachment, ep.network, exc
            )
