"""The public API (Ray's names): one sync facade over the CoreWorker's async core.

``init`` starts or joins a cluster and starts this process's CoreWorker on a
background loop; every other call goes through it. Calls that can be answered
from this process (a ready value, a put) never cross threads.
"""

from __future__ import annotations

import asyncio
import atexit
import inspect
import numbers
import os
import sys
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from aioray._private.core import runtime_env as _runtime_env
from aioray._private.node import node, runtime_env_packaging
from aioray._private.node.init_options import (
    check_store_options,
    dashboard_port,
    metrics_port,
    resources_check,
)
from aioray._private.owner import object_waits, worker_context
from aioray._private.owner.core_worker import DRIVER, CoreWorker
from aioray._private.owner.object_ref import ObjectRef, set_core_worker
from aioray._private.owner.worker_context import ensure_connected
from aioray._private.wire import auth
from aioray.gcs_calls import available_resources as available_resources
from aioray.gcs_calls import cluster_resources as cluster_resources
from aioray.gcs_calls import gcs_call
from aioray.gcs_calls import get_actor as get_actor
from aioray.gcs_calls import kill as kill
from aioray.gcs_calls import list_named_actors as list_named_actors
from aioray.gcs_calls import nodes as nodes
from aioray.remote_function import RemoteFunction
from aioray.runtime_context import RuntimeContext

_lock = threading.RLock()
_local_node: node.LocalNode | None = None
_gcs_address = ""


class InitContext:
    """What ``init`` returns (Ray's RayContext): addresses, usable as a context manager."""

    def __init__(self, address_info: dict[str, Any]) -> None:
        self.address_info = address_info
        self.dashboard_url: str | None = address_info.get("webui_url")  # host:port, as Ray's

    def __getitem__(self, key: str) -> Any:
        return self.address_info[key]

    def __enter__(self) -> InitContext:
        return self

    def __exit__(self, *exc: object) -> None:
        shutdown()

    def disconnect(self) -> None:
        shutdown()

    def __repr__(self) -> str:
        return f"InitContext(gcs_address={self.address_info.get('gcs_address')!r})"

    # (_repr_html_, the notebook view, is set by aioray._html, which renders above this module)


def is_initialized() -> bool:
    """True while this process is connected to a cluster."""
    return driver() is not None


def driver() -> CoreWorker | None:
    """This process's CoreWorker if this process is a driver (init() started it)."""
    cw = worker_context.core_worker
    return cw if cw is not None and cw.mode == DRIVER else None


def connected_gcs_address() -> str:
    """The GCS address ("host:port") ``init()`` connected this driver to; "" if none."""
    return _gcs_address


