"""aioray: Ray Core in pure Python on asyncio. ``import aioray as ray``.

The public API loads in full on the first use of any of its names (PEP 562): the
daemons run as ``aioray.daemons.*`` and so import this package, but need none of it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# ruff: noqa: F401  (the block below only names, for type checkers, what _load_api binds)
if TYPE_CHECKING:
    from aioray import (  # util: ray.util.placement_group after `import ray`
        _html,  # (gives ObjectRef, ActorHandle and InitContext their notebook views)
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

# The public names and the module each comes from: the one list (the block above only
# repeats it for type checkers, and tests/unit/test_startup_imports.py holds them equal).
# A name equal to its module's last part is that submodule itself (ray.util, ray.dag).
_PUBLIC: dict[str, str] = {
    "ActorClass": "aioray.actor",
    "ActorHandle": "aioray.actor",
    "method": "aioray.actor",
    "ActorID": "aioray._private.wire.ids",
    "JobID": "aioray._private.wire.ids",
    "NodeID": "aioray._private.wire.ids",
    "PlacementGroupID": "aioray._private.wire.ids",
    "TaskID": "aioray._private.wire.ids",
    "WorkerID": "aioray._private.wire.ids",
    "ObjectRef": "aioray._private.owner.object_ref",
    "ObjectRefGenerator": "aioray._private.owner.streaming",
    "RemoteFunction": "aioray.remote_function",
    "available_resources": "aioray.api",
    "cancel": "aioray.api",
    "cluster_resources": "aioray.api",
    "get": "aioray.api",
    "get_actor": "aioray.api",
    "get_gpu_ids": "aioray.api",
    "get_runtime_context": "aioray.api",
    "init": "aioray.api",
    "is_initialized": "aioray.api",
    "kill": "aioray.api",
    "nodes": "aioray.api",
    "put": "aioray.api",
    "remote": "aioray.api",
    "shutdown": "aioray.api",
    "wait": "aioray.api",
    "get_async": "aioray.async_api",
    "init_async": "aioray.async_api",
    "put_async": "aioray.async_api",
    "shutdown_async": "aioray.async_api",
    "wait_async": "aioray.async_api",
    "timeline": "aioray.util.state.api",
    "actor": "aioray.actor",
    "dag": "aioray.dag",
    "exceptions": "aioray.exceptions",
    "util": "aioray.util",
}

__all__ = sorted([*_PUBLIC, "__version__"])


def __getattr__(name: str) -> Any:
    """The public API's names, loaded on first use (``ray.init`` loads them all)."""
    if name not in _PUBLIC:
        raise AttributeError(f"module 'aioray' has no attribute {name!r}")
    _load_api()
    return globals()[name]


def __dir__() -> list[str]:
    """Every public name, loaded or not."""
    return sorted({*globals(), *__all__})


def _load_api() -> None:
    """Import the public API, as an eager ``import aioray`` would, and bind its names.

    Modules are imported with ``importlib``: ``from aioray import x`` would first ask
    ``__getattr__`` for ``x``, and so come back here."""
    import importlib

    importlib.import_module("aioray._html")  # (gives ObjectRef, ActorHandle... notebook views)
    bound = {}
    for name, module_name in _PUBLIC.items():
        module = importlib.import_module(module_name)
        bound[name] = module if module_name.rpartition(".")[2] == name else getattr(module, name)
    globals().update(bound)
