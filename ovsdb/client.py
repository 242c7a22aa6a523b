"""One host's OVSDB client: one long-lived IDL connection, idempotent, error-checked calls.

Built on ovsdbapp's Open_vSwitch API.  ovsdbapp's connection thread owns the
IDL; every call here is a transaction queued to it, committed with
``check_error=True`` (ovsdbapp's default silently ignores failed commands), and
waits until ovs-vswitchd has applied it (``next_cfg``/``cur_cfg``, as
``ovs-vsctl`` does), so when a call returns the port or bridge really exists.
The wait happens in the calling thread, not in the connection thread
(_ConfigTransaction), so concurrent calls do not queue behind each other's wait.

When ovsdb-server restarts, python-ovs reconnects with backoff and re-reads the
whole database; a call made meanwhile is retried by ovsdbapp (TRY_AGAIN) until
the connection is back or the timeout expires.  Because every write compares
first, a retried call creates no duplicate rows.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from ovsdbapp.backend.ovs_idl import command, connection, idlutils, transaction
from ovsdbapp.schema.open_vswitch import impl_idl

from ovsdb import commands
from ovsdb.datapath import DatapathChoice
from ovsdb.endpoint import AttachedEndpoint, EndpointPort
from ovsdb.tunnel import TunnelPort

LOG = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 15.0
# The Interface columns we read or write.  vswitchd rewrites the others (statistics,
# status, link state, ifindex, ...) of many interfaces after each reconfiguration;
# replicating them cost the agent's IDL thread a parse of every interface per pod ADD.
INTERFACE_COLUMNS = ["name", "type", "options", "external_ids", "ofport", "mac"]


class OvsdbUnavailable(RuntimeError):
    """ovsdb-server could not be reached."""


class PortError(RuntimeError):
    """ovs-vswitchd refused a port."""


@dataclass(frozen=True)
class IntegrationBridge:
    """How the integration bridge must look: the agent's only switch."""

    name: str
    datapath: DatapathChoice
    controller_port: int
    table_names: Mapping[int, str]
    controller_host: str = "127.0.0.1"

    @property
    def controller_target(self) -> str:
        return f"tcp:{self.controller_host}:{self.controller_port}"


@dataclass(frozen=True)
class BridgeInfo:
    """What is on a bridge, for status output and tests."""

    name: str
    datapath_type: str
    fail_mode: str | None
    protocols: tuple[str, ...]
    controllers: tuple[str, ...]
    ports: tuple[str, ...]
    table_names: Mapping[int, str]
    external_ids: Mapping[str, str]


class _InstanceApi(impl_idl.OvsdbIdl):
    """ovsdbapp's Open_vSwitch API with its connection kept per instance.

    ovsdbapp's Backend stores the connection on the class, so a second client in
    one process (the lab talks to every host's ovsdb-server; tests open and close
    clients) would silently reuse the first, closed connection.
    """

    @property
    def ovsdb_connection(self):
        return self._instance_connection

    @ovsdb_connection.setter
    def ovsdb_connection(self, connection):
        self._instance_connection = connection


