"""Ray's ``ray.runtime_env``: ``RuntimeEnv`` and ``RuntimeEnvConfig``.

The logic lives in ``aioray._private.core.runtime_env``; packaging in
``aioray._private.node.runtime_env_packaging``."""

from __future__ import annotations

from aioray._private.core.runtime_env import RuntimeEnv, RuntimeEnvConfig

__all__ = ["RuntimeEnv", "RuntimeEnvConfig"]
