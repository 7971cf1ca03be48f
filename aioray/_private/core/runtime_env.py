"""Runtime environments as in Ray: ``RuntimeEnv``, ``RuntimeEnvConfig``, validation, merging.

Pure logic, no I/O beyond reading a requirements file. A user's runtime env is
validated at submission (``normalize``); at job level its local ``working_dir`` and
``py_modules`` are then packaged and uploaded (runtime_env_packaging.py), so what a
task spec carries (the *wire form*) names packages only by ``gcs://`` URI. Raylets
prepare the wire form on their node (daemons/raylet/runtime_env_agent.py). An env's
field values are the user's (each plugin its own shape: ``Any``), checked here.
"""

from __future__ import annotations

import json
import os
import types
from collections.abc import Mapping
from typing import Any

__all__ = ["RuntimeEnv", "RuntimeEnvConfig"]

URI_SCHEME = "gcs://"
FIELDS = ("env_vars", "working_dir", "py_modules", "pip", "uv", "config", "excludes")
UNSUPPORTED = ("conda", "container", "image_uri", "mpi", "nsight", "java_jars")
CONFIG_FIELDS = ("setup_timeout_seconds", "eager_install")
DEFAULT_SETUP_TIMEOUT_S = 600
# Ray's variable: a submitted job's supervisor puts the job's config (its runtime_env)
# in the entrypoint's environment, for the job's driver to run in.
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


class RuntimeEnvConfig(dict[str, Any]):
    """How a runtime env is set up: ``setup_timeout_seconds`` (-1: none), ``eager_install``."""

    def __init__(
        self, setup_timeout_seconds: int = DEFAULT_SETUP_TIMEOUT_S, eager_install: bool = True
    ) -> None:
        super().__init__(setup_timeout_seconds=setup_timeout_seconds, eager_install=eager_install)
        _check_config(self)

    @classmethod
    def parse_and_validate_runtime_env_config(cls, config: Any) -> RuntimeEnvConfig:
        """A ``RuntimeEnvConfig`` from ``runtime_env['config']`` (one is returned as is, a dict is
        checked); raises TypeError for other types, ValueError for an unknown field."""
        if isinstance(config, RuntimeEnvConfig):
            return config
        if not isinstance(config, Mapping):
            raise TypeError(
                f"runtime_env['config'] must be a dict or RuntimeEnvConfig, "
                f"got {type(config).__name__}."
            )
        unknown = set(config) - set(CONFIG_FIELDS)
        if unknown:
            raise ValueError(
                f"Unknown runtime_env['config'] field(s) {sorted(unknown)}; "
                f"supported: {list(CONFIG_FIELDS)}."
            )
        return cls(**config)


class RuntimeEnv(dict[str, Any]):
    """A validated runtime env (a dict, as Ray's): the fields of ``FIELDS``.

    Construction validates, so a bad field fails here with its name.
    """

    def __init__(self, *, _validate: bool = True, **fields: Any) -> None:
        fields = {k: v for k, v in fields.items() if v is not None}
        super().__init__(normalize(fields) if _validate else fields)

    def to_dict(self) -> dict[str, Any]:
        """A plain-dict copy of this runtime env's fields."""
        return dict(self)

    def serialize(self) -> str:
        """This runtime env as JSON with sorted keys (the same env always gives the same string)."""
        return json.dumps(self, sort_keys=True)

    @classmethod
    def deserialize(cls, serialized: str) -> RuntimeEnv:
        """Rebuild (and validate) a runtime env from the JSON that ``serialize`` produced."""
        return cls(**json.loads(serialized))

    def env_vars(self) -> dict[str, str]:
        """The ``env_vars`` field as a dict (empty if unset)."""
        return dict(self.get("env_vars") or {})

    def working_dir(self) -> str:
        """The ``working_dir`` field (``""`` if unset)."""
        return str(self.get("working_dir") or "")

    def py_modules(self) -> list[str]:
        """The ``py_modules`` field as a list of URIs or paths (empty if unset)."""
        return list(self.get("py_modules") or [])

    def has_working_dir(self) -> bool:
        """Whether the ``working_dir`` field is set and non-empty."""
        return bool(self.get("working_dir"))

    def has_py_modules(self) -> bool:
        """Whether the ``py_modules`` field is set and non-empty."""
        return bool(self.get("py_modules"))

    def has_pip(self) -> bool:
        """Whether the ``pip`` field is set and non-empty."""
        return bool(self.get("pip"))

    def has_uv(self) -> bool:
        """Whether the ``uv`` field is set and non-empty."""
        return bool(self.get("uv"))

    def pip_config(self) -> dict[str, Any]:
        """The ``pip`` field as a dict (empty if unset)."""
        return dict(self.get("pip") or {})

    def uv_config(self) -> dict[str, Any]:
        """The ``uv`` field as a dict (empty if unset)."""
        return dict(self.get("uv") or {})


