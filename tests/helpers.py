"""Observing a lab host from tests with the plain OVS tools (never used to configure)."""

from __future__ import annotations

import json
import subprocess

from lab import lab, naming, netns


def host_paths(lab_name: str, host: str = "h1"):
    return lab.LabPaths(naming.DEFAULT_STATE_ROOT, lab_name).host(host)


def ovs(lab_name: str, host: str, *argv: str) -> str:
    """Run an OVS tool in a lab host's namespace against its own daemons; return stdout."""
    ns = naming.host_namespace(lab_name, host)
    result = netns.run_in_namespace(ns, argv, env=host_paths(lab_name, host).env())
    return result.stdout


def rows(lab_name: str, host: str, table: str) -> list[dict]:
    """All rows of an OVSDB table, as dicts of column -> raw OVSDB JSON value."""
    out = json.loads(ovs(lab_name, host, "ovs-vsctl", "--format=json", "list", table))
    return [dict(zip(out["headings"], r, strict=True)) for r in out["data"]]


def ovs_map(value) -> dict:
    """Decode an OVSDB JSON map (["map", [[k, v], ...]])."""
    assert value[0] == "map"
    return {k: v for k, v in value[1]}


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, **kwargs)
