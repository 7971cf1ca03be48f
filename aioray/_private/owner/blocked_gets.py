"""A worker's gets and waits that block. The running task's events say so, as Ray's
do: RUNNING_IN_RAY_GET (or _WAIT) when it blocks, RUNNING again when it resumes. After
LEND_CPUS_AFTER_S of waiting in a get the worker tells its raylet it is blocked, so its
CPUs can run nested tasks; when the get ends it takes them back, on the loop, before
the caller's thread resumes. A get that ends sooner sends nothing. The policy (when to
lend, when to reclaim) is ``core.cpu_lending``. Gets that find their objects local
never come here."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from aioray._private.core.cpu_lending import CpuLending, Lend
from aioray._private.owner import object_waits, worker_context
from aioray._private.owner.task_events import (
    EXEC,
    RUNNING,
    RUNNING_IN_RAY_GET,
    RUNNING_IN_RAY_WAIT,
    STATE_NAMES,
    pack_row,
)
from aioray._private.wire import config

if TYPE_CHECKING:
    from aioray._private.core.memory_store import StoredObject
    from aioray._private.owner.interfaces import BlockedGetsHost
    from aioray._private.owner.object_ref import ObjectRef


class BlockedGets:
    def __init__(self, cw: BlockedGetsHost) -> None:
        self.cw = cw
        self.lending = CpuLending()
        self._timer: asyncio.TimerHandle | None = None

    def get(self, missing: list[ObjectRef], timeout: float | None) -> dict[bytes, StoredObject]:
        """(the task's thread) Wait for ``missing``, the running task RUNNING_IN_RAY_GET."""
        return self._blocked(self.fetch(missing), timeout, RUNNING_IN_RAY_GET)

    def wait(self, waiting: Coroutine[Any, Any, Any]) -> Any:
        """(the task's thread) Run a ``ray.wait`` that must wait, the task RUNNING_IN_RAY_WAIT;
        its CPUs are lent after a while as in a get (Ray's workers blocked in either)."""
        return self._blocked(self._lending(waiting), None, RUNNING_IN_RAY_WAIT)

    def _blocked(self, coro: Coroutine[Any, Any, Any], timeout: float | None, state: int) -> Any:
        cw = self.cw
        key = _running_task(cw)
        if key is None or cw.task_events is None:
            return cw.run_sync(coro, timeout)
        task_id, attempt = key
        events = cw.task_events
        events += pack_row(task_id, EXEC + state, attempt, time.time())
        counts = cw.task_counts
        if counts is not None:
            counts.blocked(STATE_NAMES[state])
        try:
            return cw.run_sync(coro, timeout)
        finally:
            if counts is not None:
                counts.blocked(None)
            events = cw.task_events  # (the buffer may have been swapped meanwhile)
            if events is not None:
                events += pack_row(task_id, EXEC + RUNNING, attempt, time.time())

    async def fetch(self, missing: list[ObjectRef]) -> dict[bytes, StoredObject]:
        """(loop) ``object_waits.fetch_many``, lending this worker's CPUs while it waits."""
        result: dict[bytes, StoredObject] = await self._lending(
            object_waits.fetch_many(self.cw, missing)
        )
        return result

    async def _lending(self, blocking: Coroutine[Any, Any, Any]) -> Any:
        """(loop) Await ``blocking``, lending this worker's CPUs once it waited a while."""
        if self.lending.get_started() is Lend.ARM:
            self._timer = self.cw.loop.call_later(config.LEND_CPUS_AFTER_S, self._lend)
        try:
            return await blocking
        finally:
            action = self.lending.get_finished()
            if action is Lend.RECLAIM:
                self._tell_raylet(False)
            elif action is Lend.DISARM and self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def _lend(self) -> None:
        self._timer = None
        if self.lending.delay_passed() is Lend.LEND:
            self._tell_raylet(True)

    def _tell_raylet(self, blocked: bool) -> None:
        if not self.cw.raylet.is_closed:
            self.cw.raylet.notify("worker_blocked", blocked)


def _running_task(cw: BlockedGetsHost) -> tuple[bytes, int] | None:
    """(task id, attempt) of the task or actor call this thread (or asyncio task) runs,
    if it records events."""
    ctx = cw.task_context.__dict__
    spec = ctx.get("spec") if ctx.get("task_id") else worker_context.async_call_spec.get()
    if spec is None or "noev" in spec:
        return None
    return spec["tid"], spec.get("at", 0)