# -- validation -------------------------------------------------------------------------------
def normalize(env: Mapping[str, Any] | None) -> dict[str, Any]:
    """Check every field of a user's runtime env; return it in canonical form.

    Local paths become absolute (they must exist); ``pip``/``uv`` become
    ``{"packages": [...], "<tool>_install_options": [...]}``. Errors name the field.
    """
    if env is None:
        return {}
    if not isinstance(env, Mapping):
        raise TypeError(f"runtime_env must be a dict, got {type(env).__name__}.")
    out: dict[str, Any] = {}
    for field, value in env.items():
        if field in UNSUPPORTED:
            raise ValueError(
                f"runtime_env field {field!r} is not supported by aioray "
                f"(supported: {', '.join(FIELDS)})."
            )
        if field not in FIELDS:
            raise ValueError(
                f"Unknown runtime_env field {field!r} (supported: {', '.join(FIELDS)})."
            )
        if value is None:
            continue
        out[field] = _CHECKS[field](value)
    if "pip" in out and "uv" in out:
        raise ValueError("runtime_env: the 'pip' and 'uv' fields cannot both be specified.")
    return out


def _env_vars(v: object) -> dict[str, str]:
    if not isinstance(v, Mapping) or not all(
        isinstance(k, str) and isinstance(x, str) for k, x in v.items()
    ):
        raise TypeError("runtime_env['env_vars'] must be a dict of str to str.")
    return dict(v)


def _path_or_uri(field: str, v: object) -> str:
    if isinstance(v, types.ModuleType):  # py_modules=[my_module]: its package directory
        path = getattr(v, "__file__", None)
        if not path:
            raise ValueError(f"runtime_env[{field!r}]: module {v.__name__} has no file.")
        return os.path.dirname(path) if path.endswith("__init__.py") else path
    if isinstance(v, os.PathLike):
        v = os.fspath(v)
    if not isinstance(v, str):
        raise TypeError(f"runtime_env[{field!r}] must be a path or URI string, got {v!r}.")
    if "://" in v:
        if not v.startswith(URI_SCHEME):
            raise ValueError(
                f"runtime_env[{field!r}]={v!r}: only local paths and {URI_SCHEME} package "
                f"URIs are supported (aioray has no remote storage)."
            )
        return v
    path = os.path.abspath(os.path.expanduser(v))
    if not os.path.exists(path):
        raise ValueError(f"runtime_env[{field!r}]: {v!r} does not exist.")
    return path


def _working_dir(v: object) -> str:
    path = _path_or_uri("working_dir", v)
    if path.startswith(URI_SCHEME) or os.path.isdir(path):
        return path
    if not path.endswith(".zip") or not _is_zip(path):
        raise ValueError(
            f"runtime_env['working_dir']: {v!r} is neither a directory nor a .zip file."
        )
    return path


def _py_modules(v: object) -> list[str]:
    if not isinstance(v, (list, tuple)):
        raise TypeError(f"runtime_env['py_modules'] must be a list, got {type(v).__name__}.")
    out = []
    for item in v:
        path = _path_or_uri("py_modules", item)
        if not (
            path.startswith(URI_SCHEME)
            or os.path.isdir(path)
            or path.endswith(".py")
            or (path.endswith((".whl", ".zip")) and _is_zip(path))
        ):
            raise ValueError(
                f"runtime_env['py_modules']: {item!r} is not a package directory, "
                f"a .py file, a wheel or a .zip."
            )
        out.append(path)
    return out


def _is_zip(path: str) -> bool:
    import zipfile

    return zipfile.is_zipfile(path)


def _string_list(field: str, v: object) -> list[str]:
    if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v):
        raise TypeError(f"runtime_env[{field!r}] must be a list of strings, got {v!r}.")
    return list(v)


