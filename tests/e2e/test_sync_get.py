"""A driver's blocking get of results it owns, from any thread (owner/thread_waits.py): the
thread sleeps until the reply stores the result, and every way a wait ends still works:
many threads at once, several threads on one result (one watches the store, the others
wait through the core loop), and a cancel, plain or forced, of what a thread waits for."""

from __future__ import annotations

import concurrent.futures
import os
import threading
import time

import pytest
from conftest import wait_for_condition

import aioray as ray
from aioray._private.owner.thread_waits import ThreadWait
from aioray.exceptions import TaskCancelledError, WorkerCrashedError

GET_TIMEOUT = 30


def test_sync_round_trips_from_several_threads_at_once(ray_shared):
    @ray.remote
    def square(x):
        return x * x

    @ray.remote(num_cpus=0)
    class Log:
        def __init__(self):
            self.seen = []

        def add(self, thread, i):
            self.seen.append((thread, i))
            return i

        def seen_by(self, thread):
            return [i for t, i in self.seen if t == thread]

    log = Log.remote()

    def work(thread: int) -> bool:
        for i in range(30):
            if ray.get(square.remote(i)) != i * i or ray.get(log.add.remote(thread, i)) != i:
                return False
        return True

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        assert all(pool.map(work, range(4)))
    for thread in range(4):  # each thread's calls ran in the order it made them
        assert ray.get(log.seen_by.remote(thread), timeout=GET_TIMEOUT) == list(range(30))


def _blocker():
    @ray.remote
    def wait_for(path):
        deadline = time.time() + 30
        while not os.path.exists(path) and time.time() < deadline:
            time.sleep(0.01)
        return "released"

    return wait_for


def _watched_by_a_thread(cw, ref) -> bool:
    return isinstance((cw.memory_store.watched.get(ref.binary()) or [None])[0], ThreadWait)


def _read_by_a_thread(cw, ref) -> bool:
    """A caller thread reads the task's reply from the lease itself (owner/reply_reads.py)."""
    task = cw.submitter.tasks.get(ref.task_id().binary())
    return task is not None and task.lease is not None and task.lease.conn._reading


def _waiting_threads(cw, ref) -> int:
    """Threads blocked in get for ``ref``: the one reading the reply, the one watching
    the store, and those waiting through the core loop."""
    callbacks = len(cw.memory_store._callbacks.get(ref.binary(), ()))
    return _read_by_a_thread(cw, ref) + _watched_by_a_thread(cw, ref) + callbacks


def test_threads_waiting_for_one_result_all_get_it(ray_shared, tmp_path):
    from aioray import api

    cw = api.ensure_connected()
    release = tmp_path / "release"
    ref = _blocker().remote(str(release))
    oid = ref.binary()
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        gets = [pool.submit(ray.get, ref) for _ in range(3)]
        # One thread may read the reply itself, one watches the store, the others wait
        # through the core loop.
        wait_for_condition(
            lambda: _watched_by_a_thread(cw, ref) and _waiting_threads(cw, ref) == 3,
            GET_TIMEOUT,
            message="three threads never waited for the result",
        )
        release.touch()
        assert [g.result(GET_TIMEOUT) for g in gets] == ["released"] * 3
    assert not cw.memory_store.has_waiters(oid)


def _spinner():
    @ray.remote(max_retries=0)
    def spin(started):
        with open(started + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(started + ".tmp", started)
        deadline = time.time() + 30
        while time.time() < deadline:
            time.sleep(0.01)
        return "finished"

    return spin


@pytest.mark.parametrize("force", [False, True])
def test_cancel_wakes_a_get_blocked_in_another_thread(ray_shared, tmp_path, force):
    from aioray import api

    cw = api.ensure_connected()
    started = tmp_path / "started"
    ref = _spinner().remote(str(started))
    outcome: list[BaseException | str] = []

    def get() -> None:
        try:
            outcome.append(ray.get(ref))  # no timeout: only the cancel can end it
        except BaseException as e:
            outcome.append(e)

    thread = threading.Thread(target=get)
    thread.start()
    try:
        wait_for_condition(started.exists, GET_TIMEOUT, message="the task never started")
        wait_for_condition(
            lambda: _watched_by_a_thread(cw, ref) or _read_by_a_thread(cw, ref),
            GET_TIMEOUT,
            message="the thread never waited",
        )
        ray.cancel(ref, force=force)
        thread.join(GET_TIMEOUT)
        assert not thread.is_alive(), "the cancel did not wake the blocked get"
    finally:
        if thread.is_alive():  # leave no blocked thread behind: cancel for good
            ray.cancel(ref, force=True)
            thread.join(GET_TIMEOUT)
    expected = (TaskCancelledError, WorkerCrashedError) if force else TaskCancelledError
    assert len(outcome) == 1 and isinstance(outcome[0], expected), outcome
