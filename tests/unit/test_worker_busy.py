"""Whether a task worker is busy (daemons/worker.py, ``TaskExecutor.handle_is_busy``): the
raylet asks when the owner of the worker's lease died, and ends a busy worker. A task whose
arguments are still fetched from their owners counts, as one queued or running does."""

from __future__ import annotations

import asyncio
import queue
from typing import Any

from aioray.daemons.actor_host import Job
from aioray.daemons.worker import TaskExecutor
from fakes import settle

from aioray._private.wire.task_spec import DEP_OWNER


class Executor:
    """The part of TaskExecutor that ``handle_push_task`` and ``handle_is_busy`` use (they
    are called unbound on this, ``busy`` is its own); the fetch of arguments waits for
    the test."""

    def __init__(self) -> None:
        self.cw = self
        self.loop = asyncio.get_running_loop()
        self.fn_bytes: dict[bytes, bytes] = {}
        self.current: bytes | None = None
        self.queued: dict[bytes, Job] = {}
        self.fetching = 0
        self.queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self.fetched = asyncio.Event()

    async def fetch_deps(self, job: Job, deps: list[Any]) -> None:
        await self.fetched.wait()

    def _fetch_then_run(self, job: Job, deps: list[Any]) -> Any:
        return TaskExecutor._fetch_then_run(self, job, deps)  # type: ignore[arg-type]

    def enqueue(self, job: Job) -> None:
        TaskExecutor.enqueue(self, job)  # type: ignore[arg-type]

    busy = TaskExecutor.busy

    def is_busy(self) -> bool:
        return TaskExecutor.handle_is_busy(self, None, None, [])  # type: ignore[arg-type]


async def test_a_task_fetching_its_arguments_keeps_its_worker_busy() -> None:
    ex = Executor()
    assert not ex.is_busy()
    spec: Any = {"tid": b"t" * 16, "fid": b"f" * 16, "d": [[DEP_OWNER, b"o" * 28, None]]}
    TaskExecutor.handle_push_task(ex, None, spec, [])  # type: ignore[arg-type]
    assert ex.is_busy()  # at once: before the fetch has even started
    await settle()
    assert ex.is_busy() and not ex.queued  # its arguments are still on their way
    ex.fetched.set()
    await settle()
    assert list(ex.queued) == [b"t" * 16] and ex.fetching == 0
    assert ex.is_busy()  # queued now, for the execution thread