def _requirements(tool: str, v: object) -> dict[str, Any]:
    """``pip``/``uv``: a list of requirements, a requirements file, or a dict with them."""
    options_key = "pip_install_options" if tool == "pip" else "uv_pip_install_options"
    if isinstance(v, str):
        return {"packages": _read_requirements(tool, v), options_key: []}
    if isinstance(v, (list, tuple)):
        return {"packages": _string_list(tool, v), options_key: []}
    if not isinstance(v, Mapping):
        raise TypeError(
            f"runtime_env[{tool!r}] must be a list of requirements, a requirements file "
            f"path or a dict, got {type(v).__name__}."
        )
    allowed = {"packages", options_key, f"{tool}_check", f"{tool}_version"}
    unknown = set(v) - allowed
    if unknown:
        raise ValueError(f"Unknown runtime_env[{tool!r}] field(s) {sorted(unknown)}.")
    if "packages" not in v:
        raise ValueError(f"runtime_env[{tool!r}] needs 'packages'.")
    packages = v["packages"]
    out: dict[str, Any] = {
        "packages": (
            _read_requirements(tool, packages)
            if isinstance(packages, str)
            else _string_list(f"{tool}.packages", packages)
        ),
        options_key: _string_list(f"{tool}.{options_key}", v.get(options_key) or []),
    }
    version = v.get(f"{tool}_version")
    if version:
        out["packages"].append(f"{tool}{version}")
    return out


def _read_requirements(tool: str, path: str) -> list[str]:
    try:
        with open(os.path.expanduser(path)) as f:
            lines = [line.strip() for line in f]
    except OSError as e:
        raise ValueError(
            f"runtime_env[{tool!r}]: cannot read requirements file {path!r}: {e}"
        ) from None
    return [line for line in lines if line and not line.startswith("#")]


def _config(v: object) -> dict[str, Any]:
    return dict(RuntimeEnvConfig.parse_and_validate_runtime_env_config(v))


def _check_config(config: Mapping[str, Any]) -> None:
    timeout = config["setup_timeout_seconds"]
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int)
        or (timeout <= 0 and timeout != -1)
    ):
        raise ValueError(
            f"runtime_env['config']['setup_timeout_seconds'] must be a positive int "
            f"or -1, got {timeout!r}."
        )
    if not isinstance(config["eager_install"], bool):
        raise TypeError("runtime_env['config']['eager_install'] must be a bool.")


_CHECKS: dict[str, Any] = {
    "env_vars": _env_vars,
    "working_dir": _working_dir,
    "py_modules": _py_modules,
    "pip": lambda v: _requirements("pip", v),
    "uv": lambda v: _requirements("uv", v),
    "config": _config,
    "excludes": lambda v: _string_list("excludes", v),
}


# -- scopes -----------------------------------------------------------------------------------
def check_task_level(env: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a task's or actor's runtime env: local packages belong to the job."""
    out = normalize(env)
    local = [
        p
        for p in [out.get("working_dir"), *out.get("py_modules", ())]
        if p and not p.startswith(URI_SCHEME)
    ]
    if local:
        raise ValueError(
            f"runtime_env for a task or actor: local working_dir/py_modules {local} are "
            f"only supported at job level (aioray.init(runtime_env=...)); pass uploaded "
            f"{URI_SCHEME} package URIs here."
        )
    out.pop("excludes", None)
    return out


def merge(parent: Mapping[str, Any] | None, child: Mapping[str, Any] | None) -> dict[str, Any]:
    """The env a child runs in: the parent's, field by field replaced by the child's,
    except ``env_vars``, merged key by key with the child's winning (Ray's rule)."""
    if not child:
        return dict(parent or {})
    if not parent:
        return dict(child)
    out = {**parent, **child}
    if "env_vars" in parent and "env_vars" in child:
        out["env_vars"] = {**parent["env_vars"], **child["env_vars"]}
    return out


def with_the_jobs_env(own: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A driver's runtime env: in a submitted job, the job's, which ``init(runtime_env=)``
    overrides field by field (Ray's merge); elsewhere ``own``."""
    text = os.environ.get(JOB_CONFIG_ENV)
    if not text:
        return dict(own) if own is not None else None
    try:
        job_env = json.loads(text).get("runtime_env") or {}
    except (ValueError, AttributeError) as e:
        raise ValueError(f"{JOB_CONFIG_ENV} is not a job config (JSON object): {e}") from None
    return merge(job_env, own)


def env_key(env: Mapping[str, Any] | None) -> str:
    """The canonical text of a wire env: workers are pooled, and envs cached, by it."""
    return json.dumps(env, sort_keys=True, separators=(",", ":")) if env else ""


def needs_setup(env: Mapping[str, Any] | None) -> bool:
    """True when a node must prepare something before a worker can start in ``env``."""
    return env is not None and any(env.get(f) for f in ("working_dir", "py_modules", "pip", "uv"))
