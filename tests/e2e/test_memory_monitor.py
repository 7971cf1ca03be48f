"""The raylet's memory monitor: over the threshold it kills the newest retriable
task's worker; the task retries or fails with OutOfMemoryError; the node survives.

Each cluster gets a threshold just above the memory the machine uses now, so a
task allocating (and touching) a few hundred MiB crosses it. Other processes on
the machine move the reading too (other test runs share it), so allocations go
well past the margin, and the tests accept extra kills of retriable work.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from aioray.daemons.raylet.memory_monitor import (
    Candidate,
    MemoryMonitor,
    MemorySnapshot,
    choose_victim,
    read_memory,
)

import aioray as ray
from aioray._private.node.memory_tables import raylet_state
from aioray._private.wire import config
from aioray.exceptions import OutOfMemoryError, WorkerCrashedError

MiB = 1024**2
# Threshold above the current use (the cluster itself takes ~50 MiB). Other processes on
# the machine move the reading by hundreds of MiB: the allocation goes well past it.
MARGIN = 400 * MiB
ALLOC_LIMIT = 1536 * MiB  # a task allocates at most this much, in steps


def hog_function() -> Any:
    """A task body that allocates and touches memory in steps, then holds it.

    Built inside a function so it is pickled by value (workers cannot import tests/).
    """

    def allocate_until_killed(limit: int = ALLOC_LIMIT, hold_s: float = 20.0) -> int:
        import numpy as np

        chunks = []
        while len(chunks) * 64 * MiB < limit:
            chunks.append(np.ones(64 * MiB, dtype=np.uint8))
            time.sleep(0.02)
        deadline = time.monotonic() + hold_s
        while time.monotonic() < deadline:
            time.sleep(0.05)
        return len(chunks)

    return allocate_until_killed


@pytest.fixture
def oom_cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A cluster whose memory threshold sits MARGIN above the machine's use now."""
    now = read_memory()
    threshold = (now.used + MARGIN) / now.total
    monkeypatch.setenv("AIORAY_MEMORY_USAGE_THRESHOLD", f"{threshold:.6f}")
    monkeypatch.setenv("AIORAY_MEMORY_MONITOR_REFRESH_MS", "50")
    ctx = ray.init(num_cpus=2)
    try:
        yield ctx
    finally:
        ray.shutdown()


# --------------------------------------------------------------------------- policy


def test_choose_victim_newest_retriable_first() -> None:
    old_retriable = Candidate(1, True, 1.0)
    new_retriable = Candidate(2, True, 2.0)
    newest_plain = Candidate(3, False, 3.0)
    assert choose_victim([old_retriable, newest_plain, new_retriable]) is new_retriable
    assert choose_victim([newest_plain, Candidate(4, False, 0.5)]) is newest_plain
    assert choose_victim([Candidate(5, False, 9.0), old_retriable]) is old_retriable
    assert choose_victim([]) is None


class _FakeWorker:
    def __init__(self, wid: bytes, pid: int) -> None:
        self.worker_id, self.pid, self.lease_id = wid, pid, 1


class _FakeRaylet:
    node_ip = "10.0.0.7"
    node_id = bytes(range(16))
    leases: dict[int, Any] = {}


def test_kill_message_names_node_memory_threshold_and_worker() -> None:
    monitor = MemoryMonitor(_FakeRaylet(), 0.9, 0.05)  # type: ignore[arg-type]
    snap = MemorySnapshot(used=23 * 1024**3, total=24 * 1024**3)
    text = monitor.describe(_FakeWorker(b"\xab" * 16, 4242), snap, True)  # type: ignore[arg-type]
    assert "IP: 10.0.0.7" in text and bytes(range(16)).hex() in text
    assert "23.00GB / 24.00GB (0.958)" in text
    assert "threshold of 0.9." in text
    assert "pid=4242" in text and "ab" * 16 in text
    assert "could be retried" in text


def test_memory_reading_is_sane() -> None:
    snap = read_memory()
    assert 0 < snap.used < snap.total
    assert 0.0 < snap.fraction < 1.0


