"""Idempotent OVSDB commands that ovsdbapp does not offer in the form we need.

ovsdbapp's ``set_controller`` inserts new Controller rows on every call (each one
makes vswitchd drop and redo its OpenFlow connection), and ``add_port`` with
``may_exist`` leaves an existing port's interface untouched even when its
options differ.  These commands compare first and write only what differs, so
calling them again, after a restart or a reconnect, changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping

from ovsdbapp.backend.ovs_idl import command, idlutils

# ovs-vswitchd retries a lost controller with a backoff that doubles up to 8 s by default;
# an agent killed twice in quick succession was then reconnected only after 5 and 9 s
# (seen in the churn test).  1 s (the minimum) keeps an agent restart near a second.
CONTROLLER_MAX_BACKOFF_MS = 1000


def _current(row, column: str, default):
    """A column's value; a row inserted in this transaction has no value until set."""
    try:
        return getattr(row, column)
    except AttributeError:
        return default


def _set_if_different(row, column: str, value) -> None:
    if _current(row, column, None) != value:
        setattr(row, column, value)


def _merge_map(row, column: str, values: Mapping[str, str]) -> None:
    current = dict(_current(row, column, {}))
    if any(current.get(k) != v for k, v in values.items()):
        current.update(values)
        setattr(row, column, current)


class EnsureRootRow(command.BaseCommand):
    """Create the Open_vSwitch row of an empty database (what ``ovs-vsctl init`` does)."""

    def run_idl(self, txn):
        if not self.api.tables["Open_vSwitch"].rows:
            txn.insert(self.api.tables["Open_vSwitch"])


class EnsureBridge(command.BaseCommand):
    """Create a bridge with its internal port if missing, then converge its settings."""

    def __init__(
        self,
        api,
        name: str,
        datapath_type: str,
        fail_mode: str | None,
        protocols: list[str] | None,
        controllers: list[str] | None,
        other_config: Mapping[str, str],
        external_ids: Mapping[str, str],
        flow_tables: Mapping[int, str] | None,
    ):
        super().__init__(api)
        self.name = name
        self.datapath_type = datapath_type
        self.fail_mode = fail_mode
        self.protocols = protocols
        self.controllers = controllers
        self.other_config = other_config
        self.external_ids = external_ids
        self.flow_tables = flow_tables

    def run_idl(self, txn):
        tables = self.api.tables
        br = idlutils.row_by_value(self.api.idl, "Bridge", "name", self.name, None)
        if br is None:
            br = txn.insert(tables["Bridge"])
            br.name = self.name
            iface = txn.insert(tables["Interface"])
            iface.name = self.name
            iface.type = "internal"
            port = txn.insert(tables["Port"])
            port.name = self.name
            port.interfaces = [iface]
            br.ports = [port]
            self.api._ovs.addvalue("bridges", br)
        _set_if_different(br, "datapath_type", self.datapath_type)
        _set_if_different(br, "fail_mode", [self.fail_mode] if self.fail_mode else [])
        if self.protocols is not None:
            _set_if_different(br, "protocols", sorted(self.protocols))
        _merge_map(br, "other_config", self.other_config)
        _merge_map(br, "external_ids", self.external_ids)
        if self.controllers is not None:
            self._converge_controllers(txn, br)
        if self.flow_tables is not None:
            self._converge_flow_tables(txn, br)
        self.result = br.uuid

    def _converge_controllers(self, txn, br) -> None:
        existing = _current(br, "controller", [])
        if sorted(c.target for c in existing) == sorted(self.controllers):
            for row in existing:
                _set_if_different(row, "max_backoff", [CONTROLLER_MAX_BACKOFF_MS])
            return
        rows = []
        for target in self.controllers:
            row = txn.insert(self.api.tables["Controller"])
            row.target = target
            row.max_backoff = [CONTROLLER_MAX_BACKOFF_MS]
            rows.append(row)
        br.controller = rows

    def _converge_flow_tables(self, txn, br) -> None:
        existing = _current(br, "flow_tables", {})
        current = {tid: row.name for tid, row in existing.items()}
        wanted = {tid: [name] for tid, name in self.flow_tables.items()}
        if current == wanted:
            return
        rows = {}
        for tid, name in self.flow_tables.items():
            row = existing.get(tid)
            if row is None:
                row = txn.insert(self.api.tables["Flow_Table"])
            row.name = [name]
            rows[tid] = row
        br.flow_tables = rows


