"""Actors: ``@remote`` classes, their handles and method calls (Ray's names).

Vocabulary: an *actor class* (``Cls``) creates actors with ``Cls.remote()``; an
*ActorHandle* names one actor and may be copied, pickled and passed anywhere; an
*ActorMethod* (``handle.method``) submits a call with ``.remote()``.

Creation registers the actor at the GCS, which leases a dedicated worker and
runs ``__init__`` there; calls go straight from the caller to that worker
(``actor_submitter.py``). The creator's handles are counted in its process: when
the last one is gone (and no copy left the process) the actor is terminated
after its queued calls, as in Ray.
"""

from __future__ import annotations

import hashlib
import inspect
import threading
import time
from collections.abc import Callable
from typing import Any

from aioray._private.core import options, signatures
from aioray._private.core.scheduling_strategies import strategy_to_wire
from aioray._private.owner import placement_groups, worker_context
from aioray._private.owner.object_ref import ObjectRef
from aioray._private.owner.task_events import (
    ACTOR_CREATION_TASK,
    ACTOR_TASK,
    NO_PARENT,
    pack_info,
)
from aioray._private.wire import config, ids, serializability, serialization
from aioray._private.wire.schema import ActorMeta, ActorRequest, MethodMeta, TaskSpec
from aioray._private.wire.task_spec import STREAMING, TaskEntry
from aioray.dag import ClassMethodNode, ClassNode
from aioray.exceptions import ActorExit, AsyncioActorExit
from aioray.remote_function import pack_arguments

_ACTOR_DEFAULTS: dict[str, Any] = {
    "max_restarts": 0,
    "max_task_retries": 0,
    "max_concurrency": None,
    "max_pending_calls": -1,
    "lifetime": None,
    "get_if_exists": False,
    "name": None,
    "namespace": None,
}


def method(*args: Any, **kwargs: Any) -> Callable[..., Any]:
    """Decorate an actor method: ``@aioray.method(num_returns=2, concurrency_group="io")``."""
    allowed = {
        "num_returns",
        "concurrency_group",
        "max_task_retries",
        "retry_exceptions",
        "_generator_backpressure_num_objects",
    }
    unknown = set(kwargs) - allowed
    if args or unknown:
        raise ValueError(f"@method takes keyword options {sorted(allowed)}, got {sorted(unknown)}")

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn.__aioray_method_options__ = kwargs  # type: ignore[attr-defined]
        return fn

    return decorate


def _class_meta(cls: type, opts: dict[str, Any]) -> ActorMeta:
    methods: dict[str, MethodMeta] = {}
    is_async = False
    for name, fn in inspect.getmembers(cls, predicate=inspect.isfunction):
        if name.startswith("__") and name != "__call__":
            continue
        mopts = getattr(fn, "__aioray_method_options__", {})
        if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
            is_async = True
        generator = inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn)
        default_nret = "streaming" if generator else 1  # Ray >= 2.8: generators stream
        static = isinstance(inspect.getattr_static(cls, name, None), staticmethod)
        methods[name] = {
            "nret": mopts.get("num_returns", default_nret),
            "cg": mopts.get("concurrency_group"),
            "bp": mopts.get("_generator_backpressure_num_objects", 0),
            "sig": signatures.to_wire(fn, drop_first=not static),  # checked at .remote()
        }
    max_conc = opts.get("max_concurrency") or (1000 if is_async else 1)
    meta: ActorMeta = {
        "cls": cls.__qualname__,
        "module": cls.__module__,
        "methods": methods,
        "async": is_async,
        "max_concurrency": max_conc,
        "groups": opts.get("concurrency_groups") or {},
        "max_task_retries": opts.get("max_task_retries", 0),
        "max_pending_calls": opts.get("max_pending_calls", -1),
    }
    if opts.get("enable_task_events") is False:
        meta["noev"] = True
    return meta