def init(
    address: str | None = None,
    *,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    resources: dict[str, float] | None = None,
    object_store_memory: int | None = None,
    object_spilling_directory: str | None = None,
    namespace: str | None = None,
    ignore_reinit_error: bool = False,
    runtime_env: dict[str, Any] | None = None,
    include_dashboard: bool | None = None,
    log_to_driver: bool = True,
    logging_level: Any = None,
    configure_logging: bool = True,
    _node_ip_address: str = "127.0.0.1",
    local_mode: bool = False,
    **kwargs: Any,
) -> InitContext:
    """Start a local cluster, or connect to one (``address="auto"`` or ``"host:port"``)."""
    global _local_node, _gcs_address
    allowed_extra = {
        "_system_config",
        "_temp_dir",
        "_metrics_export_port",
        "dashboard_host",
        "dashboard_port",
        "job_config",
    }
    unknown = set(kwargs) - allowed_extra
    if unknown:
        raise TypeError(f"init() got unexpected keyword argument(s): {', '.join(sorted(unknown))}")
    if local_mode:  # Ray's own error since 2.54 (docs/architecture.md, "Ids, `local_mode`...")
        raise RuntimeError(
            "`local_mode` is no longer supported. For interactive debugging consider using "
            "the Ray distributed debugger."
        )
    from aioray._private.core.options import validate

    # Bad fields fail here naming the field; sizes are checked before anything starts.
    runtime_env = _runtime_env.with_the_jobs_env(runtime_env)  # a submitted job's driver
    job_env, packages = runtime_env_packaging.plan_env(_runtime_env.normalize(runtime_env))
    system_config = check_store_options(
        object_store_memory, object_spilling_directory, kwargs.get("_system_config")
    )
    validate({"resources": resources or {}}, {"resources": resources_check})
    with _lock:
        if driver() is not None:
            if ignore_reinit_error:
                return InitContext(_address_info())
            raise RuntimeError(
                "Maybe you called aioray.init twice by accident? This error can be suppressed "
                "by passing in 'ignore_reinit_error=True' or by calling 'aioray.shutdown()' "
                "prior to 'aioray.init()'."
            )
        address = node.address_from_env(address)
        if address in (None, "local"):
            _local_node = node.LocalNode.start(
                num_cpus=num_cpus,
                num_gpus=num_gpus,
                resources=resources,
                object_store_memory=object_store_memory,
                object_spilling_directory=object_spilling_directory,
                system_config=system_config,
                node_ip=_node_ip_address,
                metrics_export_port=metrics_port(kwargs.get("_metrics_export_port")),
                include_dashboard=include_dashboard is not False,
                dashboard_host=kwargs.get("dashboard_host") or "127.0.0.1",
                dashboard_port=dashboard_port(kwargs.get("dashboard_port")),
            )
            if _local_node.dashboard_url:
                print(f"View the dashboard at http://{_local_node.dashboard_url}", file=sys.stderr)
            auth.set_token(_local_node.token)
            gcs_address = _local_node.gcs_address
            raylet_address = _local_node.raylet_address
        else:
            if num_cpus is not None or num_gpus is not None or resources:
                raise ValueError(
                    "When connecting to an existing cluster, num_cpus, num_gpus and resources "
                    "must not be provided."
                )
            if object_store_memory is not None or object_spilling_directory is not None:
                raise ValueError(
                    "When connecting to an existing cluster, object_store_memory and "
                    "object_spilling_directory must not be provided."
                )
            gcs_address = node.resolve_address(address)
            auth.set_token(node.token_for(gcs_address))
            raylet_address = node.find_local_raylet(gcs_address, _node_ip_address)
        cw = CoreWorker(
            DRIVER,
            _node_ip_address,
            raylet_address,
            node.split_address(gcs_address),
            namespace=namespace or "",
        )
        cw.log_to_driver = log_to_driver
        set_core_worker(cw)
        try:
            info = cw.start_in_thread()
        except BaseException:
            set_core_worker(None)
            if _local_node is not None:
                _local_node.stop()
                _local_node = None
            raise
        cw.post(cw.submitter.remote_raylets.follow_logs)  # other nodes' worker output
        _gcs_address = gcs_address
        worker_context.job_runtime_env = job_env
        _address_cache.clear()
        _address_cache.update(info)
    try:
        _start_job_env(job_env, packages)
    except BaseException:
        shutdown()
        raise
    return InitContext(_address_info())


def _start_job_env(env: dict[str, Any], packages: list[runtime_env_packaging.Package]) -> None:
    """Upload the job's packages; with ``eager_install`` every node prepares the env now."""
    uris = runtime_env_packaging.package_uris(env)
    if uris:  # pinned first: a package another job is releasing now is not lost
        gcs_call("pin_runtime_env_uris", uris)
    runtime_env_packaging.upload(packages, gcs_call)
    if _runtime_env.needs_setup(env) and (env.get("config") or {}).get("eager_install", True):
        gcs_call("prepare_runtime_env", env)


_address_cache: dict[str, Any] = {}


def _address_info() -> dict[str, Any]:
    _cw = driver()
    assert _cw is not None
    return {
        "gcs_address": _gcs_address,
        "address": _gcs_address,
        "raylet_address": f"{_cw.raylet_address[0]}:{_cw.raylet_address[1]}",
        "node_ip_address": _cw.node_ip,
        "node_id": _cw.node_id.hex(),
        "session_dir": _address_cache.get("session_dir", ""),
        "session_id": _cw.session_id,
        "metrics_export_port": _address_cache.get("metrics_export_port", 0),
        "webui_url": _dashboard_url(_address_cache.get("session_dir", "")),
    }


def _dashboard_url(session_dir: str) -> str | None:
    """The head's dashboard (host:port) if this machine's session directory names one."""
    if _local_node is not None:
        return _local_node.dashboard_url
    try:
        with open(os.path.join(session_dir, node.DASHBOARD_URL_FILE)) as f:
            return f.read().strip() or None
    except OSError:
        return None


def shutdown() -> None:
    """Disconnect; stop the daemons this process started, leaving nothing behind."""
    global _local_node
    with _lock:
        cw = driver()
        if cw is not None:
            cw.stop_thread()
            set_core_worker(None)
            from aioray._private.owner import log_monitor

            log_monitor.flush()  # print pending "[repeated Nx]" summaries
        local, _local_node = _local_node, None
        if local is not None:
            local.stop()
        auth.reset()