class _Idl(connection.OvsdbIdl):
    """ovsdbapp's IDL, waking the threads that wait for ovs-vswitchd whenever the
    Open_vSwitch row (where vswitchd reports ``cur_cfg``) changes.  ``notify`` runs in
    the connection thread after the update is applied to the replica.

    It also counts reconnections: python-ovs restarts the IDL's state machine
    (``restart_fsm``) whenever its session has a new connection (a new session seqno),
    the first one included, and re-reads the database then."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.root_changed = threading.Condition()
        self.reconnects = 0
        self._session_seqno: int | None = None  # of the connection the IDL last started on

    def restart_fsm(self):
        seqno = self._session.get_seqno()
        if seqno != self._session_seqno:  # not a monitor_canceled restart on one connection
            if self._session_seqno is not None:
                self.reconnects += 1
                LOG.warning(
                    "reconnected to ovsdb-server at %s; re-reading it", self._session.get_name()
                )
            self._session_seqno = seqno
        super().restart_fsm()

    def notify(self, event, row, updates=None):
        if row._table.name == "Open_vSwitch":
            with self.root_changed:
                self.root_changed.notify_all()


class _ConfigTransaction(transaction.Transaction):
    """A transaction for ovs-vswitchd to apply: it bumps ``next_cfg`` as ``ovs-vsctl`` does,
    and notes the value and the interfaces it created, but does not wait.

    ovsdbapp's vsctl-style transaction waits for ``cur_cfg`` inside the connection
    thread, so every other call (reads included) queues behind vswitchd's
    reconfiguration; ten parallel CNI ADDs then took 10x as long as one.  Here the
    caller waits (OvsdbClient._wait_applied), the connection stays free, and vswitchd
    applies several commits in one reconfiguration.
    """

    next_cfg: int | None = None
    new_interfaces: tuple = ()

    def pre_commit(self, txn):
        self.api._ovs.increment("next_cfg")
        txn.expected_ifaces = set()

    def post_commit(self, txn):
        super().post_commit(txn)
        self.next_cfg = txn.get_increment_new_value()
        inserted = (txn.get_insert_uuid(temp) for temp in txn.expected_ifaces)
        self.new_interfaces = tuple(uuid for uuid in inserted if uuid)


class _RefusedInterfaces(command.ReadOnlyCommand):
    """The names of the interfaces (by row UUID) that vswitchd could not open: ofport
    -1.  The IDL gives the optional column as a list, so that is [-1] (or [] while
    vswitchd has not set it), which ovsdbapp's own check (== -1) misses."""

    def __init__(self, api, uuids):
        super().__init__(api)
        self.uuids = uuids

    def run_idl(self, txn):
        rows = self.api.idl.tables["Interface"].rows
        found = (rows.get(uuid) for uuid in self.uuids)
        self.result = [row.name for row in found if row is not None and row.ofport in ([], [-1])]


@dataclass
class _Pending:
    """One thread's commands waiting for a group commit, and how they fared."""

    cmds: list
    done: bool = False
    error: BaseException | None = None
    refused: list[str] = field(default_factory=list)

    def ports(self) -> set[str]:
        return {cmd.port for cmd in self.cmds if isinstance(cmd, commands.EnsurePort)}


