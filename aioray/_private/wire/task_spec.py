"""TaskSpec: what an owner sends a worker to run one task, and how it is decoded.

The wire form is a msgpack map (``spec``, declared as ``schema.TaskSpec``) plus raw
buffers. Arguments are pickled once, with each top-level ObjectRef replaced by a
placeholder ``_Dep(i)``; the dependencies travel beside them as descriptors:

    [DEP_INLINE, oid, nbuf]   value inline: its pickle stream and nbuf buffers follow
    [DEP_SHM,    oid, node]   value in that node's shared-memory store
    [DEP_OWNER,  oid, owner]  ask the owner (ip, port, worker_id) for it

Raw buffers are laid out in order: the argument pickle and its buffers, then each
inline dependency's pickle and buffers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from aioray._private.wire import serialization
from aioray._private.wire.protocol import Buffer
from aioray._private.wire.schema import (
    DEP_INLINE,
    DEP_OWNER,
    DEP_SHM,
    RET_INLINE,
    RET_SHM,
    STREAMING,
    TaskSpec,
)

if TYPE_CHECKING:
    from aioray._private.core.memory_store import StoredObject
    from aioray._private.owner.object_ref import ObjectRef
    from aioray._private.owner.task_submitter import Lease

# The descriptors' kinds are declared in schema.py and imported from here too.
__all__ = [
    "DEP_INLINE",
    "DEP_OWNER",
    "DEP_SHM",
    "RET_INLINE",
    "RET_SHM",
    "STREAMING",
    "CallArgs",
    "TaskEntry",
    "inline_parts",
    "split_args",
    "substitute",
]

R = TypeVar("R")


class _Dep:
    """Placeholder for the i-th top-level ObjectRef argument."""

    __slots__ = ("i",)

    def __init__(self, i: int) -> None:
        self.i = i

    def __reduce__(self) -> tuple[type[_Dep], tuple[int]]:
        return (_Dep, (self.i,))


# A call's arguments are the user's values: ``Any`` below stands for them.
CallArgs = tuple[tuple[Any, ...], dict[str, Any]]


def split_args(
    args: tuple[Any, ...], kwargs: dict[str, Any], ref_type: type[R]
) -> tuple[CallArgs, list[R]]:
    """Replace top-level refs by placeholders; return (args_and_kwargs, refs)."""
    deps: list[R] = []
    if not args and not kwargs:
        return (args, kwargs), deps
    if not any(type(a) is ref_type for a in args) and not any(
        type(v) is ref_type for v in kwargs.values()
    ):
        return (args, kwargs), deps

    def sub(v: Any) -> Any:
        if type(v) is ref_type:
            deps.append(v)
            return _Dep(len(deps) - 1)
        return v

    return (tuple(sub(a) for a in args), {k: sub(v) for k, v in kwargs.items()}), deps


def substitute(args: tuple[Any, ...], kwargs: dict[str, Any], values: list[Any]) -> CallArgs:
    """Put resolved dependency values where their placeholders stand."""
    if not values:
        return args, kwargs
    args = tuple(values[a.i] if type(a) is _Dep else a for a in args)
    kwargs = {k: values[v.i] if type(v) is _Dep else v for k, v in kwargs.items()}
    return args, kwargs


def inline_parts(obj: StoredObject) -> list[Buffer]:
    assert obj.data is not None
    return [obj.data, *obj.buffers]


class TaskEntry:
    """Owner-side record of one submitted task (not sent; ``spec`` is)."""

    __slots__ = (
        "args_blob",
        "attempts_left",
        "cancelled",
        "dep_ids",
        "dep_refs",
        "fn_bytes",
        "lease",
        "out_buffers",
        "push_seq",
        "resources",
        "retry_exceptions",
        "return_ids",
        "sched_key",
        "spec",
        "state",
    )

    def __init__(
        self,
        spec: TaskSpec,
        return_ids: Sequence[bytes],
        args_blob: serialization.SerializedObject | None,
        dep_refs: Sequence[ObjectRef],
        resources: dict[str, float],
        max_retries: int,
        retry_exceptions: bool | list[type],
        fn_bytes: bytes | None,
        sched_key: tuple[object, ...],
    ) -> None:
        self.spec = spec
        self.return_ids = return_ids
        self.args_blob = args_blob
        # Thousands of these are alive at once, and the garbage collector walks every
        # container among them: the usual empty ones are the shared ().
        self.dep_refs: Sequence[ObjectRef] = dep_refs or ()  # kept alive until the task is done
        self.dep_ids: tuple[bytes, ...] = tuple([r._id for r in dep_refs]) if dep_refs else ()
        self.out_buffers: Sequence[Buffer] = ()
        self.resources = resources
        self.attempts_left = max_retries
        self.retry_exceptions = retry_exceptions
        self.fn_bytes = fn_bytes
        self.sched_key = sched_key
        self.cancelled = False
        self.lease: Lease | None = None
        self.push_seq = 0  # a push a caller thread wrote: its request's number
        self.state = "pending_deps"

    @property
    def task_id(self) -> bytes:
        return self.spec["tid"]

    def __repr__(self) -> str:
        return f"<Task {self.spec.get('name')} {self.task_id.hex()[:12]} {self.state}>"
