"""aioray: Ray Core in pure Python on asyncio. ``import aioray as ray``."""

from aioray import (  # util: ray.util.placement_group after `import ray`
    _html,  # noqa: F401  (gives ObjectRef, ActorHandle and InitContext their notebook views)
    actor,
    dag,
    exceptions,
    util,
)
from aioray._private.owner.object_ref import ObjectRef
from aioray._private.owner.streaming import ObjectRefGenerator
from aioray._private.wire.ids import ActorID, JobID, NodeID, PlacementGroupID, TaskID, WorkerID
from aioray.actor import ActorClass, ActorHandle, method
from aioray.api import (
    available_resources,
    cancel,
    cluster_resources,
    get,
    get_actor,
    get_gpu_ids,
    get_runtime_context,
    init,
    is_initialized,
    kill,
    nodes,
    put,
    remote,
    shutdown,
    wait,
)
from aioray.async_api import get_async, init_async, put_async, shutdown_async, wait_async
from aioray.remote_function import RemoteFunction
from aioray.util.state.api import timeline

__version__ = "0.1.0"

__all__ = [
    "ActorClass",
    "ActorHandle",
    "ActorID",
    "JobID",
    "NodeID",
    "ObjectRef",
    "ObjectRefGenerator",
    "PlacementGroupID",
    "RemoteFunction",
    "TaskID",
    "WorkerID",
    "__version__",
    "actor",
    "available_resources",
    "cancel",
    "cluster_resources",
    "dag",
    "exceptions",
    "get",
    "get_actor",
    "get_async",
    "get_gpu_ids",
    "get_runtime_context",
    "init",
    "init_async",
    "is_initialized",
    "kill",
    "method",
    "nodes",
    "put",
    "put_async",
    "remote",
    "shutdown",
    "shutdown_async",
    "timeline",
    "util",
    "wait",
    "wait_async",
]
