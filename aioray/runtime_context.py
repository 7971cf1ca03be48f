"""``get_runtime_context()``: ids of the current job, task, node and worker."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aioray._private.core.runtime_env import RuntimeEnv

if TYPE_CHECKING:
    from aioray._private.owner.core_worker import CoreWorker


class RuntimeContext:
    """What the calling code runs as (Ray's RuntimeContext)."""

    def __init__(self, cw: CoreWorker, runtime_env: dict[str, Any] | None = None) -> None:
        self._cw = cw
        self._runtime_env = runtime_env or {}

    def get_job_id(self) -> str:
        """The current job's id in hexadecimal."""
        return self._cw.job_id.hex()

    def get_node_id(self) -> str:
        """The id of the node this code runs on, in hexadecimal."""
        return self._cw.node_id.hex()

    def get_worker_id(self) -> str:
        """The id of this worker (or driver) process, in hexadecimal."""
        return self._cw.worker_id.hex()

    def get_task_id(self) -> str | None:
        """The id of the task running in this thread, in hexadecimal; None in a driver."""
        tid = getattr(self._cw.task_context, "task_id", None)
        return tid.hex() if tid else None

    def get_actor_id(self) -> str | None:
        """The id of the actor this worker hosts, in hexadecimal; None outside an actor."""
        aid = self._cw.actor_id
        return aid.hex() if aid else None

    @property
    def actor_id(self) -> str | None:
        """The same as ``get_actor_id()``."""
        return self.get_actor_id()

    @property
    def job_id(self) -> str:
        """The same as ``get_job_id()``."""
        return self.get_job_id()

    @property
    def node_id(self) -> str:
        """The same as ``get_node_id()``."""
        return self.get_node_id()

    @property
    def task_id(self) -> str | None:
        """The same as ``get_task_id()``."""
        return self.get_task_id()

    @property
    def worker_id(self) -> str:
        """The same as ``get_worker_id()``."""
        return self.get_worker_id()

    @property
    def namespace(self) -> str:
        """The namespace this job's named actors and placement groups live in."""
        return self._cw.namespace

    @property
    def runtime_env(self) -> RuntimeEnv:
        """The env this code runs in (packages named by their ``gcs://`` URIs), as Ray's."""
        return RuntimeEnv(_validate=False, **self._runtime_env)

    def get_runtime_env_string(self) -> str:
        """The runtime environment as a JSON string."""
        import json

        return json.dumps(self._runtime_env)

    def get(self) -> dict[str, Any]:
        """``{job_id, node_id, task_id}`` of the calling code, as in Ray."""
        return {"job_id": self.job_id, "node_id": self.node_id, "task_id": self.task_id}
