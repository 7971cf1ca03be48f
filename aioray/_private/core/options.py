"""Validation of ``@remote`` / ``.options()`` arguments, with Ray's names and defaults."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aioray._private.core.scheduling_strategies import (
    NodeAffinitySchedulingStrategy,
    NodeLabelSchedulingStrategy,
    PlacementGroupSchedulingStrategy,
)


def _nonneg_number(name: str, v: Any) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
        raise ValueError(f"The option '{name}' must be a non-negative number, got {v!r}.")


def _num_returns(name: str, v: Any) -> None:
    if v == "streaming" or v == "dynamic":
        return
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"The option '{name}' must be a non-negative integer, got {v!r}.")


def _int_min(lo: int) -> Callable[[str, Any], None]:
    def check(name: str, v: Any) -> None:
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"The option '{name}' must be an integer >= {lo}, got {v!r}.")

    return check


def _resources(name: str, v: Any) -> None:
    if not isinstance(v, dict):
        raise ValueError(f"The option '{name}' must be a dict, got {type(v).__name__}.")
    for k, amount in v.items():
        if not isinstance(k, str):
            raise ValueError(f"Resource names must be strings, got {k!r}.")
        if k in ("CPU", "GPU", "memory"):
            raise ValueError(
                f"Use the '{k.lower() if k != 'memory' else 'memory'}' option, "
                f"not resources={{'{k}': ...}}."
            )
        _nonneg_number(f"{name}[{k!r}]", amount)


def _retry_exceptions(name: str, v: Any) -> None:
    if isinstance(v, bool):
        return
    if isinstance(v, (list, tuple)) and all(
        isinstance(t, type) and issubclass(t, BaseException) for t in v
    ):
        return
    raise ValueError(f"The option '{name}' must be a bool or a list of exception types, got {v!r}.")


def _runtime_env(name: str, v: Any) -> None:
    if v is None:
        return
    if not isinstance(v, dict):
        raise ValueError(f"The option '{name}' must be a dict, got {type(v).__name__}.")
    env_vars = v.get("env_vars", {})
    if not isinstance(env_vars, dict) or not all(
        isinstance(k, str) and isinstance(x, str) for k, x in env_vars.items()
    ):
        raise ValueError("runtime_env['env_vars'] must be a dict of str to str.")


def _strategy(name: str, v: Any) -> None:
    if v is None or v in ("DEFAULT", "SPREAD"):
        return
    if isinstance(
        v,
        (
            NodeAffinitySchedulingStrategy,
            NodeLabelSchedulingStrategy,
            PlacementGroupSchedulingStrategy,
        ),
    ):
        return
    raise ValueError(f"Invalid scheduling_strategy {v!r}.")


def _anything(name: str, v: Any) -> None:
    return None


def _optional_str(name: str, v: Any) -> None:
    if v is not None and not isinstance(v, str):
        raise ValueError(f"The option '{name}' must be a string, got {v!r}.")


_COMMON: dict[str, Callable[[str, Any], None]] = {
    "num_cpus": _nonneg_number,
    "num_gpus": _nonneg_number,
    "resources": _resources,
    "memory": _nonneg_number,
    "accelerator_type": _optional_str,
    "runtime_env": _runtime_env,
    "scheduling_strategy": _strategy,
    "name": _optional_str,
    "label_selector": _anything,
    "placement_group": _anything,
    "placement_group_bundle_index": _int_min(-1),
    "placement_group_capture_child_tasks": _anything,
    "enable_task_events": _anything,
    "_metadata": _anything,
}

TASK_OPTIONS: dict[str, Callable[[str, Any], None]] = {
    **_COMMON,
    "num_returns": _num_returns,
    "max_retries": _int_min(-1),
    "retry_exceptions": _retry_exceptions,
    "max_calls": _int_min(0),
    "_generator_backpressure_num_objects": _anything,
}

ACTOR_OPTIONS: dict[str, Callable[[str, Any], None]] = {
    **_COMMON,
    "max_restarts": _int_min(-1),
    "max_task_retries": _int_min(-1),
    "max_concurrency": _int_min(1),
    "concurrency_groups": _anything,
    "max_pending_calls": _int_min(-1),
    "namespace": _optional_str,
    "lifetime": _anything,
    "get_if_exists": _anything,
    "object_store_memory": _anything,
}

TASK_DEFAULTS: dict[str, Any] = {
    "num_returns": 1,
    "num_cpus": 1,
    "num_gpus": 0,
    "resources": {},
    "memory": 0,
    "max_retries": 3,
    "retry_exceptions": False,
    "runtime_env": None,
    "scheduling_strategy": None,
    "name": None,
}


def validate(options: dict[str, Any], allowed: dict[str, Callable[[str, Any], None]]) -> None:
    """Raise ValueError naming the first unknown or invalid option."""
    for key, value in options.items():
        check = allowed.get(key)
        if check is None:
            raise ValueError(
                f"Invalid option keyword '{key}'. Valid ones are: {', '.join(sorted(allowed))}."
            )
        check(key, value)


def resource_request(opts: dict[str, Any]) -> dict[str, float]:
    """The resources one task asks for, zero amounts dropped (Ray's ResourceSet)."""
    req: dict[str, float] = {}
    for key, name in (("num_cpus", "CPU"), ("num_gpus", "GPU"), ("memory", "memory")):
        amount = opts.get(key) or 0
        if amount:
            req[name] = float(amount)
    for k, amount in (opts.get("resources") or {}).items():
        if amount:
            req[k] = float(amount)
    return req
