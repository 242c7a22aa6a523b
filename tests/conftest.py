"""Fixtures shared by the integration and lab tests.

Every lab a test builds has a unique name (``t`` + random hex) and is torn
down in a finalizer, so a failing test leaves nothing behind and never touches
a lab it did not make.
"""

from __future__ import annotations

import os
import secrets

import pytest

from lab import lab


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("these tests create network namespaces and OVS daemons; run them as root")


@pytest.fixture
def lab_name():
    """A fresh lab name; whatever lab of that name exists at the end is removed."""
    _require_root()
    name = "t" + secrets.token_hex(3)
    yield name
    lab.down(name)


@pytest.fixture(scope="module")
def one_host_lab():
    """A one-host lab with bare OVS (no agent) shared by a module's tests."""
    _require_root()
    name = "t" + secrets.token_hex(3)
    try:
        yield lab.up(name, 1, agents=False)
    finally:
        lab.down(name)


# -- etcd: real servers (tests/etcd_server.py), started once and shared -----------------


@pytest.fixture(scope="session")
def etcd_server():
    """One etcd member for the whole session; tests that share it clear the keys they use
    (or work under a fresh prefix) and compare revisions relative to their start."""
    from tests.etcd_server import EtcdCluster

    cluster = EtcdCluster(1)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def etcd_cluster3():
    """Three etcd members for failover tests; a test that kills one restarts it."""
    from tests.etcd_server import EtcdCluster

    cluster = EtcdCluster(3)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def etcd_tls():
    """One etcd member serving https only to clients with a certificate of its test CA."""
    from tests.etcd_server import EtcdCluster

    cluster = EtcdCluster(1, tls=True)
    yield cluster
    cluster.stop()
