"""Nothing grows while a program repeats the same work: the driver's CoreWorker
tables and the raylet's counts are the same after 2,000 task/put cycles as after
the warm-up. Entry counts, not RSS, so the check is deterministic."""

from __future__ import annotations

import gc
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import wait_for_condition

import aioray as ray
from aioray import api
from aioray._private.node.memory_tables import core_worker_tables, raylet_state
from aioray._private.wire import ids

RAYLET_COUNTS = ("workers", "leases", "queued", "objects")


def settled_counts() -> dict[str, int]:
    """Driver tables plus raylet counts, once in-flight frees and lease returns are done."""
    cw = api.ensure_connected()

    def snapshot() -> dict[str, int]:
        gc.collect()
        counts = core_worker_tables(cw)
        state = raylet_state()
        counts.update({f"raylet.{k}": int(state[k]) for k in RAYLET_COUNTS})
        return counts

    # Frees and lease returns are posted asynchronously: wait until two snapshots agree.
    deadline = time.monotonic() + 10
    last = snapshot()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = snapshot()
        if now == last:
            return now
        last = now
    return last


@pytest.fixture
def cluster() -> Iterator[Any]:
    ctx = ray.init(num_cpus=2)
    try:
        yield ctx
    finally:
        ray.shutdown()


def test_no_table_grows_over_2000_task_put_cycles(cluster: Any) -> None:
    @ray.remote
    def echo(x: Any) -> Any:
        return x

    @ray.remote
    def nbytes(a: Any) -> int:
        return int(a.nbytes)

    big = np.ones(200_000 // 8)  # above the inline limit: shared memory

    def batch(i: int) -> None:
        """Ten put+task cycles in parallel; every tenth batch also moves a shm object."""
        refs = [ray.put(i + j) for j in range(10)]
        assert ray.get([echo.remote(r) for r in refs], timeout=30) == [i + j for j in range(10)]
        if i % 10 == 0:
            assert ray.get(nbytes.remote(ray.put(big)), timeout=30) == big.nbytes
            assert ray.get(echo.remote(big), timeout=30).nbytes == big.nbytes

    for i in range(20):
        batch(i)
    before = settled_counts()
    for i in range(200):  # 200 batches of 10: 2,000 cycles
        batch(i)
    after = settled_counts()
    grown = {k: (before.get(k, 0), v) for k, v in after.items() if v > before.get(k, 0)}
    assert not grown, f"tables grew over 2,000 cycles (before, after): {grown}"


def test_a_burst_starts_no_more_workers_than_cpus(cluster: Any) -> None:
    @ray.remote
    def one() -> int:
        return 1

    assert sum(ray.get([one.remote() for _ in range(40)], timeout=30)) == 40
    # Ten queued lease requests used to start ten workers for two free CPUs.
    assert raylet_state()["workers"] <= 2


def test_nested_refs_are_not_pinned_forever(cluster: Any) -> None:
    """Borrowing: a ref inside a put value is freed with the outer value."""
    wait_for_condition(lambda: raylet_state()["workers"] == 2)  # prestarted, as in the loop
    for i in range(20):
        ray.get(ray.put([ray.put(i)]), timeout=10)
    before = settled_counts()
    for i in range(200):
        ray.get(ray.put([ray.put(i)]), timeout=10)
    after = settled_counts()
    grown = {k: (before.get(k, 0), v) for k, v in after.items() if v > before.get(k, 0)}
    assert not grown, f"tables grew (before, after): {grown}"


@pytest.mark.timeout(120)
def test_memory_benchmark_quick_prints_its_lines() -> None:
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "memory_benchmark.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--quick", "--cycles", "300"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert re.search(r"^put\+free of 10k small objects per second \S+ \+- \S+$", out, re.M), out
    assert re.search(r"^whole-cluster RSS MiB after 300 task/put cycles \S+ ", out, re.M), out
    assert re.search(r"^whole-cluster RSS growth MiB over 300 task/put cycles \S+ ", out, re.M)
    assert "driver tables that grew" in proc.stderr


def test_a_free_that_overtakes_the_seal_leaves_no_raylet_entry(cluster: Any) -> None:
    """A worker seals a task's return on its raylet connection while the owner frees
    it on another; when the free wins the race, the late seal must not be recorded."""
    cw = api.ensure_connected()
    oid = ids.random_id(ids.OBJECT_ID_SIZE)

    async def race() -> dict[str, Any]:
        cw.raylet.notify("free_objects", [oid])
        cw.raylet.notify("object_sealed", [oid, 1000, cw.worker_id])
        state: dict[str, Any] = await cw.raylet.call("get_state")
        return state

    assert cw.run_sync(race(), timeout=10)["objects"] == 0