class ActorClass:
    """A class turned into an actor factory by ``@aioray.remote``."""

    def __init__(self, cls: type, actor_options: dict[str, Any]) -> None:
        options.validate(actor_options, options.ACTOR_OPTIONS)
        self._cls = cls
        self._options = {**_ACTOR_DEFAULTS, **actor_options}
        self._name = cls.__qualname__
        self._cls_bytes: bytes | None = None
        self._lock = threading.Lock()
        self._lo, self._hi, self._sig = signatures.arity(cls)  # __init__'s
        self.__doc__ = cls.__doc__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"Actors cannot be instantiated directly. Instead of '{self._name}()', "
            f"use '{self._name}.remote()'."
        )

    def __repr__(self) -> str:
        return f"<ActorClass {self._name}>"

    def __getstate__(self) -> dict[str, Any]:
        return {"cls": self._cls, "options": self._options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["cls"], {})  # type: ignore[misc]
        self._options = state["options"]

    def remote(self, *args: Any, **kwargs: Any) -> ActorHandle:
        """Create the actor; return its handle at once."""
        return self._remote(args, kwargs, self._options)

    def bind(self, *args: Any, **kwargs: Any) -> ClassNode:
        """A DAG node creating this actor with these arguments (``aioray.dag``)."""
        return ClassNode(self, args, kwargs)

    def options(self, **actor_options: Any) -> _ActorClassOptions:
        """A copy of this actor class with ``actor_options`` (Ray's actor options, validated now)
        overriding its own; call ``.remote(...)`` on it to create the actor."""
        options.validate(actor_options, options.ACTOR_OPTIONS)
        return _ActorClassOptions(self, {**self._options, **actor_options})

    def _export(self) -> bytes:
        if self._cls_bytes is None:
            with self._lock:
                if self._cls_bytes is None:
                    try:
                        self._cls_bytes = serialization.dumps_function(self._cls)
                    except Exception as e:
                        raise TypeError(
                            f"Could not serialize the actor class {self._name}: {e}\n"
                            + serializability.report(self._cls, self._name)
                        ) from e
        return self._cls_bytes

    def _remote(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], opts: dict[str, Any]
    ) -> ActorHandle:
        if kwargs or not self._lo <= len(args) <= self._hi:
            signatures.check(self._sig, args, kwargs)
        cw = worker_context.ensure_connected()
        cls_bytes = self._export()
        meta = _class_meta(self._cls, opts)
        namespace = opts.get("namespace") or cw.namespace
        name = opts.get("name")
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"Actor name must be a non-empty string, got {name!r}")
        if opts.get("get_if_exists") and not name:
            raise ValueError("The actor name must be specified to use `get_if_exists`.")
        if opts.get("lifetime") not in (None, "detached", "non_detached"):
            raise ValueError(
                f"lifetime must be 'detached' or 'non_detached', got {opts.get('lifetime')!r}"
            )
        actor_id = ids.random_id(16)
        spec: TaskSpec = {
            "create": True,
            "tid": cw.ids.task_id(cw.job_id),
            "aid": actor_id,
            "cls": cls_bytes,
            "name": f"{self._name}.__init__",
            "nret": 0,
            "job": cw.job_id,
            "ns": namespace,
            "owner": cw.address,
            "fid": hashlib.sha1(cls_bytes).digest(),
            "meta": meta,
            "aname": name or "",
        }
        if "noev" in meta:  # enable_task_events=False: no events for the actor's tasks
            spec["noev"] = True
        blob, dep_refs = pack_arguments(cw, self._name, args, kwargs, spec)
        infos = cw.task_event_infos
        if infos is not None and "noev" not in spec:
            pg = spec["pg"][0] if "pg" in spec else None
            number = cw.event_buffer.describe(
                spec["name"], ACTOR_CREATION_TASK, cw.job_id, actor_id, None, pg
            )
            parent = cw.task_context.task_id or NO_PARENT
            infos += pack_info(spec["tid"], time.time(), parent, number)
        # Creation arguments stay pinned: a restart runs __init__ with them again.
        cw.refs.pin(r.binary() for r in [*dep_refs, *(blob.contained_refs if blob else ())])
        env = worker_context.task_runtime_env(opts.get("runtime_env"))
        if env:
            spec["env"] = env
        explicit_cpus = "num_cpus" in opts and opts["num_cpus"] is not None
        hold = options.resource_request({**opts, "num_cpus": opts.get("num_cpus") or 0})
        sched = dict(hold)
        if not explicit_cpus:
            sched["CPU"] = 1.0  # Ray: 1 CPU to schedule an actor, 0 while it runs
        placement = placement_groups.placement_of(cw, opts)
        if placement is not None:  # in a placement group: hold the bundle's resources
            # The bundle's resources are already the group's: no extra CPU to place it.
            hold = placement_groups.rewrite(placement, hold, self._name)
            sched = dict(hold)
            spec["pg"] = placement
        spec["res"] = hold
        request: ActorRequest = {
            "aid": actor_id,
            "name": name,
            "ns": namespace,
            "detached": opts.get("lifetime") == "detached",
            "get_if_exists": bool(opts.get("get_if_exists")),
            "max_restarts": opts.get("max_restarts", 0),
            "res": sched,
            "hold": hold,
            "env": env or None,
            "meta": meta,
            "owner": cw.worker_id,
            "node": cw.node_id,  # ties go to the creator's node, as with tasks
            "ss": strategy_to_wire(opts.get("scheduling_strategy")),
        }
        task = TaskEntry(spec, [], blob, dep_refs, {}, 0, False, None, ())
        info = cw.run_sync(cw.actors.create(request, task), config.DAEMON_START_TIMEOUT_S)
        return ActorHandle(info["aid"], info["meta"], creator=info["aid"] == actor_id)


