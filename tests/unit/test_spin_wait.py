"""Spinning before sleeping (rpc/spin_wait.py): the budget's policy (kept when the spin
caught the wait, grown when a longer spin would have, shrunk to none when waits are
long, grown again from none), ``spin`` itself, a queue's spinning ``get``, and the
setting's clear error. Every wait is bounded."""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time

import pytest

from aioray._private.rpc.spin_wait import GROW_START_S, QueueSpin, SpinBudget, spin
from aioray._private.wire import config

LIMIT = 200e-6


def test_a_wait_the_spin_caught_keeps_the_budget() -> None:
    budget = SpinBudget(LIMIT)
    assert budget.now == LIMIT  # a waiter starts by spinning
    budget.waited(50e-6)
    assert budget.now == LIMIT


def test_long_waits_shrink_the_budget_to_none() -> None:
    budget = SpinBudget(LIMIT)
    seen = []
    for _ in range(6):
        budget.waited(0.01)  # far longer than any spin: spinning was wasted
        seen.append(budget.now)
    assert seen == [100e-6, 50e-6, 25e-6, 0.0, 0.0, 0.0]


def test_a_wait_just_past_the_budget_grows_it_back_from_none() -> None:
    budget = SpinBudget(LIMIT)
    budget.now = 0.0
    seen = []
    for _ in range(5):
        budget.waited(150e-6)  # within the limit: a longer spin would have caught it
        seen.append(budget.now)
    assert seen == [GROW_START_S, 50e-6, 100e-6, LIMIT, LIMIT]


def test_a_limit_of_zero_never_spins() -> None:
    budget = SpinBudget(0.0)
    for seconds in (0.0, 1e-6, 0.01):
        budget.waited(seconds)
        assert budget.now == 0.0


def test_spin_returns_as_soon_as_ready_or_after_its_time() -> None:
    calls = []

    def third_time() -> bool:
        calls.append(1)
        return len(calls) == 3

    assert spin(third_time, 10.0)  # (ten seconds allowed: returns at the third call)
    assert len(calls) == 3
    start = time.perf_counter()
    assert not spin(lambda: False, 0.002)
    assert 0.002 <= time.perf_counter() - start < 1.0


def test_a_queue_spin_returns_an_item_put_while_it_spins() -> None:
    items: queue.SimpleQueue[int] = queue.SimpleQueue()
    getter = QueueSpin(items, SpinBudget(10.0))  # spins up to 10 s: the put ends it
    got: list[int] = []
    thread = threading.Thread(target=lambda: got.append(getter.get()))
    thread.start()
    items.put(7)
    thread.join(5.0)
    assert got == [7]
    assert getter.budget.now == 10.0  # caught by the spin


def test_a_queue_spin_sleeps_once_its_budget_is_spent() -> None:
    """A thread idle for long spins its budget once, then sleeps: it burns no CPU."""
    items: queue.SimpleQueue[int] = queue.SimpleQueue()
    getter = QueueSpin(items, SpinBudget(0.001))
    cpu: list[float] = []

    def get() -> None:
        start = time.thread_time()
        getter.get()
        cpu.append(time.thread_time() - start)

    thread = threading.Thread(target=get)
    thread.start()
    time.sleep(0.3)  # (the window measured: idle for 300 times its budget)
    items.put(1)
    thread.join(5.0)
    assert cpu and cpu[0] < 0.1
    assert getter.budget.now == 0.0005  # the long wait halved it


def test_an_item_already_queued_is_taken_without_spinning() -> None:
    items: queue.SimpleQueue[int] = queue.SimpleQueue()
    items.put(1)
    budget = SpinBudget(LIMIT)
    budget.now = 0.0
    assert QueueSpin(items, budget).get() == 1
    assert budget.now == 0.0  # no wait: nothing learned


@pytest.mark.parametrize("raw", ["lots", "-1", "2e6", "nan"])
def test_a_malformed_setting_is_refused_naming_it(
    raw: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIORAY_SPIN_WAIT_US", raw)
    with pytest.raises(ValueError, match=rf"AIORAY_SPIN_WAIT_US must be .* got {raw!r}"):
        config._spin_wait_s()


def test_the_setting_is_read_in_microseconds() -> None:
    code = "from aioray._private.wire import config; print(config.SPIN_WAIT_S)"
    env = {"AIORAY_SPIN_WAIT_US": "50", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) == 50e-6


def test_a_queue_spin_that_stopped_spinning_learns_to_again() -> None:
    """A waiter whose budget fell to none still measures its waits: short ones grow it."""
    items: queue.SimpleQueue[int] = queue.SimpleQueue()
    budget = SpinBudget(10.0)
    budget.now = 0.0
    getter = QueueSpin(items, budget)
    thread = threading.Thread(target=getter.get)
    thread.start()
    items.put(1)  # (within ten seconds: a spin that long would have caught it)
    thread.join(5.0)
    assert budget.now == GROW_START_S