@pytest.mark.parametrize(
    ("name", "value", "needle"),
    [
        ("AIORAY_MEMORY_USAGE_THRESHOLD", "1.5", "AIORAY_MEMORY_USAGE_THRESHOLD must be"),
        ("AIORAY_MEMORY_USAGE_THRESHOLD", "lots", "got 'lots'"),
        ("AIORAY_MEMORY_MONITOR_REFRESH_MS", "-1", "AIORAY_MEMORY_MONITOR_REFRESH_MS must be"),
    ],
)
def test_bad_settings_fail_init_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, needle: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=needle):
        config.memory_monitor_settings()
    with pytest.raises(ValueError, match=needle):
        ray.init(num_cpus=1)
    assert not ray.is_initialized()


def test_defaults_follow_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIORAY_MEMORY_USAGE_THRESHOLD", raising=False)
    monkeypatch.delenv("AIORAY_MEMORY_MONITOR_REFRESH_MS", raising=False)
    assert config.memory_monitor_settings() == (0.95, 0.25)


# ------------------------------------------------------------------------ end to end


def test_task_without_retries_fails_with_out_of_memory_error(oom_cluster: Any) -> None:
    hog = ray.remote(max_retries=0)(hog_function())
    ref = hog.remote()
    with pytest.raises(OutOfMemoryError) as info:
        ray.get(ref, timeout=60)
    assert not isinstance(info.value, WorkerCrashedError)
    text = str(info.value)
    assert "allocate_until_killed" in text and ref.task_id().hex() in text
    assert "running low on memory" in text
    assert "IP: 127.0.0.1" in text and "exceeds the memory usage threshold" in text
    assert raylet_state()["oom_kills"] >= 1  # more only if the rest of the machine grew

    # The node survives and keeps running tasks.
    @ray.remote
    def add(a: int, b: int) -> int:
        return a + b

    assert ray.get([add.remote(i, 1) for i in range(20)], timeout=30) == list(range(1, 21))
    assert ray.get(ray.put("still here"), timeout=10) == "still here"


def test_retriable_task_is_retried_after_an_oom_kill(oom_cluster: Any, tmp_path: Any) -> None:
    marker = str(tmp_path / "first-attempt")

    allocate_until_killed = hog_function()

    # Retries to spare: other processes on the machine may push it over again.
    @ray.remote(max_retries=3)
    def hog_once(path: str) -> str:
        if os.path.exists(path):
            return "second attempt"
        open(path, "w").close()
        allocate_until_killed()
        return "first attempt survived"

    assert ray.get(hog_once.remote(marker), timeout=60) == "second attempt"
    assert raylet_state()["oom_kills"] >= 1  # more only if the rest of the machine grew
    assert ray.get(ray.remote(lambda: 42).remote(), timeout=30) == 42


def test_retriable_task_is_killed_before_a_newer_non_retriable_one(
    oom_cluster: Any, tmp_path: Any
) -> None:
    """The hog (retriable) is leased first; a non-retriable task is leased after it, so
    it is the newest. The policy still picks the retriable hog, which then retries."""
    hog_started = str(tmp_path / "hog-first-attempt")
    steady_started = str(tmp_path / "steady-started")
    allocate_until_killed = hog_function()

    @ray.remote(max_retries=2)
    def hog(marker: str, wait_for: str) -> str:
        if os.path.exists(marker):
            return "hog retried"
        open(marker, "w").close()
        deadline = time.monotonic() + 30
        while not os.path.exists(wait_for) and time.monotonic() < deadline:
            time.sleep(0.01)  # allocate only once the newer task runs
        allocate_until_killed()
        return "hog survived"

    @ray.remote(max_retries=0)
    def steady(path: str) -> str:
        open(path, "w").close()
        time.sleep(3)
        return "steady done"

    hog_ref = hog.remote(hog_started, steady_started)
    deadline = time.monotonic() + 30
    while not os.path.exists(hog_started) and time.monotonic() < deadline:
        time.sleep(0.01)
    steady_ref = steady.remote(steady_started)
    assert ray.get(hog_ref, timeout=60) == "hog retried"
    assert ray.get(steady_ref, timeout=30) == "steady done"
    assert raylet_state()["oom_kills"] >= 1  # more only if the rest of the machine grew


