"""Spin briefly before sleeping: a thread about to wait for something that usually comes
within microseconds (a sync call's reply, a worker's next task) polls for it first, so
that its CPU does not go idle in between (#21).

Why: an idle CPU halts, and waking it again is slow. On this project's virtual machines
(KVM, guest halt-polling off) a hop into a process whose CPU halted costs ~30 µs more
than into one whose CPU was still running (benchmarks/sync_floor.py --work/--spin), and a
sync round trip has two or three such hops. How long to spin adapts per waiter, as
Linux's haltpoll governor does: the budget grows when the wait ended just after it, and
shrinks when the wait was long, so a thread that waits for slow things soon stops
spinning. Each turn of the spin yields the CPU (and the GIL) to anything runnable.
"""

from __future__ import annotations

import os
import queue
from collections.abc import Callable
from time import perf_counter
from typing import Generic, TypeVar

from aioray._private.wire.config import SPIN_WAIT_S

GROW_START_S = 25e-6  # the budget's first step up from none (and its smallest non-zero)
T = TypeVar("T")


class SpinBudget:
    """How long one waiter spins before it sleeps: between 0 and ``limit`` seconds."""

    __slots__ = ("limit", "now")

    def __init__(self, limit: float = SPIN_WAIT_S) -> None:
        self.limit = limit
        self.now = limit  # start by spinning: the first waits say whether it pays

    def waited(self, seconds: float) -> None:
        """A wait that spun ``self.now`` ended after ``seconds``: adapt the budget."""
        now = self.now
        if seconds <= now:
            return  # the spin caught it
        if seconds <= self.limit:  # a longer spin would have caught it
            self.now = min(self.limit, max(now * 2.0, GROW_START_S))
        else:  # too long to spin for: spinning was wasted
            now *= 0.5
            self.now = now if now >= GROW_START_S else 0.0


def spin(ready: Callable[[], object], seconds: float) -> bool:
    """Call ``ready`` until it returns something true or ``seconds`` pass, yielding the
    CPU and the GIL between calls. True if it became ready."""
    end = perf_counter() + seconds
    while not ready():
        if perf_counter() >= end:
            return False
        os.sched_yield()
    return True


class QueueSpin(Generic[T]):
    """Take a queue's next item, spinning first while it is empty (a worker's execution
    thread between tasks: its next task, if it comes soon, finds this CPU running)."""

    __slots__ = ("budget", "items")

    def __init__(self, items: queue.SimpleQueue[T], budget: SpinBudget | None = None) -> None:
        self.items = items
        self.budget = budget if budget is not None else SpinBudget()

    def get(self) -> T:
        """The next item, waited for as long as it takes."""
        items = self.items
        if items.qsize():
            return items.get()
        budget = self.budget
        start = perf_counter()
        if budget.now:
            spin(items.qsize, budget.now)
        item = items.get()
        budget.waited(perf_counter() - start)  # (also when it did not spin: it may grow)
        return item
