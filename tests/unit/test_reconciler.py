"""The reconciler's fault boundary: an exception while applying changes is logged with
what it was doing, and the worker goes on with the next ones (no switch needed to show it:
the engine runs before anything is sent)."""

from __future__ import annotations

import logging
import time

from controller.reconciler import Reconciler
from openflow.incremental import Peer, Upsert
from openflow.state import NetworkSpec

WAIT = 10.0


def test_a_change_that_raises_leaves_the_worker_alive_and_serving(caplog):
    rec = Reconciler(lambda: 0, lambda g: None, lambda: None, canary_interval=3600)
    rec.start()
    try:
        with caplog.at_level(logging.ERROR):
            rec.submit([Upsert("junk", "not an object")])
            rec.submit([Upsert("networks/default", NetworkSpec("default", 5001, 1), (1,))])
            rec.submit([Upsert("hosts/h2", Peer("198.18.0.2"), (2,))])
            deadline = time.monotonic() + WAIT
            while not rec.is_active("hosts/h2") and time.monotonic() < deadline:
                time.sleep(0.01)
        assert rec.is_active("networks/default") and rec.is_active("hosts/h2")
        assert rec.failures >= 1
        assert "reconciler failed applying" in caplog.text
        assert "dropped a change it cannot apply: Upsert(key='junk'" in caplog.text
    finally:
        rec.stop()


def test_a_submit_without_changes_waits_for_the_latest_version_and_makes_none():
    """Two ADDs read br-int at once and both see both new ports: the second submits
    nothing.  Its version must be one the worker will apply (the first's), not a new one
    with nothing queued, which the worker only noticed at its next canary check."""
    rec = Reconciler(lambda: 0, lambda g: None, lambda: None, canary_interval=3600)
    first = rec.submit([Upsert("hosts/h2", Peer("198.18.0.2"), (2,))])
    assert rec.submit([]) == first
    assert rec.submit([Upsert("hosts/h3", Peer("198.18.0.3"), (3,))]) == first + 1
