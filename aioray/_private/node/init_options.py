"""``init()``'s options for the local node it starts, checked as Ray checks them: the
object store's size and spilling directory, ``_system_config``, the dashboard and
metrics ports, custom resources. Bad input raises naming the option, before anything
starts (``aioray.api.init``)."""

from __future__ import annotations

from typing import Any

from aioray._private.node import node

OBJECT_STORE_MINIMUM_MEMORY_BYTES = 75 * 1024 * 1024  # Ray's minimum


def dashboard_port(port: Any) -> int:
    """``dashboard_port``: None (Ray's default port) or a port number."""
    if port is None:
        return node.DASHBOARD_PORT
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"dashboard_port must be a port number (0-65535); got {port!r}.")
    return port


def metrics_port(port: Any) -> int:
    """``_metrics_export_port``: None (a free port) or a port number."""
    if port is None:
        return 0
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(f"_metrics_export_port must be an int, got {type(port).__name__}")
    if not 0 <= port <= 65535:
        raise ValueError(f"_metrics_export_port must be a port number (0-65535), got {port}")
    return port


def check_store_options(
    object_store_memory: Any, spilling_directory: Any, system_config: Any
) -> dict[str, Any]:
    """Check the object store's size and spilling directory; return ``_system_config``."""
    if object_store_memory is not None:
        if not isinstance(object_store_memory, int) or isinstance(object_store_memory, bool):
            raise TypeError(
                f"object_store_memory must be an int (bytes), got {object_store_memory!r}"
            )
        if object_store_memory < OBJECT_STORE_MINIMUM_MEMORY_BYTES:
            raise ValueError(
                f"Attempting to cap object store memory usage at {object_store_memory} bytes, "
                f"but the minimum allowed is {OBJECT_STORE_MINIMUM_MEMORY_BYTES} bytes."
            )
    if spilling_directory is not None and not isinstance(spilling_directory, str):
        raise TypeError(f"object_spilling_directory must be a str path, got {spilling_directory!r}")
    if system_config is None:
        return {}
    if not isinstance(system_config, dict):
        raise TypeError(f"_system_config must be a dict, got {type(system_config).__name__}")
    return system_config


def resources_check(name: str, value: Any) -> None:
    """A custom resource's name and amount, as ``options.validate`` calls it."""
    from aioray._private.core.options import check_resources

    check_resources(name, value)
