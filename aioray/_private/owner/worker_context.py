"""This process's CoreWorker: the one holder every module reads, and the hook that
connects on first use. A driver's or a worker's CoreWorker is set here when it starts
(object_ref.set_core_worker); the public API sets ``connect`` at import, since
connecting (``init``) starts or joins a cluster, which lives above this floor."""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aioray._private.core import runtime_env
from aioray._private.wire.schema import TaskSpec

if TYPE_CHECKING:
    from aioray._private.owner.core_worker import CoreWorker

# The CoreWorker of this process (driver or worker), or None when not connected.
core_worker: CoreWorker | None = None

# Connects this process when nothing is connected yet: aioray.api sets it (to init()).
connect: Callable[[], CoreWorker] | None = None

# The spec of the async actor call running in this asyncio task (the thread-local task
# context serves the tasks that have a thread to themselves).
async_call_spec: contextvars.ContextVar[TaskSpec | None] = contextvars.ContextVar(
    "aioray_async_call_spec", default=None
)

# In a worker hosting an async actor: the host's ``request_exit``. ``exit_actor()`` calls it
# and raises AsyncioActorExit, as Ray does; the actor exits after the call even if the
# method catches that exception. None elsewhere (exit_actor raises ActorExit there).
request_async_actor_exit: Callable[[], None] | None = None

# The runtime env tasks and actors submitted here inherit, in wire form (packages by
# URI): the job's in a driver (init(runtime_env=...)), the worker's own in a worker.
job_runtime_env: dict[str, Any] = {}


def ensure_connected() -> CoreWorker:
    """The CoreWorker of this process, starting a local cluster on first use (as Ray does)."""
    cw = core_worker
    if cw is None:
        assert connect is not None, "aioray.api sets the connect hook when it is imported"
        return connect()
    return cw


def task_runtime_env(own: dict[str, Any] | None) -> dict[str, Any] | None:
    """The wire env of a task or actor: its own options' env over the inherited one
    (Ray's merge: fields replace, env_vars merge key by key)."""
    env = runtime_env.merge(job_runtime_env, runtime_env.check_task_level(own) if own else None)
    return env or None
