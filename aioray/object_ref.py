"""ObjectRef: the user's handle to an object, counted by its process's CoreWorker.

An ObjectRef is also an asyncio future (duck-typed: ``asyncio.isfuture`` is true),
so ``asyncio.wait([ref])``, ``gather``, ``wait_for`` and ``as_completed`` accept it
on Python 3.11+, where plain awaitables are refused. The future behaviour delegates
to one fetch task per event loop; cancelling it cancels the fetch, never the task
that produces the object (as in Ray).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from asyncio.events import _get_running_loop
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from aioray import serialization

if TYPE_CHECKING:
    from aioray.core_worker import CoreWorker

_async_api: Any = None

# The CoreWorker of this process (driver or worker); set when it starts.
_core_worker: CoreWorker | None = None


def set_core_worker(cw: CoreWorker | None) -> None:
    global _core_worker
    _core_worker = cw


class ObjectRef:
    """A reference to an object in the cluster: a future for a task's result or a put value."""

    __slots__ = ("__weakref__", "_afut", "_cw", "_id", "_owner")

    # asyncio.isfuture() checks for this class attribute; the ref never yields itself.
    _asyncio_future_blocking = False

    def __init__(self, object_id: bytes, owner: tuple[str, int, bytes] | None, _count: bool = True):
        self._id = object_id
        self._owner = owner
        self._afut: Any = None  # (loop, future) or {loop: future}
        cw = _core_worker
        self._cw = cw if _count else None
        if self._cw is not None:
            self._cw.refs.add_local(object_id)

    def __del__(self) -> None:
        cw = self._cw
        if cw is not None:
            try:
                cw.refs.remove_local(self._id)
            except Exception:  # interpreter shutdown: nothing left to free
                pass

    def binary(self) -> bytes:
        return self._id

    def hex(self) -> str:
        return self._id.hex()

    def task_id(self) -> str:
        return self._id[:16].hex()

    @property
    def owner_address(self) -> tuple[str, int, bytes] | None:
        return self._owner

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectRef) and other._id == self._id

    def __hash__(self) -> int:
        return hash(self._id)

    def __repr__(self) -> str:
        return f"ObjectRef({self._id.hex()})"

    def _repr_html_(self) -> str:
        from aioray import _html

        return _html.object_ref_html(self)

    def __reduce__(self) -> Any:
        serialization.record_ref(self)
        return (_rebuild_ref, (self._id, self._owner))

    def __await__(self) -> Generator[Any, None, Any]:
        # Each await gets a future of its own: cancelling one awaiter cancels no other.
        return self._new_future().__await__()

    def _new_future(self) -> asyncio.Future[Any]:
        global _async_api
        if _async_api is None:  # resolved once: it imports this module
            from aioray import async_api

            _async_api = async_api
        return _async_api.fetcher_for_running_loop().future(self)

    def as_future(self) -> asyncio.Future[Any]:
        """An asyncio future on the running loop that resolves to the value."""
        return self._future()

    # -- the asyncio.Future protocol, delegated ------------------------------------------------
    def _future(self, new_waiter: bool = False) -> asyncio.Future[Any]:
        # gather/wait call this ~7 times per ref: the common case must be cheap.
        held = self._afut
        if held.__class__ is tuple and held[0] is _get_running_loop():
            fut: asyncio.Future[Any] = held[1]
            if not new_waiter or not fut.cancelled():
                return fut
        return self._future_slow(new_waiter)

    def _future_slow(self, new_waiter: bool) -> asyncio.Future[Any]:
        # One future per event loop, so asyncio.wait/gather see one consistent future.
        # Stored as (loop, future) for the common single-loop case, a dict beyond it.
        loop = _get_running_loop() or asyncio.get_event_loop()
        held = self._afut
        if type(held) is tuple and held[0] is loop:
            fut = held[1]
        elif type(held) is dict:
            fut = held.get(loop)
        else:
            fut = None
        # A cancelled wait (a timed-out wait_for) must not poison the next wait; but
        # only a new waiter replaces it: the one that cancelled still reads the result.
        if fut is None or (new_waiter and fut.cancelled()):
            fut = self._new_future()
            if held is None or (type(held) is tuple and held[0] is loop):
                self._afut = (loop, fut)
            else:
                futs = held if type(held) is dict else {held[0]: held[1]}
                futs[loop] = fut
                self._afut = futs
        return fut

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._future().get_loop()

    def add_done_callback(self, fn: Any, *, context: Any = None) -> None:
        self._future(new_waiter=True).add_done_callback(_ForRef(fn, self), context=context)

    def remove_done_callback(self, fn: Any) -> int:
        return self._future().remove_done_callback(_ForRef(fn, self))

    def done(self) -> bool:
        return self._future().done()

    def cancelled(self) -> bool:
        return self._future().cancelled()

    def result(self) -> Any:
        return self._future().result()

    def exception(self) -> BaseException | None:
        return self._future().exception()

    def cancel(self, msg: Any = None) -> bool:
        """Stop waiting here; the task that produces the object keeps running."""
        return self._future().cancel(msg)

    def future(self) -> concurrent.futures.Future[Any]:
        """A concurrent.futures.Future that resolves to the value (or its error)."""
        from aioray import api

        return api.get_future(self)


class _ForRef:
    """A done-callback that reports the ObjectRef (not our inner task) as the future."""

    __slots__ = ("fn", "ref")

    def __init__(self, fn: Any, ref: ObjectRef) -> None:
        self.fn = fn
        self.ref = ref

    def __call__(self, _: Any) -> None:
        self.fn(self.ref)

    def __eq__(self, other: object) -> bool:  # so remove_done_callback finds it
        return isinstance(other, _ForRef) and other.fn == self.fn and other.ref is self.ref

    def __hash__(self) -> int:
        return hash((id(self.fn), id(self.ref)))


def _rebuild_ref(object_id: bytes, owner: tuple[str, int, bytes] | None) -> ObjectRef:
    if owner is not None:
        owner = (owner[0], owner[1], owner[2])
    return ObjectRef(object_id, owner)
