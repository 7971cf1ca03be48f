"""``@remote`` functions: option handling and building a task on ``.remote()``."""

from __future__ import annotations

import functools
import hashlib
import inspect
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aioray._private.core import options, runtime_env, signatures
from aioray._private.core.scheduling_strategies import strategy_to_wire
from aioray._private.owner import placement_groups, worker_context
from aioray._private.owner.object_ref import ObjectRef
from aioray._private.owner.task_events import NO_PARENT, NORMAL_TASK, pack_info
from aioray._private.wire import config, ids, serializability, serialization
from aioray._private.wire.schema import TaskSpec
from aioray._private.wire.task_spec import STREAMING, TaskEntry, split_args
from aioray.dag import FunctionNode

if TYPE_CHECKING:
    from aioray._private.owner.core_worker import CoreWorker


_DEFAULT_RESOURCES = {"CPU": 1.0}


class RemoteFunction:
    """A function turned into a task by ``@aioray.remote``; call it with ``.remote()``."""

    def __init__(self, fn: Callable[..., Any], task_options: dict[str, Any]) -> None:
        options.validate(task_options, options.TASK_OPTIONS)
        self._function = fn
        self._options = {**options.TASK_DEFAULTS, **task_options}
        if "num_returns" not in task_options and inspect.isgeneratorfunction(fn):
            self._options["num_returns"] = "streaming"  # Ray >= 2.8: generators stream
        self._name = getattr(fn, "__qualname__", getattr(fn, "__name__", "function"))
        self._start_caches()
        functools.update_wrapper(self, fn)

    def _start_caches(self) -> None:
        """What calls compute once and reuse (not pickled: a copy computes its own)."""
        self._fn_bytes: bytes | None = None
        self._fid = b""
        self._lock = threading.Lock()
        # (options, resources, class key, env, parent env, task events, resources not 1 CPU)
        self._request: tuple[Any, ...] = ()
        # (request, event buffer, job id, index): the last plain call's description.
        self._described: tuple[Any, ...] = ()
        # Calls with no keywords and lo <= len(args) <= hi bind: no other check.
        self._lo, self._hi, self._sig = signatures.arity(self._function)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"Remote functions cannot be called directly. Instead of running "
            f"'{self._name}()', try '{self._name}.remote()'."
        )

    def __repr__(self) -> str:
        return f"<RemoteFunction {self._name}>"

    def __getstate__(self) -> dict[str, Any]:
        # Tasks that call themselves pickle this object: ship the function, not the cache.
        return {"fn": self._function, "options": self._options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._function = state["fn"]
        self._options = state["options"]
        self._name = getattr(self._function, "__qualname__", "function")
        self._start_caches()

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Submit the task; return its ObjectRef (a list of them if num_returns > 1)."""
        return self._remote(args, kwargs, self._options)

    def bind(self, *args: Any, **kwargs: Any) -> FunctionNode:
        """A DAG node calling this function with these arguments (``aioray.dag``)."""
        return FunctionNode(self, args, kwargs)

    def options(self, **task_options: Any) -> _BoundOptions:
        """Return a copy whose ``.remote()`` uses these options."""
        options.validate(task_options, options.TASK_OPTIONS)
        return _BoundOptions(self, {**self._options, **task_options})

    def _export(self) -> tuple[bytes, bytes]:
        if self._fn_bytes is None:
            with self._lock:
                if self._fn_bytes is None:
                    try:
                        data = serialization.dumps_function(self._function)
                    except Exception as e:
                        raise TypeError(
                            f"Could not serialize the function {self._name}: {e}\n"
                            + serializability.report(self._function, self._name)
                        ) from e
                    self._fid = hashlib.sha1(data).digest()
                    self._fn_bytes = data
        return self._fid, self._fn_bytes

    def _describe(
        self, cw: Any, request: tuple[Any, ...], resources: dict[str, float], spec: TaskSpec
    ) -> int:
        """The index of this call's description in the process's task-event table."""
        plain = resources is request[1] and "pg" not in spec
        shape = request[2][0] if plain else tuple(resources.items())
        pg = spec["pg"][0] if "pg" in spec else None
        number = cw.event_buffer.describe(self._name, NORMAL_TASK, cw.job_id, None, shape, pg)
        if plain:
            self._described = (request, cw.event_buffer, cw.job_id, number)
        return number

    def _remote(self, args: tuple[Any, ...], kwargs: dict[str, Any], opts: dict[str, Any]) -> Any:
        if kwargs or not self._lo <= len(args) <= self._hi:
            signatures.check(self._sig, args, kwargs)
        cw = worker_context.ensure_connected()
        fid, fn_bytes = self._export()
        nret = opts["num_returns"]
        streaming = nret == "streaming"
        if streaming:
            nret = STREAMING
        elif not isinstance(nret, int):
            raise ValueError(f"num_returns={nret!r} is not supported (use an int or 'streaming')")
        spec: TaskSpec = {
            "fid": fid,
            "name": self._name,
            "nret": nret,
            "job": cw.job_id,
            "ns": cw.namespace,
            "owner": cw.address,
        }
        blob, dep_refs = pack_arguments(cw, self._name, args, kwargs, spec)
        request = self._request  # the same options, call after call: computed once
        parent_env = worker_context.job_runtime_env
        if not request or request[0] is not opts or request[4] is not parent_env:
            resources = options.resource_request(opts)
            env = worker_context.task_runtime_env(opts.get("runtime_env"))
            key = (tuple(sorted(resources.items())), runtime_env.env_key(env))
            request = self._request = (
                opts,
                resources,
                key,
                env,
                parent_env,
                opts.get("enable_task_events"),
                resources != _DEFAULT_RESOURCES,
            )
        env = request[3]
        if env:
            spec["env"] = env
        resources = request[1]
        if request[5] is False:  # .options(enable_task_events=False): the executor skips it too
            spec["noev"] = True
        if (
            opts["scheduling_strategy"] is not None
            or "placement_group" in opts
            or placement_groups.capturing
        ):
            placement = placement_groups.placement_of(cw, opts)
            if placement is not None:  # in a placement group: lease the bundle's resources
                resources = placement_groups.rewrite(placement, resources, self._name)
                spec["pg"] = placement
        if request[6] or resources is not request[1]:  # (the worker assumes 1 CPU)
            spec["res"] = resources
        task_id = cw.ids.task_id(cw.job_id)
        spec["tid"] = task_id
        infos = cw.task_event_infos
        if infos is not None and request[5] is not False:
            known = self._described  # (describe costs a tuple and its hash: once per options)
            if (
                known
                and known[0] is request
                and known[1] is cw.event_buffer
                and known[2] == cw.job_id
                and resources is request[1]
                and "pg" not in spec
            ):
                number = known[3]
            else:
                number = self._describe(cw, request, resources, spec)
            parent = cw.task_context.task_id or NO_PARENT
            infos += pack_info(task_id, time.time(), parent, number)
        sched_key: tuple[Any, ...] = request[2]  # (resources, runtime env), shared
        if resources is not request[1]:
            sched_key = (tuple(sorted(resources.items())), sched_key[1])
        if opts["scheduling_strategy"] is not None:
            strategy = strategy_to_wire(opts["scheduling_strategy"])
            if strategy is not None:
                spec["ss"] = strategy
                sched_key = (*sched_key, repr(strategy))
        if streaming:  # never retried: items already consumed cannot be taken back
            spec["bp"] = opts.get("_generator_backpressure_num_objects") or 0
            gen = cw.streams.create(task_id)
            task = TaskEntry(spec, [], blob, dep_refs, resources, 0, False, fn_bytes, sched_key)
            cw.post(cw.submitter.submit, task)
            return gen
        if nret == 1:  # (a tuple of bytes: the garbage collector soon stops walking it)
            return_ids: tuple[bytes, ...] = (ids.object_id(task_id, 1),)
        else:
            return_ids = tuple([ids.object_id(task_id, i + 1) for i in range(nret)])
        cw.owned.update(return_ids)
        refs = [ObjectRef(oid, cw.address) for oid in return_ids]
        task = TaskEntry(
            spec,
            return_ids,
            blob,
            dep_refs,
            resources,
            opts["max_retries"],
            opts["retry_exceptions"],
            fn_bytes,
            sched_key,
        )
        try:
            if not cw.submitter.push_now(task):  # (on an idle lease, from this thread)
                cw.post_task(cw.submitter.submit, task)
        except BaseException:  # (Ctrl-C in the middle: the task is submitted once all the same)
            cw.post(cw.submitter.submit_if_lost, task)
            raise
        if nret == 1:
            return refs[0]
        return refs if nret else None


def pack_arguments(
    cw: CoreWorker, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], spec: TaskSpec
) -> tuple[serialization.SerializedObject | None, list[ObjectRef]]:
    """Pickle a call's arguments (in the caller's thread) into ``spec``.

    Returns the inline argument blob (or None) and the ObjectRefs the call depends on.
    Top-level refs become dependencies; arguments of MAX_INLINE_BYTES or more go to
    the object store once, like a put, and travel as one more dependency.
    """
    call_args, dep_refs = split_args(args, kwargs, ObjectRef)
    if not args and not kwargs:
        return None, dep_refs
    try:
        so = serialization.serialize(call_args)
    except TypeError as e:
        raise TypeError(f"Could not serialize the arguments of {name}: {e}") from None
    # Refs nested in the arguments: the blob keeps their instances (so the objects)
    # alive until the task is done; the submitter lends them to the worker.
    if so.total_bytes >= config.MAX_INLINE_BYTES:
        dep_refs.append(cw.put_serialized(so))
        spec["ar"] = len(dep_refs) - 1
        return None, dep_refs
    so.buffers = [bytes(b) for b in so.buffers]
    spec["a"] = len(so.buffers)
    return so, dep_refs


class _BoundOptions:
    def __init__(self, fn: RemoteFunction, opts: dict[str, Any]) -> None:
        self._fn = fn
        self._opts = opts

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self._fn._remote(args, kwargs, self._opts)

    def bind(self, *args: Any, **kwargs: Any) -> FunctionNode:
        return FunctionNode(self, args, kwargs)

    def options(self, **task_options: Any) -> _BoundOptions:
        options.validate(task_options, options.TASK_OPTIONS)
        return _BoundOptions(self._fn, {**self._opts, **task_options})
