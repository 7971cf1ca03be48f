"""``aioray.util.joblib``: joblib's ``"ray"`` backend (Ray's path), running joblib's
batches on an actor Pool. ``register_ray()``, then ``joblib.parallel_backend("ray")``."""

from __future__ import annotations

from typing import Any


def register_ray() -> None:
    """Register the ``"ray"`` backend with joblib (needs the ``[joblib]`` extra)."""
    try:
        from joblib.parallel import register_parallel_backend
    except ImportError:
        raise ImportError(
            "To use the ray backend you must install joblib: pip install 'aioray[joblib]'"
        ) from None
    from aioray.util.joblib.ray_backend import RayBackend

    register_parallel_backend("ray", RayBackend)


def __getattr__(name: str) -> Any:
    if name == "RayBackend":
        from aioray.util.joblib.ray_backend import RayBackend

        return RayBackend
    raise AttributeError(name)


__all__ = ["register_ray"]
