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

    def __init__(
        self,
        object_id: bytes,
        owner: tuple[str, int, bytes] | None = None,
        _count: bool = True,
    ) -> None:
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
        return _fetcher().future(self)

    def as_future(self) -> asyncio.Future[Any]:
        """An asyncio future on the running loop that resolves to the value."""
        return self._new_future()

    # -- the asyncio.Future protocol ----------------------------------------------------------
    # The ref keeps its own future state per event loop (a _Waiting), resolved in batches
    # by the loop's fetcher; callbacks are scheduled with the ref itself as argument, so
    # gather/wait over many refs cost no inner future and no wrapper call per ref.
    def _waiting(self, new_waiter: bool = False) -> _Waiting:
        held = self._afut
        if (
            held.__class__ is _Waiting
            and held.loop is _get_running_loop()
            and not (new_waiter and held.state == _CANCELLED)
        ):
            return held
        return self._waiting_slow(new_waiter)

    def _waiting_slow(self, new_waiter: bool) -> _Waiting:
        loop = _get_running_loop() or asyncio.get_event_loop()
        held = self._afut
        w: _Waiting | None
        if held.__class__ is _Waiting and held.loop is loop:
            w = held
        elif held.__class__ is dict:
            w = held.get(loop)
        else:
            w = None
        # A cancelled wait (a timed-out wait_for) must not poison the next wait; but
        # only a new waiter replaces it: the one that cancelled still reads the result.
        if w is None or (new_waiter and w.state == _CANCELLED):
            w = _Waiting(loop, [])
            if held is None or (held.__class__ is _Waiting and held.loop is loop):
                self._afut = w
            else:
                ws = held if held.__class__ is dict else {held.loop: held}
                ws[loop] = w
                self._afut = ws
            _fetcher().watch(self, w)
        return w

    def get_loop(self) -> asyncio.AbstractEventLoop:
        # gather/ensure_future ask first: answer without starting a fetch.
        loop = _get_running_loop()
        return loop if loop is not None else self._waiting().loop

    def add_done_callback(self, fn: Any, *, context: Any = None) -> None:
        if self._afut is None:  # first use as a future (every ref of a gather): start here
            loop = _get_running_loop()
            if loop is not None:
                w = self._afut = _Waiting(loop, [(fn, context)])
                last = _async_api._last if _async_api is not None else None
                if last is not None and last[0] is loop and last[1].cw is self._cw:
                    last[1].watch(self, w)  # this loop's fetcher, as cached by async_api
                else:
                    _fetcher().watch(self, w)
                return
        w = self._waiting(new_waiter=True)
        if w.state:
            w.loop.call_soon(fn, self, context=context)
        else:
            w.callbacks.append((fn, context))

    def remove_done_callback(self, fn: Any) -> int:
        w = self._waiting()
        before = len(w.callbacks)
        w.callbacks = [cb for cb in w.callbacks if cb[0] != fn]
        return before - len(w.callbacks)

    # gather and wait call these per ref: the lookup of _waiting() is inlined.
    def done(self) -> bool:
        w = self._afut
        if w.__class__ is not _Waiting or w.loop is not _get_running_loop():
            w = self._waiting_slow(False)
        return w.state != _PENDING

    def cancelled(self) -> bool:
        w = self._afut
        if w.__class__ is not _Waiting or w.loop is not _get_running_loop():
            w = self._waiting_slow(False)
        return w.state == _CANCELLED

    def result(self) -> Any:
        w = self._afut
        if w.__class__ is not _Waiting or w.loop is not _get_running_loop():
            w = self._waiting_slow(False)
        if w.state == _DONE:
            if w.exc is not None:
                raise w.exc
            return w.value
        if w.state == _CANCELLED:
            raise w.exc  # type: ignore[misc]
        raise asyncio.InvalidStateError("Result is not ready.")

    def exception(self) -> BaseException | None:
        w = self._afut
        if w.__class__ is not _Waiting or w.loop is not _get_running_loop():
            w = self._waiting_slow(False)
        if w.state == _DONE:
            return w.exc
        if w.state == _CANCELLED:
            raise w.exc  # type: ignore[misc]
        raise asyncio.InvalidStateError("Exception is not set.")

    def cancel(self, msg: Any = None) -> bool:
        """Stop waiting here; the task that produces the object keeps running."""
        w = self._waiting()
        if w.state:
            return False
        exc = asyncio.CancelledError(msg) if msg else asyncio.CancelledError()
        w.finish(self, _CANCELLED, None, exc)
        return True

    def future(self) -> concurrent.futures.Future[Any]:
        """A concurrent.futures.Future that resolves to the value (or its error)."""
        from aioray import api

        return api.get_future(self)


_PENDING, _DONE, _CANCELLED = 0, 1, 2


class _Waiting:
    """The future state of one ObjectRef on one event loop (see ObjectRef._waiting).

    It does not point back at its ref (the ref points at it): whoever resolves it
    passes the ref, so a pending state never keeps a ref, and its object, alive.
    The loop's fetcher settles these in batches and runs their callbacks together.
    """

    __slots__ = ("callbacks", "exc", "loop", "state", "value")

    def __init__(self, loop: asyncio.AbstractEventLoop, callbacks: list[tuple[Any, Any]]) -> None:
        self.loop = loop
        self.state = _PENDING
        self.value: Any = None
        self.exc: BaseException | None = None
        self.callbacks = callbacks

    def finish(self, ref: ObjectRef, state: int, value: Any, exc: BaseException | None) -> None:
        """Settle now and schedule each callback (the unbatched path)."""
        if self.state:
            return
        self.state, self.value, self.exc = state, value, exc
        callbacks, self.callbacks = self.callbacks, []
        call_soon = self.loop.call_soon
        for fn, ctx in callbacks:
            call_soon(fn, ref, context=ctx)


def _fetcher() -> Any:
    """The running loop's LoopFetcher (async_api is resolved once: it imports us)."""
    global _async_api
    if _async_api is None:
        from aioray import async_api

        _async_api = async_api
    return _async_api.fetcher_for_running_loop()


def _rebuild_ref(object_id: bytes, owner: tuple[str, int, bytes] | None) -> ObjectRef:
    if owner is not None:
        owner = (owner[0], owner[1], owner[2])
    return ObjectRef(object_id, owner)
