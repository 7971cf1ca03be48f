"""aioray: Ray Core in pure Python on asyncio. ``import aioray as ray``."""

from aioray import exceptions
from aioray.api import (
    available_resources,
    cancel,
    cluster_resources,
    get,
    get_async,
    get_gpu_ids,
    get_runtime_context,
    init,
    is_initialized,
    nodes,
    put,
    remote,
    shutdown,
    wait,
)
from aioray.object_ref import ObjectRef
from aioray.remote_function import RemoteFunction

__version__ = "0.1.0"

__all__ = [
    "ObjectRef",
    "RemoteFunction",
    "__version__",
    "available_resources",
    "cancel",
    "cluster_resources",
    "exceptions",
    "get",
    "get_async",
    "get_gpu_ids",
    "get_runtime_context",
    "init",
    "is_initialized",
    "nodes",
    "put",
    "remote",
    "shutdown",
    "wait",
]