class OvsdbClient:
    """An OVSDB connection to one host's ovsdb-server (one per agent, never shared)."""

    def __init__(self, db_sock: str, timeout: float = DEFAULT_TIMEOUT):
        remote = f"unix:{db_sock}"
        try:
            helper = idlutils.get_schema_helper(remote, "Open_vSwitch")
        except Exception as exc:
            raise OvsdbUnavailable(
                f"cannot reach ovsdb-server at {db_sock} ({exc}); start it or fix the socket path"
            ) from exc
        for table in helper.schema_json["tables"]:
            if table != "Interface":
                helper.register_table(table)
        helper.register_columns("Interface", INTERFACE_COLUMNS)
        self._bridge_cache: dict = {}  # ReadBridge's last answer, used in its thread only
        self._group = threading.Condition()  # group commit (_commit)
        self._queue: list[_Pending] = []
        self._committing = False
        self._idl = _Idl(remote, helper)
        self.timeout = timeout
        self._conn = connection.Connection(self._idl, timeout)
        self.api = _InstanceApi(self._conn)
        try:
            # The vsctl-style transaction needs the Open_vSwitch row to exist.
            self._commit_plain([commands.EnsureRootRow(self.api)])
        except Exception as exc:
            self.close()  # the IDL thread is running: stop it rather than leak it
            raise OvsdbUnavailable(f"ovsdb-server at {db_sock} did not answer ({exc})") from exc

    def close(self) -> None:
        self._conn.stop(timeout=5)

    @property
    def reconnects(self) -> int:
        """Connections to ovsdb-server after the first (python-ovs reconnects by itself)."""
        return self._idl.reconnects

    def __enter__(self) -> OvsdbClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- transactions -------------------------------------------------------

    def _commit(self, cmds: list) -> None:
        """Commit and wait until ovs-vswitchd has applied the change; raise PortError
        naming any new interface of ours it could not open.

        Group commit: while one thread's transaction is in flight (most of that is
        waiting for vswitchd), other threads' commands queue, and the next thread
        commits all of them in one transaction.  vswitchd then reconfigures once for
        them: each reconfiguration walks every port (46 ms of its CPU at 90 ports, 0.8
        per port in a batch), so ten parallel CNI ADDs cost it one, not ten.
        """
        mine = _Pending(cmds)
        with self._group:
            self._queue.append(mine)
            self._group.wait_for(lambda: mine.done or not self._committing)
            lead = not mine.done
            if lead:
                self._committing = True
                batch, self._queue = self._queue, []
        if lead:
            try:
                self._commit_batch(batch)
            finally:
                with self._group:
                    for pending in batch:
                        pending.done = True
                    self._committing = False
                    self._group.notify_all()
        if mine.error is not None:
            raise mine.error
        if mine.refused:
            raise PortError(f"ovs-vswitchd could not open device {', '.join(mine.refused)}")

    def _commit_batch(self, batch: list[_Pending]) -> None:
        if len(batch) > 1:
            try:
                txn = self._write([cmd for pending in batch for cmd in pending.cmds])
            except Exception:  # whose command failed?  Each on its own finds out.
                LOG.debug("a batch of %d commits failed; committing them one by one", len(batch))
            else:
                try:
                    refused = self._applied(txn)
                except Exception as exc:  # written for all of them: the failure is theirs
                    for pending in batch:
                        pending.error = exc
                    return
                for pending in batch:
                    pending.refused = [n for n in refused if n in pending.ports()]
                return
        for pending in batch:
            try:
                pending.refused = self._applied(self._write(pending.cmds))
            except Exception as exc:
                pending.error = exc

    def _write(self, cmds: list) -> _ConfigTransaction:
        """Commit ``cmds`` to the database in one transaction (vswitchd not waited for)."""
        txn = _ConfigTransaction(self.api, self._conn, check_error=True, log_errors=False)
        for cmd in cmds:
            txn.add(cmd)
        txn.commit()
        return txn

    def _applied(self, txn: _ConfigTransaction) -> list[str]:
        """Wait until vswitchd applied ``txn``; returns the new interfaces it refused."""
        if txn.next_cfg is None:  # nothing was written
            return []
        self._wait_applied(txn.next_cfg)
        if not txn.new_interfaces:
            return []
        return _RefusedInterfaces(self.api, txn.new_interfaces).execute(check_error=True)

    def _wait_applied(self, next_cfg: int) -> None:
        """Until ovs-vswitchd reports ``cur_cfg`` >= ``next_cfg`` (it applied our commit)."""
        deadline = time.monotonic() + self.timeout
        with self._idl.root_changed:
            while self._cur_cfg() < next_cfg:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise OvsdbUnavailable(
                        f"ovs-vswitchd did not apply configuration {next_cfg} within "
                        f"{self.timeout:.0f}s; check that it is running and connected to "
                        "ovsdb-server"
                    )
                self._idl.root_changed.wait(left)

    def _cur_cfg(self) -> int:
        rows = list(self._idl.tables["Open_vSwitch"].rows.values())
        return rows[0].cur_cfg if rows else 0

    def _commit_plain(self, cmds: list) -> None:
        """Commit without waiting for ovs-vswitchd (for reads, and before it runs)."""
        txn = transaction.Transaction(self.api, self._conn, check_error=True, log_errors=False)
        for cmd in cmds:
            txn.add(cmd)
        txn.commit()

    # -- bridges ------------------------------------------------------------

    def ensure_bridge(
        self,
        name: str,
        datapath_type: str,
        *,
        fail_mode: str | None = None,
        protocols: list[str] | None = None,
        controllers: list[str] | None = None,
        other_config: Mapping[str, str] | None = None,
        external_ids: Mapping[str, str] | None = None,
        flow_tables: Mapping[int, str] | None = None,
    ) -> None:
        self._commit(
            [
                commands.EnsureBridge(
                    self.api,
                    name,
                    datapath_type,
                    fail_mode,
                    protocols,
                    controllers,
                    other_config or {},
                    external_ids or {},
                    flow_tables,
                )
            ]
        )

    def ensure_integration_bridge(self, spec: IntegrationBridge) -> None:
        """Create or converge the integration bridge.

        ``fail_mode=secure``: with the controller away, vswitchd keeps the flows it
        has and never falls back to a learning switch that would join networks.
        In-band control is off: the controller is on loopback.
        """
        LOG.info(
            "integration bridge %s: datapath_type=%s (%s)",
            spec.name,
            spec.datapath.datapath_type,
            spec.datapath.reason,
        )
        self.ensure_bridge(
            spec.name,
            spec.datapath.datapath_type,
            fail_mode="secure",
            protocols=["OpenFlow13"],
            controllers=[spec.controller_target],
            other_config={"disable-in-band": "true"},
            external_ids={"ovs-overlay-role": "integration"},
            flow_tables=spec.table_names,
        )

    def delete_bridge(self, name: str) -> None:
        self._commit([self.api.del_br(name, if_exists=True)])

    def bridge_info(self, name: str) -> BridgeInfo | None:
        """The bridge's settings and ports, None when there is no such bridge."""
        data = self._read_bridge(name)
        if data is None:
            return None
        return BridgeInfo(
            name=data["name"],
            datapath_type=data["datapath_type"],
            fail_mode=data["fail_mode"],
            protocols=data["protocols"],
            controllers=data["controllers"],
            ports=tuple(sorted(data["interfaces"])),
            table_names=dict(data["table_names"]),  # copies: ``data`` may be the cached read
            external_ids=dict(data["external_ids"]),
        )

    def set_bridge_external_ids(self, name: str, values: Mapping[str, str]) -> None:
        self._commit_plain([commands.SetBridgeExternalIds(self.api, name, values)])

    def set_flow_restore_wait(self, enabled: bool) -> bool:
        """Set or clear ``other_config:flow-restore-wait``; returns whether it was set.

        While it is true, a starting ovs-vswitchd keeps its datapath flows and
        forwards nothing new until the controller has restored the OpenFlow
        tables and clears it (what ovs-ctl's restart and Antrea do).
        """
        cmd = commands.SetFlowRestoreWait(self.api, enabled)
        self._commit_plain([cmd])
        return cmd.result

    def flow_restore_wait(self) -> bool:
        cmd = commands.ReadFlowRestoreWait(self.api)
        self._commit_plain([cmd])
        return cmd.result

    def _read_bridge(self, name: str) -> dict | None:
        cmd = commands.ReadBridge(self.api, name, self._bridge_cache)
        self._commit_plain([cmd])
        return cmd.result

    # -- ports --------------------------------------------------------------

    def ensure_port(self, bridge: str, port: str, **interface: object) -> None:
        """Put a device on a bridge (``interface`` are Interface columns: type, options, ...).

        If ovs-vswitchd cannot open a new port's device, the port is removed again,
        so a failed call leaves the database as it was.
        """
        try:
            self._commit([commands.EnsurePort(self.api, bridge, port, interface)])
        except PortError:
            self.delete_port(port)
            raise PortError(
                f"ovs-vswitchd could not open device {port} for bridge {bridge}; "
                "create the device (or fix the port type and options) first"
            ) from None

    def delete_port(self, port: str) -> None:
        """Remove a port wherever it is; a missing port is fine."""
        self._commit([commands.DeletePort(self.api, port)])

    def ensure_tunnel_port(self, bridge: str, tunnel: TunnelPort) -> None:
        self.ensure_port(bridge, tunnel.name, type=tunnel.tunnel_type, options=tunnel.options())

    def add_endpoint_port(self, bridge: str, endpoint: EndpointPort) -> None:
        """Attach an endpoint's host-side device, tagged with its network and owner."""
        self.ensure_port(bridge, endpoint.port, external_ids=endpoint.external_ids())

    def list_endpoint_ports(self, bridge: str) -> list[AttachedEndpoint]:
        """Every port on ``bridge`` that we tagged as an endpoint, with its ofport."""
        return endpoint_ports(self.interfaces(bridge))

    def interfaces(self, bridge: str) -> dict[str, dict]:
        """Every interface on ``bridge`` (type, options, external_ids, ofport) by name, read
        in one transaction: one consistent view for a caller that needs several."""
        data = self._read_bridge(bridge)
        return {} if data is None else data["interfaces"]

    def interface(self, bridge: str, name: str) -> dict | None:
        """One interface's type, options, external_ids and ofport, None if absent."""
        return self.interfaces(bridge).get(name)


def endpoint_ports(interfaces: Mapping[str, dict]) -> list[AttachedEndpoint]:
    """The interfaces (as OvsdbClient.interfaces gives them) that we tagged as endpoints."""
    found = []
    for name, iface in sorted(interfaces.items()):
        endpoint = EndpointPort.from_external_ids(name, iface["external_ids"])
        if endpoint is not None:
            found.append(AttachedEndpoint(endpoint, iface["ofport"]))
    return found
