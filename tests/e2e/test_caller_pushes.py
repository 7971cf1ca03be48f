"""A caller thread pushing its task or actor call itself (TaskSubmitter.push_now on an idle
lease it claims, ActorSubmitter.push_now when the call's turn has come), with real
daemons: many threads at once, a cancel of a task a thread pushed, its worker killed
under it, the lease still given back after its linger, and one caller's actor calls
in order whichever way each one went.

Each test counts the pushes the threads made themselves (a wrapper around
``push_now``), so that it is known to exercise that path."""

from __future__ import annotations

import concurrent.futures
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import wait_for_condition

import aioray as ray
from aioray._private.wire import config
from aioray.exceptions import TaskCancelledError, WorkerCrashedError

GET_TIMEOUT = 30


class Counted:
    """Wraps a submitter's ``push_now``: how many pushes each task id went directly."""

    def __init__(self, submitter: Any) -> None:
        self.submitter = submitter
        self.push_now = submitter.push_now
        self.direct: set[bytes] = set()
        self.lock = threading.Lock()
        submitter.push_now = self

    def __call__(self, task: Any) -> bool:
        pushed = self.push_now(task)
        if pushed:
            with self.lock:
                self.direct.add(task.task_id)
        return pushed

    def went_direct(self, ref: ray.ObjectRef) -> bool:
        return ref.task_id().binary() in self.direct

    def restore(self) -> None:
        del self.submitter.push_now  # (the instance attribute: the method shows again)


@pytest.fixture
def counted(ray_shared: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Counted, Counted]]:
    """(tasks, actor calls) counted; leases linger 1 s, so one stays idle between
    calls however loaded the machine is (the default 10 ms could run out between two)."""
    from aioray import api

    cw = api.ensure_connected()
    monkeypatch.setattr(config, "LEASE_LINGER_S", 1.0)
    tasks, calls = Counted(cw.submitter), Counted(cw.actors)
    try:
        yield tasks, calls
    finally:
        tasks.restore()
        calls.restore()


@ray.remote
def square(x: int) -> int:
    return x * x


def test_many_sync_tasks_from_two_threads_are_all_right(counted: tuple[Counted, Counted]) -> None:
    tasks, _ = counted
    ray.get(square.remote(0), timeout=GET_TIMEOUT)  # a lease, left idle

    def work(k: int) -> list[ray.ObjectRef]:
        refs = []
        for i in range(300):
            ref = square.remote(k * 1000 + i)
            assert ray.get(ref, timeout=GET_TIMEOUT) == (k * 1000 + i) ** 2
            refs.append(ref)
        return refs

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        refs = [r for got in pool.map(work, (1, 2)) for r in got]
    assert sum(tasks.went_direct(r) for r in refs) > len(refs) // 2
    assert ray.get(refs, timeout=GET_TIMEOUT) == [
        (k * 1000 + i) ** 2 for k in (1, 2) for i in range(300)
    ]


@ray.remote(max_retries=0)
def spin(started: str) -> str:
    with open(started + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(started + ".tmp", started)
    deadline = time.time() + 4 * GET_TIMEOUT  # (longer than any wait below)
    try:
        while time.time() < deadline:
            time.sleep(0.01)
    finally:  # (a plain cancel interrupts the task: it gets here)
        open(started + ".stopped", "w").close()
    return "finished"


@pytest.mark.parametrize("force", [False, True])
def test_a_task_a_thread_pushed_is_cancelled(
    counted: tuple[Counted, Counted], tmp_path: Any, force: bool
) -> None:
    tasks, _ = counted
    started = tmp_path / "started"
    ray.get(square.remote(1), timeout=GET_TIMEOUT)  # (same resources: the same lease class)
    ref = spin.remote(str(started))
    assert tasks.went_direct(ref)
    wait_for_condition(started.exists, GET_TIMEOUT, message="the task never started")
    ray.cancel(ref, force=force)
    expected = (TaskCancelledError, WorkerCrashedError) if force else TaskCancelledError
    with pytest.raises(expected):
        ray.get(ref, timeout=GET_TIMEOUT)
    # The cancel reached the worker the thread pushed to: the task stopped there.
    if force:
        pid = int(started.read_text())
        wait_for_condition(lambda: not _alive(pid), GET_TIMEOUT, message="worker not killed")
    else:
        stopped = tmp_path / "started.stopped"
        wait_for_condition(stopped.exists, GET_TIMEOUT, message="the task was not interrupted")
    assert ray.get(square.remote(3), timeout=GET_TIMEOUT) == 9  # the owner goes on


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@ray.remote(max_retries=1)
def die_once(marker: str) -> int:
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)  # the worker dies under the task: it is retried
    return os.getpid()


def test_a_task_a_thread_pushed_is_retried_when_its_worker_dies(
    counted: tuple[Counted, Counted], tmp_path: Any
) -> None:
    tasks, _ = counted
    ray.get(square.remote(2), timeout=GET_TIMEOUT)
    ref = die_once.remote(str(tmp_path / "died"))
    assert tasks.went_direct(ref)
    assert isinstance(ray.get(ref, timeout=GET_TIMEOUT), int)
    assert (tmp_path / "died").exists()


def test_a_lease_only_threads_pushed_on_is_given_back_after_its_linger(
    ray_shared: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aioray import api

    cw = api.ensure_connected()
    tasks = Counted(cw.submitter)
    try:
        # Longer than any gap between two calls, however loaded the machine is: a lease
        # given back between them would send the next call through the loop.
        monkeypatch.setattr(config, "LEASE_LINGER_S", 1.0)
        ray.get(square.remote(4), timeout=GET_TIMEOUT)
        refs = []
        for i in range(50):  # one at a time: each goes straight to the idle lease
            ref = square.remote(i)
            assert ray.get(ref, timeout=GET_TIMEOUT) == i * i
            refs.append(ref)
        assert sum(tasks.went_direct(r) for r in refs) >= 40
    finally:
        tasks.restore()
    total = ray.cluster_resources()["CPU"]
    wait_for_condition(
        lambda: ray.available_resources().get("CPU") == total,
        GET_TIMEOUT,
        message="the idle lease was never given back",
    )
    assert all(not cls.leases and not cls.parked for cls in cw.submitter.classes.values())


@ray.remote(num_cpus=0)
class Log:
    def __init__(self) -> None:
        self.seen: list[int] = []

    def add(self, i: int, _dep: Any = None) -> int:
        self.seen.append(i)
        return i

    def all(self) -> list[int]:
        return self.seen


@ray.remote
def slow_value(x: int) -> int:
    time.sleep(0.05)
    return x


def test_one_caller_s_actor_calls_run_in_order_sync_and_async_mixed(
    counted: tuple[Counted, Counted],
) -> None:
    _, calls = counted
    log = Log.remote()
    ray.get(log.add.remote(-1), timeout=GET_TIMEOUT)
    refs = []
    for i in range(300):
        if i % 50 == 25:  # waits for its argument on the loop: later calls wait their turn
            refs.append(log.add.remote(i, slow_value.remote(i)))
        elif i % 3 == 0:  # after all earlier ones are done: its turn, nothing in flight
            ray.get(refs, timeout=GET_TIMEOUT)
            ref = log.add.remote(i)
            assert ray.get(ref, timeout=GET_TIMEOUT) == i
            refs.append(ref)
        else:
            refs.append(log.add.remote(i))
    assert ray.get(refs, timeout=GET_TIMEOUT) == list(range(300))
    assert ray.get(log.all.remote(), timeout=GET_TIMEOUT) == [-1, *range(300)]
    assert sum(calls.went_direct(r) for r in refs) >= 50