atexit.register(shutdown)


def _connect() -> CoreWorker:
    """worker_context.ensure_connected's first use in a driver: start a local cluster."""
    init()
    cw = driver()
    assert cw is not None
    return cw


worker_context.connect = _connect


# -- the object API ---------------------------------------------------------------------------
def check_refs(object_refs: Any, fn: str) -> tuple[list[ObjectRef], bool]:
    if isinstance(object_refs, ObjectRef):
        return [object_refs], True
    if isinstance(object_refs, (list, tuple)):
        for r in object_refs:
            if not isinstance(r, ObjectRef):
                raise TypeError(
                    f"Attempting to call `{fn}` on the value {r!r}, which is not an ObjectRef."
                )
        return list(object_refs), False
    raise TypeError(
        f"Attempting to call `{fn}` on the value {object_refs!r}, which is not an ObjectRef "
        "or a list of ObjectRefs."
    )


# get(progress=True)'s bar: aioray.util.progress, which builds on get and wait, sets it
# when it is imported (aioray imports aioray.util, which imports it).
progress_bar: Callable[..., Any] | None = None


def get(object_refs: Any, *, timeout: float | None = None, progress: bool = False) -> Any:
    """Block until the object(s) are available and return their values.

    ``progress=True`` shows a progress bar while a list of refs completes.
    """
    refs, single = check_refs(object_refs, "get")
    if timeout is not None:
        check_timeout(timeout)
    if progress:
        assert progress_bar is not None, "aioray.util.progress sets it when it is imported"
        return progress_bar(object_refs, timeout=timeout)
    _warn_if_blocking_a_loop()
    cw = ensure_connected()
    values = cw.get(refs, timeout)
    cw.wait_for_logs()
    return values[0] if single else values


_warned_blocking = False


def _warn_if_blocking_a_loop() -> None:
    global _warned_blocking
    if _warned_blocking:
        return
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return  # no loop in this thread (a script, a worker thread): nothing to block
    # Only code that is itself a coroutine should await instead. A notebook cell runs
    # while the kernel's loop runs, but a plain cell is not a coroutine: no warning.
    frame = sys._getframe(2)
    while frame is not None and frame.f_globals.get("__name__", "").startswith("aioray."):
        frame = frame.f_back  # type: ignore[assignment]
    if frame is None or not frame.f_code.co_flags & (
        inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR
    ):
        return
    _warned_blocking = True
    warnings.warn(
        "Using blocking aioray.get inside a running event loop blocks the loop until the "
        "objects are ready. Use `await object_ref` or `await aioray.get_async(refs)` instead.",
        RuntimeWarning,
        stacklevel=3,
    )


def put(value: Any, *, _owner: Any = None) -> ObjectRef:
    """Store a value in the object store; return its ObjectRef."""
    if isinstance(value, ObjectRef):
        raise TypeError("Calling 'put' on an ObjectRef is not allowed.")
    return ensure_connected().put(value)


def wait(
    object_refs: Sequence[ObjectRef],
    *,
    num_returns: int = 1,
    timeout: float | None = None,
    fetch_local: bool = True,
) -> tuple[list[ObjectRef], list[ObjectRef]]:
    """Return (ready, not_ready) once ``num_returns`` refs are ready or ``timeout`` passes."""
    refs = check_wait_args(object_refs, num_returns, timeout)
    if not refs:
        return [], []  # as Ray: an empty list is ready at once, whatever num_returns
    cw = ensure_connected()
    flags = object_waits.ready_now(cw, refs)
    if sum(flags) >= num_returns:
        ready_ids = {r.binary() for r, f in zip(refs, flags, strict=True) if f}
    else:
        waiting = object_waits.wait_async(cw, refs, num_returns, timeout, fetch_local)
        ready_ids = cw.run_sync(waiting) if cw.mode == DRIVER else cw.blocked_gets.wait(waiting)
    return split_ready(refs, ready_ids, num_returns)


