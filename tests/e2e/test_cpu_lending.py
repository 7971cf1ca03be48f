"""A worker blocked in get lends its CPUs, but only once the get has waited a while.

Unit tests of the policy (``CpuLending``, no loop), then end-to-end tests on a 4-CPU
node that count, from inside the tasks, how many run at once (a gauge in a file
under a lock: counting with an actor would itself call get).
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from conftest import _shutdown_and_check_ports, wait_for_condition

import aioray as ray
from aioray._private.core.cpu_lending import CpuLending, Lend

GET_TIMEOUT = 60
# The tasks below call this module's helpers: workers cannot import it, so ship them.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

# ----------------------------------------------------------------------- the policy


def test_a_get_that_ends_before_the_delay_never_reaches_the_raylet() -> None:
    lending = CpuLending()
    assert lending.get_started() is Lend.ARM
    assert lending.get_finished() is Lend.DISARM
    assert not lending.lent and not lending.armed and lending.waiting == 0


def test_a_get_blocked_past_the_delay_lends_then_reclaims() -> None:
    lending = CpuLending()
    assert lending.get_started() is Lend.ARM
    assert lending.delay_passed() is Lend.LEND
    assert lending.lent
    assert lending.get_finished() is Lend.RECLAIM
    assert not lending.lent
    # the next get starts over: its own delay before lending
    assert lending.get_started() is Lend.ARM


def test_gets_in_several_threads_lend_once_and_reclaim_after_the_last() -> None:
    lending = CpuLending()
    assert lending.get_started() is Lend.ARM
    assert lending.get_started() is None  # one timer for all
    assert lending.delay_passed() is Lend.LEND
    assert lending.get_started() is None  # already lent
    assert lending.get_finished() is None
    assert lending.get_finished() is None
    assert lending.get_finished() is Lend.RECLAIM


def test_one_get_ending_early_does_not_cancel_the_timer_of_another() -> None:
    lending = CpuLending()
    assert lending.get_started() is Lend.ARM
    assert lending.get_started() is None
    assert lending.get_finished() is None  # the other still waits: the timer stays
    assert lending.delay_passed() is Lend.LEND
    assert lending.get_finished() is Lend.RECLAIM


def test_a_timer_firing_after_the_gets_ended_lends_nothing() -> None:
    lending = CpuLending()
    lending.get_started()
    lending.get_finished()
    assert lending.delay_passed() is None
    assert not lending.lent


def test_finishing_a_get_that_never_started_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="without get_started"):
        CpuLending().get_finished()


# ------------------------------------------------------------------ the gauge (files)


def _gauge(path: str, name: str, delta: int) -> None:
    """Enter (+1) or leave (-1) the gauge at ``path``; an entry records who was inside."""
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state: dict[str, Any] = {"inside": [], "entries": []}
        if os.path.exists(path):
            with open(path) as f:
                state = json.load(f)
        if delta > 0:
            state["entries"].append([name, list(state["inside"])])
            state["inside"].append(name)
        else:
            state["inside"].remove(name)
        with open(path + ".tmp", "w") as f:
            json.dump(state, f)
        os.replace(path + ".tmp", path)


def _gauge_state(path: str) -> dict[str, Any]:
    if not os.path.exists(path):
        return {"inside": [], "entries": []}
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)
        with open(path) as f:
            return dict(json.load(f))


def _peak(path: str) -> int:
    return 1 + max(len(inside) for _, inside in _gauge_state(path)["entries"])


def _done_beyond(where: Path, released: frozenset[str], n: int) -> set[str]:
    """The tasks that marked themselves done and are not released yet, once ``n`` did."""
    done = {p.name.removeprefix("done-") for p in where.glob("done-*")} - released
    return done if len(done) >= n else set()


def _entered(path: str, name: str) -> list[list[str]]:
    """Who was inside each time ``name`` entered."""
    return [inside for who, inside in _gauge_state(path)["entries"] if who == name]


def _start_workers(n: int, where: Path) -> None:
    """Have ``n`` workers up (n tasks of 1 CPU that wait for each other), so a task
    the raylet grants starts at once, not after a worker's start-up."""

    @ray.remote(num_cpus=1)
    def arrive(i: int) -> None:
        (where / f"arrived-{i}").touch()
        deadline = time.monotonic() + GET_TIMEOUT
        while len(list(where.glob("arrived-*"))) < n and time.monotonic() < deadline:
            time.sleep(0.01)

    ray.get([arrive.remote(i) for i in range(n)], timeout=GET_TIMEOUT)


