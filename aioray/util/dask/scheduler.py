"""The dask scheduler: every task of a dask graph becomes one aioray task, submitted in
dependency order with its dependencies' ObjectRefs as arguments, so intermediate values
go from worker to worker through the object store and never through the driver. Only
the requested keys are fetched (or, with ``ray_persist=True``, returned as refs)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dask
from dask._task_spec import convert_legacy_graph
from dask.core import toposort

import aioray as ray


@ray.remote
def _dask_task(node: Any, dep_keys: list[Any], *dep_values: Any) -> Any:
    """Run one dask task with its dependencies' values (aioray resolved the refs)."""
    return node(dict(zip(dep_keys, dep_values, strict=True)))


def _submit_graph(dsk: Mapping[Any, Any], ray_remote_args: dict[str, Any]) -> dict[Any, Any]:
    """Submit every task of ``dsk``; the ObjectRef of each key."""
    if not isinstance(dsk, Mapping):  # (dask >= 2025: an expression; its graph)
        dsk = dsk.__dask_graph__()
    graph = convert_legacy_graph(dsk)
    task = _dask_task.options(**ray_remote_args) if ray_remote_args else _dask_task
    refs: dict[Any, Any] = {}
    for key in toposort(graph, dependencies={k: v.dependencies for k, v in graph.items()}):
        node = graph[key]
        deps = [d for d in node.dependencies if d in graph]
        refs[key] = task.remote(node, deps, *[refs[d] for d in deps])
    return refs


def _pack(keys: Any, values: Mapping[Any, Any]) -> Any:
    """``keys``' nested list structure with each key replaced by its value."""
    if isinstance(keys, list):
        return [_pack(k, values) for k in keys]
    return values[keys]


def _flatten(keys: Any) -> list[Any]:
    if isinstance(keys, list):
        return [k for sub in keys for k in _flatten(sub)]
    return [keys]


def ray_dask_get(
    dsk: Mapping[Any, Any],
    keys: Any,
    *,
    ray_remote_args: dict[str, Any] | None = None,
    ray_persist: bool = False,
    **kwargs: Any,
) -> Any:
    """A dask scheduler: ``dask.compute(x, scheduler=ray_dask_get)``.

    ``ray_persist=True`` returns the ObjectRefs of ``keys`` instead of their values."""
    if not ray.is_initialized():
        ray.init()
    refs = _submit_graph(dsk, ray_remote_args or {})
    wanted = _flatten(keys)
    if ray_persist:
        return _pack(keys, refs)
    values = dict(zip(wanted, ray.get([refs[k] for k in wanted]), strict=True))
    return _pack(keys, values)


def enable_dask_on_ray(
    shuffle: str | None = "tasks", use_shuffle_optimization: bool | None = True
) -> Any:
    """Make ``ray_dask_get`` dask's default scheduler; returns the config (a context
    manager that restores the previous one)."""
    return dask.config.set({"scheduler": ray_dask_get, "dataframe.shuffle.method": shuffle})


def disable_dask_on_ray() -> Any:
    """Undo ``enable_dask_on_ray``: dask's own default scheduler again."""
    return dask.config.set({"scheduler": None, "dataframe.shuffle.method": None})