class _ActorClassOptions:
    def __init__(self, actor_class: ActorClass, opts: dict[str, Any]) -> None:
        self._actor_class = actor_class
        self._opts = opts

    def remote(self, *args: Any, **kwargs: Any) -> ActorHandle:
        """Create the actor with these options; return its handle at once."""
        return self._actor_class._remote(args, kwargs, self._opts)

    def bind(self, *args: Any, **kwargs: Any) -> ClassNode:
        return ClassNode(self, args, kwargs)


class ActorHandle:
    """A handle to one actor; ``handle.method.remote(...)`` calls it."""

    def __init__(self, actor_id: bytes, meta: ActorMeta, creator: bool = False) -> None:
        self._actor_id = actor_id
        self._meta = meta
        self._cw = worker_context.ensure_connected()
        self._creator = creator
        # method -> (event buffer, job id, index of its task description): see remote()
        self._described: dict[str, tuple[Any, bytes, int]] = {}
        self._calls = self._cw.actors.record_of(actor_id)  # (numbers its calls: remote())
        self._cw.actors.add_handle(actor_id, creator)

    def __del__(self) -> None:
        try:
            self._cw.actors.remove_handle(self._actor_id)
        except Exception:  # interpreter shutdown
            pass

    def __getattr__(self, name: str) -> ActorMethod:
        if name.startswith("__") and name != "__ray_terminate__":
            raise AttributeError(name)
        methods = self._meta["methods"]
        if name not in methods and name != "__ray_terminate__":
            raise AttributeError(f"'{self._meta['cls']}' actor has no method '{name}'")
        return ActorMethod(self, name, methods.get(name, {}))

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *self._meta["methods"]})

    def __repr__(self) -> str:
        return f"Actor({self._meta['cls']}, {self._actor_id.hex()})"

    # (_repr_html_, the notebook view, is set by aioray._html, which renders above this module)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorHandle) and other._actor_id == self._actor_id

    def __hash__(self) -> int:
        return hash(self._actor_id)

    def __reduce__(self) -> Any:
        # A copy leaves this process: the actor must outlive this process's handles.
        self._cw.actors.mark_escaped(self._actor_id)
        return (_rebuild_handle, (self._actor_id, self._meta))

    def _signature(self, method: str) -> Any:
        """The method's inspect.Signature, rebuilt once from the meta's wire form."""
        sigs = self.__dict__.setdefault("_sigs", {})
        sig = sigs.get(method)
        if sig is None:
            sig = sigs[method] = signatures.from_wire(self._meta["methods"][method].get("sig"))[2]
        return sig

    @property
    def _actor_id_hex(self) -> str:
        return self._actor_id.hex()


def _rebuild_handle(actor_id: bytes, meta: ActorMeta) -> ActorHandle:
    return ActorHandle(actor_id, meta)


