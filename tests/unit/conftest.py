"""The unit tests: pure floors (state, policies, framing) and service tests on loopback
sockets. No cluster, no daemon process, hence no process scan after each test; the
folder runs in seconds, before the end-to-end suite (tests/e2e)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from fakes import OfflineCluster, offline_core_worker

from aioray._private.owner.object_ref import set_core_worker


@pytest.fixture
async def offline() -> AsyncIterator[OfflineCluster]:
    """A CoreWorker on the test's loop with fake raylet, GCS and peers (fakes.py), made
    this process's CoreWorker so that ObjectRefs count with it."""
    cluster = offline_core_worker()
    set_core_worker(cluster.cw)
    try:
        yield cluster
    finally:
        cluster.cw.closing = True
        set_core_worker(None)
