"""This process's CoreWorker: the one holder every module reads, and the hook that
connects on first use. A driver's or a worker's CoreWorker is set here when it starts
(object_ref.set_core_worker); the public API sets ``connect`` at import, since
connecting (``init``) starts or joins a cluster, which lives above this floor."""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aioray._private.owner.core_worker import CoreWorker

# The CoreWorker of this process (driver or worker), or None when not connected.
core_worker: CoreWorker | None = None

# Connects this process when nothing is connected yet: aioray.api sets it (to init()).
connect: Callable[[], CoreWorker] | None = None

# The spec of the async actor call running in this asyncio task (the thread-local task
# context serves the tasks that have a thread to themselves).
async_call_spec: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "aioray_async_call_spec", default=None
)

# The job's runtime_env (init(runtime_env=...)): each task's and actor's is laid over it.
job_runtime_env: dict[str, Any] = {}


def ensure_connected() -> CoreWorker:
    """The CoreWorker of this process, starting a local cluster on first use (as Ray does)."""
    cw = core_worker
    if cw is None:
        assert connect is not None, "aioray.api sets the connect hook when it is imported"
        return connect()
    return cw


def merged_env_vars(task_env: dict[str, Any] | None) -> dict[str, str]:
    """The job's env_vars with a task's or actor's own laid over them."""
    env = dict((job_runtime_env or {}).get("env_vars") or {})
    if task_env:
        env.update(task_env.get("env_vars") or {})
    return env
