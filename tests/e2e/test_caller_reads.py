"""A caller thread reading its own task's or actor call's reply (owner/reply_reads.py
over rpc/thread_reads.py), with real daemons: every kind of result still right whichever
way it was read, actor calls in order, a reply no thread reads still read by the loop,
a get that times out or is interrupted (Ctrl-C) leaving the reply to the loop, a
worker or actor killed under a thread reading its reply.

Each test counts the gets a thread served by reading the reply itself, so that it is
known to exercise that path."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from conftest import wait_for_condition

import aioray as ray
from aioray._private.owner import reply_reads
from aioray._private.wire import config
from aioray.exceptions import ActorDiedError, GetTimeoutError, RayTaskError, WorkerCrashedError

GET_TIMEOUT = 30


class Reads:
    """Counts the gets served by ``read_own_reply``, the ones it left to the store, and
    the ones it ended with an error."""

    def __init__(self) -> None:
        self.read = self.left = self.raised = 0
        self.original = reply_reads.read_own_reply

    def __call__(self, sub: Any, oid: bytes, timeout: float | None) -> Any:
        try:
            obj = self.original(sub, oid, timeout)
        except BaseException:
            self.raised += 1
            raise
        if obj is None:
            self.left += 1
        else:
            self.read += 1
        return obj


@pytest.fixture
def reads(ray_shared: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Reads]:
    """Leases linger 1 s: one stays idle between calls however loaded the machine is."""
    monkeypatch.setattr(config, "LEASE_LINGER_S", 1.0)
    counter = Reads()
    monkeypatch.setattr(reply_reads, "read_own_reply", counter)
    yield counter


@pytest.fixture
def own_reads(reads: Reads, monkeypatch: pytest.MonkeyPatch) -> Reads:
    """``reads``, with the loop's lazy checks an hour off: a reply a caller thread pushed
    for is never taken back by a check that runs before that thread reads it (a slow
    thread start, on a loaded machine, could outlast the 50 ms)."""
    from aioray import api
    from aioray._private.owner import lazy_posts

    cw = api.ensure_connected()
    monkeypatch.setattr(lazy_posts, "DELAY_S", 3600.0)
    ray.get(echo.remote(0), timeout=GET_TIMEOUT)
    wait_for_condition(  # (a tick armed before the change fires, and the next is an hour off)
        lambda: cw.lazy_posts.tick is None or cw.lazy_posts.tick.when() > cw.loop.time() + 60,
        GET_TIMEOUT,
        message="the lazy posts' tick never moved to an hour",
    )
    return reads


@ray.remote
def echo(x: Any) -> Any:
    return x


@ray.remote
def fail(message: str) -> None:
    raise ValueError(message)


@ray.remote
def talk(x: int) -> int:
    print("talking", x)
    return x


@ray.remote(num_returns=2)
def pair(x: int) -> tuple[int, int]:
    return x, -x


def test_sync_results_of_every_kind_are_right(reads: Reads) -> None:
    ray.get(echo.remote(0), timeout=GET_TIMEOUT)  # a lease, left idle
    for i in range(200):
        assert ray.get(echo.remote(i), timeout=GET_TIMEOUT) == i
    assert reads.read > 100  # (a claim can miss the idle lease now and then)
    big = np.arange(1_000_000, dtype=np.int64)  # a result in shared memory
    assert np.array_equal(ray.get(echo.remote(big), timeout=GET_TIMEOUT), big)
    with pytest.raises(RayTaskError, match="no good"):
        ray.get(fail.remote("no good"), timeout=GET_TIMEOUT)
    assert ray.get(talk.remote(7), timeout=GET_TIMEOUT) == 7
    assert ray.get(list(pair.remote(3)), timeout=GET_TIMEOUT) == [3, -3]
    inner = ray.put("inside")
    got = ray.get(echo.remote([inner]), timeout=GET_TIMEOUT)  # a result holding a ref
    assert ray.get(got[0], timeout=GET_TIMEOUT) == "inside"
    for i in range(50):  # and the fast way still works after all those
        assert ray.get(echo.remote(i), timeout=GET_TIMEOUT) == i


def test_a_reply_no_thread_reads_is_read_by_the_loop(reads: Reads) -> None:
    from aioray import api

    cw = api.ensure_connected()
    ray.get(echo.remote(0), timeout=GET_TIMEOUT)
    for i in range(20):
        ref = echo.remote(i)  # nobody gets it
        wait_for_condition(
            lambda: cw.memory_store.get(ref.binary()) is not None,  # noqa: B023
            GET_TIMEOUT,
            message="a reply nobody waited for was never read",
        )
    assert ray.get(ref, timeout=GET_TIMEOUT) == 19


@ray.remote(max_retries=0)
def wait_for(path: str, started: str) -> str:
    with open(started + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(started + ".tmp", started)
    while not os.path.exists(path):
        threading.Event().wait(0.005)
    return "released"


def _reading(ref: ray.ObjectRef) -> bool:
    """A caller thread reads ``ref``'s reply right now."""
    from aioray import api

    task = api.ensure_connected().submitter.tasks.get(ref.task_id().binary())
    return task is not None and task.lease is not None and bool(task.lease.conn._reading)


