"""``get_runtime_context()``: what the calling code runs as, with Ray's names and values:
the job, node, worker, task and actor ids (hex), the task's name and resources, the
actor's name, the placement group, the node's labels and the cluster's addresses."""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aioray._private.core.runtime_env import RuntimeEnv
from aioray._private.owner import placement_groups, worker_context
from aioray._private.owner.core_worker import WORKER
from aioray._private.wire import config
from aioray._private.wire.schema import TaskSpec

if TYPE_CHECKING:
    from aioray._private.owner.core_worker import CoreWorker


class RuntimeContext:
    """What the calling code runs as (Ray's RuntimeContext)."""

    def __init__(
        self,
        cw: CoreWorker,
        runtime_env: dict[str, Any] | None = None,
        actor_handle: Callable[[], Any] | None = None,
    ) -> None:
        self._cw = cw
        self._runtime_env = runtime_env or {}
        self._actor_handle = actor_handle  # (aioray.api builds handles: it is above us)

    # -- the task or actor running now (None in a driver) -----------------------------------
    def _spec(self) -> TaskSpec | None:
        """The spec of the task running in this thread, or None."""
        ctx = self._cw.task_context.__dict__
        if ctx.get("task_id"):
            return ctx.get("spec")
        return worker_context.async_call_spec.get()  # an async actor's call, or None

    def _actor_spec(self) -> TaskSpec | None:
        if self._cw.actor_id is None:
            return None
        host = getattr(self._cw.extra_handlers.get("create_actor"), "__self__", None)
        spec: TaskSpec | None = getattr(host, "spec", None)
        return spec or {}

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
        """The current task's id (hex), or None in the driver, as in Ray."""
        spec = self._spec()
        return spec["tid"].hex() if spec else None

    def get_task_name(self) -> str | None:
        """The running task's name (``f``, or ``Cls.method``); None in a driver."""
        spec = self._spec()
        return spec.get("name") if spec else None

    def get_task_function_name(self) -> str | None:
        """The running task's function with its module (``module.f``); None in a driver."""
        spec = self._spec()
        if spec is None:
            return None
        if spec.get("m") is not None:  # an actor method: the class's module
            actor = self._actor_spec() or {}
            module: str | None = (actor.get("meta") or {}).get("module", "")
            return f"{module}.{spec['name']}" if module else spec["name"]
        executor = getattr(self._cw.extra_handlers.get("push_task"), "__self__", None)
        fn = getattr(executor, "functions", {}).get(spec.get("fid"))
        module = getattr(fn, "__module__", None)
        return f"{module}.{spec['name']}" if module else spec.get("name")

    def get_actor_id(self) -> str | None:
        """The id of the actor this worker hosts, in hexadecimal; None outside an actor."""
        aid = self._cw.actor_id
        return aid.hex() if aid else None

    def get_actor_name(self) -> str | None:
        """The actor's name: ``""`` in an unnamed actor, None outside an actor (as Ray)."""
        spec = self._actor_spec()
        return None if spec is None else spec.get("aname", "")

    @property
    def was_current_actor_reconstructed(self) -> bool:
        """True when this actor has been restarted at least once."""
        spec = self._actor_spec()
        assert spec is not None, "This method shouldn't be called inside Ray tasks."
        return bool(spec.get("restarts"))

    @property
    def current_actor(self) -> Any:
        """The handle of the actor this code runs in."""
        if self._cw.actor_id is None or self._actor_handle is None:
            raise RuntimeError("This method is only available in an actor.")
        return self._actor_handle()

    def get_assigned_resources(self) -> dict[str, float]:
        """The resources the running task or actor holds (a driver holds none)."""
        if self._cw.mode != WORKER:
            raise AssertionError(
                "This method is only available when the process is a worker. "
                f"Current mode: {self._cw.mode}"
            )
        spec = self._spec()
        if spec is not None and spec.get("m") is None:
            return dict(spec.get("res") or {"CPU": 1.0})
        return dict((self._actor_spec() or {}).get("res") or {})

    def get_accelerator_ids(self) -> dict[str, list[str]]:
        """The accelerator ids assigned to the running task or actor, by kind."""
        gpus = getattr(self._cw.task_context, "gpu_ids", None) or self._cw.actor_gpu_ids()
        return {"GPU": [str(g) for g in gpus]}

    def get_resource_ids(self) -> dict[str, list[str]]:
        """Deprecated in Ray: ``get_accelerator_ids``."""
        return self.get_accelerator_ids()

    def get_placement_group_id(self) -> str | None:
        """The id of the placement group the task or actor runs in, or None."""
        pg = placement_groups.current()
        return pg.id.hex() if pg is not None else None

    @property
    def current_placement_group_id(self) -> str | None:
        """Deprecated (warns): use ``get_placement_group_id()``, which this returns."""
        warnings.warn(
            "current_placement_group_id is deprecated. Use get_placement_group_id() instead.",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.get_placement_group_id()

    @property
    def should_capture_child_tasks_in_placement_group(self) -> bool:
        """Whether tasks started here join the current placement group."""
        ctx = self._cw.task_context.__dict__.get("pg") or placement_groups._actor_placement
        return bool(ctx and ctx[2])

    def is_canceled(self) -> bool:
        """Whether the running task has been asked to stop (``aioray.cancel``)."""
        spec = self._spec()
        if spec is None:
            raise RuntimeError("This method is only available in a task or an actor.")
        return spec["tid"] in self._cw.canceled_tasks

    # -- the node and the cluster -----------------------------------------------------------
    def get_node_labels(self) -> dict[str, str]:
        """This node's labels (``--labels`` of ``aioray start``, ``Cluster.add_node``)."""
        cw = self._cw

        async def call() -> Any:
            return await (await cw.gcs_connection()).call("get_nodes", None)

        me = cw.node_id.hex()
        for n in cw.run_sync(call(), config.DAEMON_START_TIMEOUT_S):
            if n["NodeID"] == me:
                return dict(n.get("Labels") or {})
        return {}

    @property
    def gcs_address(self) -> str:
        """The cluster's address, ``ip:port``."""
        host, port = self._cw.gcs_address or ("", 0)
        return f"{host}:{port}"

    def get_session_name(self) -> str:
        """The current Ray session's name (shared by every process of the cluster's session)."""
        return self._cw.session_id

    def get_temp_dir(self) -> str:
        """The temporary directory to use: ``$AIORAY_TMPDIR`` if set, else the system's."""
        return os.environ.get("AIORAY_TMPDIR") or tempfile.gettempdir()

    # -- the job --------------------------------------------------------------------------
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

        return json.dumps(self._runtime_env)

    def get(self) -> dict[str, Any]:
        """``{job_id, node_id, task_id}`` of the calling code, as in Ray."""
        return {"job_id": self.job_id, "node_id": self.node_id, "task_id": self.task_id}
