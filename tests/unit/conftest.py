"""Fixtures shared by the store tests of both backends."""

from __future__ import annotations

import pytest

# ``backend``: the contract's store fixture (SQLite and a real etcd), for every store test.
from tests.unit.test_store_contract import Watcher, backend  # noqa: F401


@pytest.fixture
def watchers():
    """Start watchers that are closed after the test: ``watchers(kv, prefix, revision)``."""
    made: list[Watcher] = []
    yield lambda kv, prefix, revision: made.append(Watcher(kv, prefix, revision)) or made[-1]
    for w in made:
        w.close()