def check_wait_args(object_refs: Any, num_returns: int, timeout: float | None) -> list[ObjectRef]:
    """Validate wait()'s arguments as Ray does; return the refs as a list.

    Wrong types are TypeError and wrong values ValueError, each naming the parameter."""
    if isinstance(object_refs, ObjectRef) or not isinstance(object_refs, (list, tuple)):
        raise TypeError(f"wait() expected a list of ObjectRef, got {type(object_refs).__name__}")
    refs, _ = check_refs(list(object_refs), "wait")
    if timeout is not None:
        check_timeout(timeout)
    if type(num_returns) is not int and (  # (the ABC check only for the unusual types)
        isinstance(num_returns, bool) or not isinstance(num_returns, numbers.Integral)
    ):
        raise TypeError(f"num_returns must be an int, got {type(num_returns).__name__}")
    if not refs:
        return refs
    if len({r.binary() for r in refs}) != len(refs):
        raise ValueError("Wait requires a list of unique object refs.")
    if num_returns < 1:
        raise ValueError(f"num_returns must be a positive integer, got {num_returns!r}")
    if num_returns > len(refs):
        raise ValueError(
            f"num_returns ({num_returns}) cannot exceed the number of refs ({len(refs)})."
        )
    return refs


def check_timeout(timeout: Any) -> None:
    """A timeout is a non-negative number of seconds (None, no limit, is not checked here)."""
    if type(timeout) not in (int, float) and not isinstance(timeout, numbers.Real):  # numpy
        raise TypeError(
            f"timeout must be a number of seconds or None, got {type(timeout).__name__} {timeout!r}"
        )
    if timeout < 0:
        raise ValueError(f"timeout must be >= 0, got {timeout}")


def split_ready(
    refs: list[ObjectRef], ready_ids: set[bytes], num_returns: int
) -> tuple[list[ObjectRef], list[ObjectRef]]:
    """(ready, not_ready) in input order, at most num_returns ready."""
    ready: list[ObjectRef] = []
    not_ready: list[ObjectRef] = []
    for r in refs:
        if r.binary() in ready_ids and len(ready) < num_returns:
            ready.append(r)
        else:
            not_ready.append(r)
    return ready, not_ready


def cancel(object_ref: ObjectRef, *, force: bool = False, recursive: bool = True) -> None:
    """Cancel the task that produces ``object_ref``; its get raises TaskCancelledError."""
    from aioray._private.owner.streaming import ObjectRefGenerator

    cw = ensure_connected()
    if isinstance(object_ref, ObjectRefGenerator):
        # Any of its object ids names the task: (task id, 1).
        cw.post(cw.cancel, object_ref.task_id + (1).to_bytes(4, "little"), force, recursive)
        return
    if not isinstance(object_ref, ObjectRef):
        raise TypeError(f"cancel() expected an ObjectRef, got {type(object_ref).__name__}")
    cw.post(cw.cancel, object_ref.binary(), force, recursive)


# -- this process's context ------------------------------------------------------------------
def get_gpu_ids() -> list[int]:
    """GPU ids assigned to the current task (empty in a driver or a CPU task)."""
    cw = ensure_connected()
    return list(getattr(cw.task_context, "gpu_ids", None) or cw.actor_gpu_ids())


def get_runtime_context() -> RuntimeContext:
    """Ids of the current job, task, node and worker."""
    cw = ensure_connected()
    return RuntimeContext(cw, worker_context.job_runtime_env, _current_actor_handle)


def _current_actor_handle() -> Any:
    """A handle to the actor this process hosts (RuntimeContext.current_actor)."""
    from aioray.actor import ActorHandle

    cw = ensure_connected()
    assert cw.actor_id is not None  # (RuntimeContext.current_actor checked it)
    host = getattr(cw.extra_handlers.get("create_actor"), "__self__", None)
    assert host is not None  # (a worker hosting an actor: its ActorHost)
    return ActorHandle(cw.actor_id, host.meta)


def remote(*args: Any, **kwargs: Any) -> Any:
    """Decorator: ``@remote`` or ``@remote(num_cpus=2, ...)`` turns a function into a task."""
    if len(args) == 1 and not kwargs and callable(args[0]):
        return _make_remote(args[0], {})
    if args:
        raise TypeError(
            "The @remote decorator takes keyword options only, e.g. @remote(num_cpus=1)."
        )

    def decorator(fn: Callable[..., Any]) -> Any:
        return _make_remote(fn, kwargs)

    return decorator


def _make_remote(target: Any, opts: dict[str, Any]) -> Any:
    if isinstance(target, type):
        from aioray.actor import ActorClass

        return ActorClass(target, opts)
    if not callable(target):
        raise TypeError(f"@remote expects a function or a class, got {type(target).__name__}")
    if inspect.iscoroutinefunction(target):
        raise ValueError(
            "'async def' should not be used for remote tasks. You can wrap the async "
            "function with `asyncio.run(f())`. See https://docs.ray.io/en/latest/ray-core/"
            "actors/async_api.html"
        )
    return RemoteFunction(target, opts)