class ActorMethod:
    """One method of an actor; ``.remote(*args)`` submits a call."""

    def __init__(self, handle: ActorHandle, name: str, mopts: MethodMeta | dict[str, Any]) -> None:
        self._handle = handle
        self._name = name
        self._mopts: dict[str, Any] = dict(mopts)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"Actor methods cannot be called directly. Instead of '{self._name}()', "
            f"try '{self._name}.remote()'."
        )

    def options(self, **mopts: Any) -> ActorMethod:
        """This method with per-call options: ``num_returns``, ``concurrency_group``, ``name``,
        ``_generator_backpressure_num_objects``; ValueError for any other."""
        unknown = set(mopts) - {
            "num_returns",
            "concurrency_group",
            "name",
            "enable_task_events",
            "_generator_backpressure_num_objects",
        }
        if unknown:
            raise ValueError(f"Invalid actor method option(s): {sorted(unknown)}")
        m = ActorMethod(self._handle, self._name, self._mopts)
        if "num_returns" in mopts:
            m._mopts["nret"] = mopts["num_returns"]
        if "concurrency_group" in mopts:
            m._mopts["cg"] = mopts["concurrency_group"]
        if "_generator_backpressure_num_objects" in mopts:
            m._mopts["bp"] = mopts["_generator_backpressure_num_objects"]
        if "enable_task_events" in mopts:
            m._mopts["noev"] = mopts["enable_task_events"] is False
        return m

    def bind(self, *args: Any, **kwargs: Any) -> ClassMethodNode:
        """A DAG node calling this method of this actor (``aioray.dag``)."""
        return ClassMethodNode(self._handle, self._name, args, kwargs)

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Call the method on the actor; the ObjectRef of its result at once (a list of refs for
        num_returns > 1, an ObjectRefGenerator for streaming, None for num_returns=0)."""
        h = self._handle
        sig = self._mopts.get("sig")
        if sig is not None and (kwargs or not sig[0] <= len(args) <= sig[1]):
            signatures.check(h._signature(self._name), args, kwargs)
        # (a handle's attributes are read through its __getattr__ hook: each once)
        cw, aid, meta = h._cw, h._actor_id, h._meta
        nret = self._mopts.get("nret", 1)
        streaming = nret == "streaming"
        if streaming:
            nret = STREAMING
        elif not isinstance(nret, int):
            raise ValueError(f"num_returns={nret!r} is not supported (use an int or 'streaming')")
        spec: TaskSpec = {
            "aid": aid,
            "m": self._name,
            "name": f"{meta['cls']}.{self._name}",
            "nret": nret,
            "job": cw.job_id,
            "ns": cw.namespace,
            "owner": cw.address,
        }
        if self._mopts.get("cg"):
            spec["cg"] = self._mopts["cg"]
        if self._mopts.get("noev", "noev" in meta):
            spec["noev"] = True
        blob, dep_refs = pack_arguments(cw, spec["name"], args, kwargs, spec)
        cw.actors.reserve_call(aid, meta)
        task_id = cw.ids.task_id(cw.job_id)
        spec["tid"] = task_id
        infos = cw.task_event_infos
        if infos is not None and "noev" not in spec:
            known = h._described.get(self._name)  # (describing costs a tuple and its hash)
            if known is None or known[0] is not cw.event_buffer or known[1] != cw.job_id:
                number = cw.event_buffer.describe(
                    spec["name"], ACTOR_TASK, cw.job_id, aid, None, None
                )
                known = h._described[self._name] = (cw.event_buffer, cw.job_id, number)
            number = known[2]
            parent = cw.task_context.task_id or NO_PARENT
            infos += pack_info(task_id, time.time(), parent, number)
        if streaming:
            spec["bp"] = self._mopts.get("bp", 0)
            gen = cw.streams.create(task_id)
            call = TaskEntry(spec, [], blob, dep_refs, {}, 0, False, None, ())
            try:  # (the number taken and kept with no call between: see below)
                for spec["seq"] in h._calls.tickets:
                    break
                cw.post(cw.actors.submit, call)
            except BaseException:  # (Ctrl-C: a number taken must be submitted, or no
                if "seq" in spec:  # later call of this process would ever be sent)
                    cw.post(cw.actors.submit_if_lost, call)
                raise
            return gen
        return_ids = [ids.object_id(task_id, i + 1) for i in range(nret)]
        cw.owned.update(return_ids)
        refs = [ObjectRef(oid, cw.address) for oid in return_ids]
        task = TaskEntry(
            spec,
            return_ids,
            blob,
            dep_refs,
            {},
            meta.get("max_task_retries", 0),
            False,
            None,
            (),
        )
        try:
            # The call's number, taken and kept with no call between: FOR_ITER takes it,
            # STORE_SUBSCR keeps it, and an interrupt (Ctrl-C) is raised only at a call,
            # a backward jump or a function's start, so one raised here finds it in spec
            # (or not taken) and the handler submits the call. (spec.update(zip(...)), one
            # C call too, cost a burst's call ~3,400 instructions more: zip's keyword
            # parsing, a kwargs dict, an iterator and a tuple.)
            calls = h._calls
            for spec["seq"] in calls.tickets:
                break
            # (calls in flight: a burst, the loop's; else push it from this thread if its
            # turn has come)
            if calls.inflight or not cw.actors.push_now(task):
                cw.post_task(cw.actors.submit, task)
        except BaseException:  # (Ctrl-C: a number taken must be submitted, or no later
            if "seq" in spec:  # call of this process would ever be sent)
                cw.post(cw.actors.submit_if_lost, task)
            raise
        if nret == 1:
            return refs[0]
        return refs if nret else None


def exit_actor() -> None:
    """Intentionally exit the current actor: the caller sees it die, queued calls fail.

    In an async actor it raises AsyncioActorExit, as Ray does (an exception the method
    may catch: the actor exits after the call all the same); elsewhere it unwinds the
    call with a BaseException."""
    cw = worker_context.core_worker
    if cw is None or getattr(cw, "actor_id", None) is None:
        raise TypeError("exit_actor() can only be called inside an actor")
    request = worker_context.request_async_actor_exit
    if request is not None:
        request()
        raise AsyncioActorExit()
    raise ActorExit()