def test_monitor_disabled_with_zero_refresh(monkeypatch: pytest.MonkeyPatch) -> None:
    # Threshold far below the current use: an enabled monitor would kill at once.
    monkeypatch.setenv("AIORAY_MEMORY_USAGE_THRESHOLD", "0.001")
    monkeypatch.setenv("AIORAY_MEMORY_MONITOR_REFRESH_MS", "0")
    ray.init(num_cpus=1)
    try:

        @ray.remote(max_retries=0)
        def slow() -> str:
            time.sleep(0.5)
            return "done"

        assert ray.get(slow.remote(), timeout=30) == "done"
        assert raylet_state()["oom_kills"] == 0
    finally:
        ray.shutdown()


def test_actor_killed_for_memory_dies_with_the_reason(oom_cluster: Any) -> None:
    allocate_until_killed = hog_function()

    @ray.remote
    class Hog:
        def grow(self) -> int:
            return allocate_until_killed()

    hog = Hog.remote()
    with pytest.raises(ray.exceptions.ActorDiedError) as info:
        ray.get(hog.grow.remote(), timeout=60)
    assert "exceeds the memory usage threshold" in str(info.value)
    assert "an actor" in str(info.value)
    # Every later call names the OOM kill too.
    with pytest.raises(ray.exceptions.ActorDiedError, match="exceeds the memory usage threshold"):
        ray.get(hog.grow.remote(), timeout=30)
    assert raylet_state()["oom_kills"] >= 1  # more only if the rest of the machine grew
    assert ray.get(ray.remote(lambda: "alive").remote(), timeout=30) == "alive"


class _FakeConn:
    def __init__(self) -> None:
        self.is_closed = False
        self.told: list[Any] = []

    async def call(self, method: str, body: Any) -> bool:
        self.told.append((method, body))
        return True


class _FakeLease:
    def __init__(self, lease_id: int, pid: int, retriable: bool, granted_at: float) -> None:
        self.lease_id = lease_id
        self.worker = _FakeWorker(lease_id.to_bytes(16, "big"), pid)
        self.worker.lease_id = lease_id
        self.actor = None
        self.retriable = retriable
        self.granted_at = granted_at
        self.conn = _FakeConn()


async def test_one_kill_per_pressure_spike_then_the_next_victim() -> None:
    """Memory stays high: the monitor kills the chosen worker, then waits for its
    death and one more refresh before it kills the next one."""
    import asyncio
    import subprocess

    procs = [subprocess.Popen(["sleep", "60"]) for _ in range(2)]
    try:
        raylet = _FakeRaylet()
        raylet.leases = {
            1: _FakeLease(1, procs[0].pid, True, 1.0),
            2: _FakeLease(2, procs[1].pid, False, 2.0),
        }
        high = MemorySnapshot(used=99, total=100)
        monitor = MemoryMonitor(raylet, 0.9, 0.01, read=lambda: high)  # type: ignore[arg-type]
        monitor.start()
        await asyncio.wait_for(asyncio.to_thread(procs[0].wait), 10)  # the retriable one
        assert raylet.leases[1].conn.told[0][0] == "worker_oom_killed"
        await asyncio.sleep(0.2)  # many readings over the threshold meanwhile
        assert monitor.kills == 1 and procs[1].poll() is None
        # Its death is seen: after one refresh the next victim goes.
        why = monitor.worker_dead(raylet.leases.pop(1).worker)  # type: ignore[arg-type]
        assert why is not None and "pid=" in why
        await asyncio.wait_for(asyncio.to_thread(procs[1].wait), 10)
        assert monitor.kills == 2
        monitor.stop()
    finally:
        for p in procs:
            p.kill()
            p.wait()
