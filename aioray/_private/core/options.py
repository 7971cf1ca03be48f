"""Validation of ``@remote`` / ``.options()`` arguments, with Ray's names and defaults.

As in Ray: a value of the wrong type is TypeError, a wrong value ValueError. The
options are the caller's values as given (``object`` until checked; ``Any`` in an
options dict, whose values are the user's: strategies, placement groups, envs).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aioray._private.core.runtime_env import check_task_level
from aioray._private.core.scheduling_strategies import (
    NodeAffinitySchedulingStrategy,
    NodeLabelSchedulingStrategy,
    PlacementGroupSchedulingStrategy,
)


def _type_error(name: str, expected: str, v: object) -> TypeError:
    return TypeError(
        f"The type of option '{name}' must be {expected}, but received {type(v).__name__} {v!r}."
    )


def _nonneg_number(name: str, v: object) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _type_error(name, "an int or a float", v)
    if v < 0:
        raise ValueError(f"The option '{name}' must be a non-negative number, got {v!r}.")


def _num_returns(name: str, v: object) -> None:
    if v == "streaming" or v == "dynamic":
        return
    if isinstance(v, bool) or not isinstance(v, int):
        raise _type_error(name, "a non-negative int, 'streaming' or 'dynamic'", v)
    if v < 0:
        raise ValueError(f"The option '{name}' must be a non-negative integer, got {v!r}.")


def _int_min(lo: int) -> Callable[[str, object], None]:
    def check(name: str, v: object) -> None:
        if isinstance(v, bool) or not isinstance(v, int):
            raise _type_error(name, "an int", v)
        if v < lo:
            raise ValueError(f"The option '{name}' must be an integer >= {lo}, got {v!r}.")

    return check


def check_resources(name: str, v: object) -> None:
    """``resources``: a dict of custom resource names to non-negative amounts."""
    if not isinstance(v, dict):
        raise _type_error(name, "a dict", v)
    for k, amount in v.items():
        if not isinstance(k, str):
            raise TypeError(f"Resource names must be strings, got {k!r}.")
        if k in ("CPU", "GPU", "memory"):
            raise ValueError(
                f"Use the '{k.lower() if k != 'memory' else 'memory'}' option, "
                f"not resources={{'{k}': ...}}."
            )
        _nonneg_number(f"{name}[{k!r}]", amount)


def _retry_exceptions(name: str, v: object) -> None:
    if isinstance(v, bool):
        return
    if not isinstance(v, (list, tuple)):
        raise _type_error(name, "a bool or a list of exception types", v)
    if not all(isinstance(t, type) and issubclass(t, BaseException) for t in v):
        raise ValueError(
            f"The option '{name}' must be a bool or a list of exception types, got {v!r}."
        )


def _runtime_env(name: str, v: object) -> None:
    if v is None:
        return
    if not isinstance(v, dict):
        raise _type_error(name, "a dict", v)
    check_task_level(v)


def _strategy(name: str, v: object) -> None:
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
    if isinstance(v, str):
        raise ValueError(f"Invalid scheduling_strategy {v!r}: use 'DEFAULT' or 'SPREAD'.")
    raise _type_error(name, "None, a str or a SchedulingStrategy", v)


def _anything(name: str, v: object) -> None:
    return None


def _optional_str(name: str, v: object) -> None:
    if v is not None and not isinstance(v, str):
        raise _type_error(name, "a str", v)


_COMMON: dict[str, Callable[[str, object], None]] = {
    "num_cpus": _nonneg_number,
    "num_gpus": _nonneg_number,
    "resources": check_resources,
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

TASK_OPTIONS: dict[str, Callable[[str, object], None]] = {
    **_COMMON,
    "num_returns": _num_returns,
    "max_retries": _int_min(-1),
    "retry_exceptions": _retry_exceptions,
    "max_calls": _int_min(0),
    "_generator_backpressure_num_objects": _anything,
}

ACTOR_OPTIONS: dict[str, Callable[[str, object], None]] = {
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


def validate(options: dict[str, Any], allowed: dict[str, Callable[[str, object], None]]) -> None:
    """Raise naming the first unknown or invalid option, with Ray's exception types: an
    unknown option or a wrong value is ValueError, a value of the wrong type TypeError."""
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