def test_a_get_that_times_out_leaves_the_reply_to_the_loop(own_reads: Reads, tmp_path: Any) -> None:
    release, started = tmp_path / "release", tmp_path / "started"
    ray.get(echo.remote(0), timeout=GET_TIMEOUT)
    ref = wait_for.remote(str(release), str(started))
    with pytest.raises(GetTimeoutError):
        ray.get(ref, timeout=0.2)
    assert own_reads.raised == 1  # the thread read until the timeout
    release.touch()
    assert ray.get(ref, timeout=GET_TIMEOUT) == "released"
    assert ray.get(echo.remote(5), timeout=GET_TIMEOUT) == 5


def _interrupted_get(ref: ray.ObjectRef, reading: Any) -> None:
    """``ray.get(ref)`` in the main thread, sent SIGINT once it reads its reply itself
    (``reading(ref)``): it raises KeyboardInterrupt."""

    def interrupt() -> None:
        wait_for_condition(lambda: reading(ref), GET_TIMEOUT, message="the get never read")
        os.kill(os.getpid(), signal.SIGINT)

    sender = threading.Thread(target=interrupt)
    sender.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            ray.get(ref, timeout=GET_TIMEOUT)
    finally:
        sender.join(GET_TIMEOUT)


def test_ctrl_c_in_a_get_reading_its_reply(own_reads: Reads, tmp_path: Any) -> None:
    """The main thread blocked reading its reply is interrupted: KeyboardInterrupt, and
    the reply is the loop's to read (a later get returns it)."""
    assert threading.current_thread() is threading.main_thread()
    release, started = tmp_path / "release", tmp_path / "started"
    ray.get(echo.remote(0), timeout=GET_TIMEOUT)
    ref = wait_for.remote(str(release), str(started))

    _interrupted_get(ref, _reading)
    assert own_reads.raised == 1  # interrupted while reading
    release.touch()
    assert ray.get(ref, timeout=GET_TIMEOUT) == "released"
    for i in range(20):
        assert ray.get(echo.remote(i), timeout=GET_TIMEOUT) == i


