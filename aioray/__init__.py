"""aioray: Ray Core in pure Python on asyncio. ``import aioray as ray``.

The public API loads in full on the first use of any of its names (PEP 562): the
daemons run as ``aioray.daemons.*`` and so import this package, but need none of it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # (the names below, as _load_api binds them at run time)
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


def __getattr__(name: str) -> Any:
    """The public API's names, loaded on first use (``ray.init`` loads them all)."""
    if name not in __all__:
        raise AttributeError(f"module 'aioray' has no attribute {name!r}")
    _load_api()
    return globals()[name]


def __dir__() -> list[str]:
    """Every public name, loaded or not."""
    return sorted({*globals(), *__all__})


def _load_api() -> None:
    """Import the public API, as an eager ``import aioray`` would, and bind its names.

    Submodules are imported as ``import aioray.x``, which binds them here: ``from aioray
    import x`` would first ask ``__getattr__`` for ``x``, and so come back here."""
    import aioray._html  # (gives ObjectRef, ActorHandle and InitContext notebook views)
    import aioray.actor
    import aioray.dag
    import aioray.exceptions
    import aioray.util  # noqa: F401  (ray.util.placement_group after `import ray`)
    from aioray._private.owner.object_ref import ObjectRef  # noqa: F401
    from aioray._private.owner.streaming import ObjectRefGenerator  # noqa: F401
    from aioray._private.wire.ids import (  # noqa: F401
        ActorID,
        JobID,
        NodeID,
        PlacementGroupID,
        TaskID,
        WorkerID,
    )
    from aioray.actor import ActorClass, ActorHandle, method  # noqa: F401
    from aioray.api import (  # noqa: F401
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
    from aioray.async_api import (  # noqa: F401
        get_async,
        init_async,
        put_async,
        shutdown_async,
        wait_async,
    )
    from aioray.remote_function import RemoteFunction  # noqa: F401
    from aioray.util.state.api import timeline  # noqa: F401

    loaded = locals()
    globals().update({name: loaded[name] for name in __all__ if name in loaded})
