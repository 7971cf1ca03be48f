"""When a worker blocked in ``get`` lends its CPUs to its raylet: the policy, no I/O.

A task that waits for objects its own children compute would deadlock a full node if
it kept its CPUs while waiting, so a worker blocked in ``get`` hands them back
(``worker_blocked True``) and takes them again when it resumes (``worker_blocked
False``); Ray does the same. But every lending lets the raylet grant another lease at
once, and a get that ends quickly (an actor call answering in a millisecond) would
then leave that new task running beside the resumed one: more work than the node's
CPUs. So the CPUs are lent only once a get has stayed blocked for
``config.LEND_CPUS_AFTER_S``; shorter waits never reach the raylet at all.

``CpuLending`` decides; the CoreWorker (its loop thread) performs the decisions: it
arms and cancels the timer, and sends the two notices.
"""

from __future__ import annotations

from enum import Enum


class Lend(Enum):
    """What the CoreWorker does after an event (``None``: nothing)."""

    ARM = "arm"  # start the timer: call delay_passed() after LEND_CPUS_AFTER_S
    DISARM = "disarm"  # cancel the timer: the wait ended before it fired
    LEND = "lend"  # tell the raylet the worker is blocked: it may use the CPUs
    RECLAIM = "reclaim"  # tell the raylet the worker runs again: count its CPUs again


class CpuLending:
    """Gets this worker is blocked in (from any of its threads), and whether its CPUs
    are lent. One timer at most: armed when the first get starts waiting, cancelled
    when the last one ends before it fires."""

    __slots__ = ("armed", "lent", "waiting")

    def __init__(self) -> None:
        self.waiting = 0  # gets blocked now
        self.armed = False  # the timer runs
        self.lent = False  # the raylet was told: blocked

    def __repr__(self) -> str:
        return f"<CpuLending waiting={self.waiting} armed={self.armed} lent={self.lent}>"

    def get_started(self) -> Lend | None:
        """A get found objects missing and starts waiting for them."""
        self.waiting += 1
        if self.waiting > 1 or self.lent or self.armed:
            return None
        self.armed = True
        return Lend.ARM

    def get_finished(self) -> Lend | None:
        """A get stopped waiting (its objects arrived, it timed out or failed)."""
        if self.waiting == 0:
            raise RuntimeError("get_finished without get_started")
        self.waiting -= 1
        if self.waiting:
            return None
        if self.lent:
            self.lent = False
            return Lend.RECLAIM
        if self.armed:
            self.armed = False
            return Lend.DISARM
        return None

    def delay_passed(self) -> Lend | None:
        """The timer fired: lend the CPUs if a get is still waiting."""
        self.armed = False
        if self.waiting == 0 or self.lent:
            return None
        self.lent = True
        return Lend.LEND