@ray.remote(max_retries=1)
def die_once(marker: str, started: str) -> str:
    if not os.path.exists(marker):
        open(marker, "w").close()
        with open(started + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(started + ".tmp", started)
        threading.Event().wait(4 * GET_TIMEOUT)  # killed here
    return "second attempt"


def _killed_under_a_read(ref: ray.ObjectRef, started: Any, reading: Any, pid: Any) -> Any:
    """``ray.get(ref)`` in another thread; once the task started and that thread reads its
    reply itself (``reading(ref)``), SIGKILL ``pid()``: what the get returned or raised."""
    outcome: list[Any] = []

    def get() -> None:
        try:
            outcome.append(ray.get(ref, timeout=GET_TIMEOUT))
        except BaseException as e:
            outcome.append(e)

    getter = threading.Thread(target=get)
    getter.start()
    wait_for_condition(
        lambda: started.exists() and reading(ref), GET_TIMEOUT, message="the get never read"
    )
    os.kill(pid(), signal.SIGKILL)
    getter.join(GET_TIMEOUT)
    assert len(outcome) == 1, outcome
    return outcome[0]


def test_a_worker_killed_while_a_thread_reads_its_reply(own_reads: Reads, tmp_path: Any) -> None:
    started = tmp_path / "started"
    ray.get(echo.remote(0), timeout=GET_TIMEOUT)
    ref = die_once.remote(str(tmp_path / "marker"), str(started))
    got = _killed_under_a_read(ref, started, _reading, lambda: int(started.read_text()))
    assert got == "second attempt"  # retried on a new lease, its result read
    assert ray.get(echo.remote(1), timeout=GET_TIMEOUT) == 1


@ray.remote(max_retries=0)
def die(started: str) -> None:
    with open(started + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(started + ".tmp", started)
    threading.Event().wait(4 * GET_TIMEOUT)


def test_a_killed_worker_without_retries_fails_the_reading_get(
    own_reads: Reads, tmp_path: Any
) -> None:
    started = tmp_path / "started"
    ray.get(echo.remote(0), timeout=GET_TIMEOUT)
    ref = die.remote(str(started))
    got = _killed_under_a_read(ref, started, _reading, lambda: int(started.read_text()))
    assert isinstance(got, WorkerCrashedError), got


@ray.remote(num_cpus=0)
class Counter:
    def __init__(self) -> None:
        self.n = 0

    def inc(self) -> int:
        self.n += 1
        return self.n

    def fail(self) -> None:
        raise ValueError("no good")

    def talk(self) -> int:
        print("talking", self.n)
        return self.n

    def pid(self) -> int:
        return os.getpid()

    def wait_for(self, path: str, started: str) -> int:
        open(started, "w").close()
        while not os.path.exists(path):
            threading.Event().wait(0.005)
        return self.inc()


def test_sync_actor_calls_read_by_the_caller_stay_in_order(reads: Reads) -> None:
    c = Counter.remote()
    assert ray.get(c.inc.remote(), timeout=GET_TIMEOUT) == 1
    for i in range(2, 202):
        assert ray.get(c.inc.remote(), timeout=GET_TIMEOUT) == i
    assert reads.read > 100
    burst = [c.inc.remote() for _ in range(50)]  # the loop's way, in between
    assert ray.get(burst, timeout=GET_TIMEOUT) == list(range(202, 252))
    with pytest.raises(RayTaskError, match="no good"):
        ray.get(c.fail.remote(), timeout=GET_TIMEOUT)
    assert ray.get(c.talk.remote(), timeout=GET_TIMEOUT) == 251
    for i in range(252, 282):
        assert ray.get(c.inc.remote(), timeout=GET_TIMEOUT) == i


def test_ctrl_c_in_a_get_reading_an_actor_reply(own_reads: Reads, tmp_path: Any) -> None:
    release, started = tmp_path / "release", tmp_path / "started"
    c = Counter.remote()
    for i in range(1, 4):
        assert ray.get(c.inc.remote(), timeout=GET_TIMEOUT) == i
    ref = c.wait_for.remote(str(release), str(started))

    _interrupted_get(ref, _reading_call)
    assert own_reads.raised == 1
    release.touch()
    assert ray.get(ref, timeout=GET_TIMEOUT) == 4
    for i in range(5, 25):  # the order holds after the interrupt
        assert ray.get(c.inc.remote(), timeout=GET_TIMEOUT) == i


def test_an_actor_killed_while_a_thread_reads_its_reply(own_reads: Reads, tmp_path: Any) -> None:
    release, started = tmp_path / "release", tmp_path / "started"
    c = Counter.remote()
    pid = ray.get(c.pid.remote(), timeout=GET_TIMEOUT)
    ref = c.wait_for.remote(str(release), str(started))
    got = _killed_under_a_read(ref, started, _reading_call, lambda: pid)
    assert isinstance(got, ActorDiedError), got


def _reading_call(ref: ray.ObjectRef) -> bool:
    """A caller thread reads the reply to actor call ``ref`` right now."""
    from aioray import api

    actors = api.ensure_connected().actors
    a = actors.thread_pushed.get(ref.task_id().binary())
    return a is not None and a.conn is not None and bool(a.conn._reading)


def test_waits_that_do_not_read_the_reply_have_the_loop_read_it(own_reads: Reads) -> None:
    """An ``await``, a get of several objects or of a call with two returns does not
    read the reply itself: the loop is told to read it at once, not at its lazy check
    (made an hour here, so a wait left to it would time out)."""
    import asyncio

    assert ray.get(list(pair.remote(4)), timeout=GET_TIMEOUT) == [4, -4]
    ref = echo.remote("twice")
    assert ray.get([ref, ref], timeout=GET_TIMEOUT) == ["twice", "twice"]

    async def awaits() -> list[Any]:
        return [await echo.remote(i) for i in range(10)]

    got: list[Any] = []
    app = threading.Thread(target=lambda: got.append(asyncio.run(awaits())))
    app.start()
    app.join(GET_TIMEOUT)
    assert got == [list(range(10))]
    c = Counter.remote()
    ray.get(c.inc.remote(), timeout=GET_TIMEOUT)

    async def actor_awaits() -> list[Any]:
        return [await c.inc.remote() for _ in range(10)]

    app = threading.Thread(target=lambda: got.append(asyncio.run(actor_awaits())))
    app.start()
    app.join(GET_TIMEOUT)
    assert got[1:] == [list(range(2, 12))]