class EnsurePort(command.BaseCommand):
    """Put a one-interface port on a bridge, or converge an existing one's interface columns.

    A port of that name on another bridge is an error rather than a silent move:
    two owners disagree about it and a person should look.
    """

    def __init__(self, api, bridge: str, port: str, interface: Mapping[str, object]):
        super().__init__(api)
        self.bridge = bridge
        self.port = port
        self.interface = interface

    def run_idl(self, txn):
        tables = self.api.tables
        br = idlutils.row_by_value(self.api.idl, "Bridge", "name", self.bridge)
        port = idlutils.row_by_value(self.api.idl, "Port", "name", self.port, None)
        if port is not None:
            if port.uuid not in {p.uuid for p in br.ports}:
                raise RuntimeError(
                    f"port {self.port} already exists on another bridge than {self.bridge}; "
                    "remove it there first"
                )
            iface = port.interfaces[0]
        else:
            port = txn.insert(tables["Port"])
            port.name = self.port
            iface = txn.insert(tables["Interface"])
            iface.name = self.port
            port.interfaces = [iface]
            br.addvalue("ports", port)
            txn.expected_ifaces.add(iface.uuid)
        for column, value in self.interface.items():
            if isinstance(value, Mapping):
                _set_if_different(iface, column, dict(value))
            else:
                _set_if_different(iface, column, value)
        self.result = port.uuid


class DeletePort(command.BaseCommand):
    """Remove a port from whichever bridge has it; a missing port is not an error."""

    def __init__(self, api, port: str):
        super().__init__(api)
        self.port = port

    def run_idl(self, txn):
        port = idlutils.row_by_value(self.api.idl, "Port", "name", self.port, None)
        if port is None:
            return
        for br in self.api.tables["Bridge"].rows.values():
            if port.uuid in {p.uuid for p in br.ports}:
                br.delvalue("ports", port)
        port.delete()


class ReadBridge(command.ReadOnlyCommand):
    """A bridge's settings and ports as plain values (rows must not leave the IDL thread).

    With a ``cache`` (a dict the caller keeps), an answer is reused while the IDL has
    seen no change (its ``change_seqno``): the agent reads br-int on every refresh, and
    converting every interface row was its largest cost per pod ADD after the pipeline.
    A cached answer is shared: callers must not modify it.
    """

    def __init__(self, api, name: str, cache: dict | None = None):
        super().__init__(api)
        self.name = name
        self.cache = cache

    def run_idl(self, txn):
        key = (self.name, self.api.idl.change_seqno)
        if self.cache is not None and self.cache.get("key") == key:
            self.result = self.cache["result"]
            return
        self._read()
        if self.cache is not None:
            self.cache.update(key=key, result=self.result)

    def _read(self):
        br = idlutils.row_by_value(self.api.idl, "Bridge", "name", self.name, None)
        if br is None:
            self.result = None
            return
        self.result = {
            "name": br.name,
            "external_ids": dict(br.external_ids),
            "datapath_type": br.datapath_type,
            "fail_mode": br.fail_mode[0] if br.fail_mode else None,
            "protocols": tuple(sorted(br.protocols)),
            "controllers": tuple(sorted(c.target for c in br.controller)),
            "table_names": {tid: t.name[0] for tid, t in br.flow_tables.items() if t.name},
            "interfaces": {
                iface.name: {
                    "type": iface.type,
                    "options": dict(iface.options),
                    "external_ids": dict(iface.external_ids),
                    "ofport": iface.ofport[0] if iface.ofport else None,
                }
                for port in br.ports
                for iface in port.interfaces
            },
        }


class SetBridgeExternalIds(command.BaseCommand):
    def __init__(self, api, bridge: str, values: Mapping[str, str]):
        super().__init__(api)
        self.bridge = bridge
        self.values = values

    def run_idl(self, txn):
        br = idlutils.row_by_value(self.api.idl, "Bridge", "name", self.bridge)
        _merge_map(br, "external_ids", self.values)


class SetFlowRestoreWait(command.BaseCommand):
    """Set or clear Open_vSwitch other_config:flow-restore-wait; the result is the old value."""

    def __init__(self, api, enabled: bool):
        super().__init__(api)
        self.enabled = enabled

    def run_idl(self, txn):
        root = self.api._ovs
        self.result = root.other_config.get("flow-restore-wait") == "true"
        if self.enabled and not self.result:
            root.setkey("other_config", "flow-restore-wait", "true")
        elif not self.enabled and "flow-restore-wait" in root.other_config:
            root.delkey("other_config", "flow-restore-wait")


class ReadFlowRestoreWait(command.ReadOnlyCommand):
    def run_idl(self, txn):
        rows = list(self.api.tables["Open_vSwitch"].rows.values())
        self.result = bool(rows) and rows[0].other_config.get("flow-restore-wait") == "true"