def _raylet_state() -> dict[str, Any]:
    """The local raylet's ``get_state``: its leases, queued requests, free resources."""
    from aioray._private.owner import worker_context

    cw = worker_context.core_worker
    assert cw is not None
    state: dict[str, Any] = cw.run_sync(cw.raylet.call("get_state"), timeout=GET_TIMEOUT)
    return state


def _wait_until(path: str) -> None:
    deadline = time.monotonic() + GET_TIMEOUT
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)


# ----------------------------------------------------------------------- end to end


def _start_4_cpus(monkeypatch: pytest.MonkeyPatch, lend_after_s: float) -> Iterator[Any]:
    # The daemons and the workers they fork read the environment when they start.
    monkeypatch.setenv("AIORAY_LEND_CPUS_AFTER_S", str(lend_after_s))
    ctx = ray.init(num_cpus=4)
    try:
        yield ctx
    finally:
        _shutdown_and_check_ports(ctx)


@pytest.fixture
def lend_late(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """4 CPUs; a get lends only after 60 s, so every get here counts as quick
    however loaded the machine is."""
    yield from _start_4_cpus(monkeypatch, 60.0)


@pytest.fixture
def lend_soon(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """4 CPUs; a get lends after 50 ms."""
    yield from _start_4_cpus(monkeypatch, 0.05)


@ray.remote(num_cpus=0)
class Echo:
    def quick(self, x: int) -> int:
        return x


@ray.remote(num_cpus=0)
class Gate:
    """Holds its callers in ``wait`` until ``open``: a get that stays blocked."""

    def __init__(self) -> None:
        import asyncio

        self.opened = asyncio.Event()

    async def wait(self) -> bool:
        await self.opened.wait()
        return True

    async def open(self) -> None:
        self.opened.set()


@pytest.mark.parametrize(("cpus_each", "tasks", "most"), [(2, 4, 2), (4, 3, 1)])
def test_quick_gets_inside_tasks_do_not_let_more_tasks_run(
    lend_late: Any, tmp_path: Path, cpus_each: int, tasks: int, most: int
) -> None:
    """Ray runs 4 tasks of 2 CPUs on 4 CPUs 2 at a time, and 3 of 4 CPUs one at a
    time, though each calls get on a quick actor method (issue 14, item 3). Each task
    stays (inside the gauge) until this test has seen a whole wave done with its gets."""
    gauge = str(tmp_path / "gauge")
    echo = Echo.remote()
    _start_workers(4, tmp_path)

    @ray.remote(num_cpus=cpus_each)
    def task(i: int) -> tuple[float, int]:
        from aioray._private.wire import config

        _gauge(gauge, f"t{i}", +1)
        for k in range(5):
            assert ray.get(echo.quick.remote(k)) == k
        # Answered over the connection a lending would have gone over: the raylet has
        # seen any by now (and would have granted the CPUs to a waiting task).
        lendings = int(_raylet_state()["lendings"])
        (tmp_path / f"done-{i}").touch()
        _wait_until(str(tmp_path / f"go-{i}"))
        _gauge(gauge, f"t{i}", -1)
        return config.LEND_CPUS_AFTER_S, lendings

    refs = [task.remote(i) for i in range(tasks)]
    released: set[str] = set()
    while len(released) < tasks:
        wave = min(most, tasks - len(released))
        done_now = partial(_done_beyond, tmp_path, frozenset(released), wave)
        done = wait_for_condition(done_now, GET_TIMEOUT, message="a wave never ran")
        inside = {name.removeprefix("t") for name in _gauge_state(gauge)["inside"]}
        assert inside == done, _gauge_state(gauge)["entries"]  # none besides this wave
        for i in done:
            (tmp_path / f"go-{i}").touch()
        released |= done
    assert ray.get(refs, timeout=GET_TIMEOUT) == [(60.0, 0)] * tasks
    assert _peak(gauge) == most, _gauge_state(gauge)["entries"]


def test_a_long_get_lends_and_the_resumed_task_counts_again(lend_soon: Any, tmp_path: Path) -> None:
    """A blocks in get until the driver opens a gate: after the delay B, which needs
    all 4 CPUs, runs on A's. When A resumes beside B (overcommitted for a moment, as
    in Ray), C gets no lease until both are done. (C asks for 3 CPUs: a task of A's
    shape would run on A's lease, which its owner keeps for the next task of the
    same scheduling class, as Ray's owners do.)"""
    gauge, release_a, release_b = (str(tmp_path / n) for n in ("gauge", "a", "b"))
    gate = Gate.remote()

    @ray.remote(num_cpus=4)
    def a() -> None:
        _gauge(gauge, "A", +1)
        _gauge(gauge, "A", -1)  # out of the gauge while blocked
        assert ray.get(gate.wait.remote())
        _gauge(gauge, "A", +1)
        _wait_until(release_a)
        _gauge(gauge, "A", -1)

    @ray.remote(num_cpus=4)
    def b() -> None:
        _gauge(gauge, "B", +1)
        _wait_until(release_b)
        _gauge(gauge, "B", -1)

    @ray.remote(num_cpus=3)
    def c() -> None:
        _gauge(gauge, "C", +1)
        _gauge(gauge, "C", -1)

    ref_a = a.remote()
    wait_for_condition(lambda: _entered(gauge, "A"), GET_TIMEOUT, message="A never ran")
    ref_b = b.remote()
    wait_for_condition(lambda: _entered(gauge, "B"), GET_TIMEOUT, message="A never lent")
    ref_c = c.remote()
    ray.get(gate.open.remote(), timeout=GET_TIMEOUT)
    wait_for_condition(lambda: len(_entered(gauge, "A")) == 2, GET_TIMEOUT)
    leases = _raylet_state()["leases"]  # A's, B's, the gate's; C waits for CPUs
    Path(release_a).touch()
    ray.get(ref_a, timeout=GET_TIMEOUT)

    # A's owner returns its lease (after keeping it idle a moment); the raylet grants C
    # then if A's CPUs come back on top of B's 4, i.e. if the resumed A was not counted.
    def a_returned() -> dict[str, Any] | None:
        now = _raylet_state()
        return now if now["leases"] < leases or _entered(gauge, "C") else None

    state = wait_for_condition(a_returned, GET_TIMEOUT, message="A's lease never went back")
    assert not _entered(gauge, "C"), "C ran beside B: the resumed A's CPUs were not counted"
    assert state["available"]["CPU"] == 0 and state["queued"] == 1, state  # C waits for B
    Path(release_b).touch()
    ray.get([ref_b, ref_c], timeout=GET_TIMEOUT)
    assert _entered(gauge, "A") == [[], ["B"]]
    assert _entered(gauge, "B") == [[]]
    assert _entered(gauge, "C") == [[]]


@ray.remote(num_cpus=1)
def tree(depth: int) -> int:
    """1 + the sizes of its subtrees: two children at the last two levels, else one."""
    if depth == 0:
        return 1
    width = 2 if depth <= 2 else 1
    return 1 + sum(ray.get([tree.remote(depth - 1) for _ in range(width)]))


def test_a_task_tree_deeper_than_the_cpus_does_not_deadlock(lend_soon: Any) -> None:
    """Every level blocks in get, longer than the delay: the CPUs go to the children."""
    assert ray.get(tree.remote(6), timeout=GET_TIMEOUT) == 4 + 7


@ray.remote(num_cpus=1)
def wait_chain(depth: int) -> int:
    """1 + its child's count, the child waited for with ray.wait first (not get)."""
    if depth == 0:
        return 1
    ready, _ = ray.wait([wait_chain.remote(depth - 1)], timeout=GET_TIMEOUT)
    assert ready, "the child never ran: the waiting parents kept their CPUs"
    return 1 + int(ray.get(ready[0]))


def test_a_task_blocked_in_wait_lends_its_cpus_too(lend_soon: Any) -> None:
    """Ray's workers lend their CPUs in a blocking ray.wait as in a get: a chain of
    waits deeper than the 4 CPUs completes."""
    assert ray.get(wait_chain.remote(6), timeout=GET_TIMEOUT) == 7
