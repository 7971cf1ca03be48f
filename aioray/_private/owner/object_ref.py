"""ObjectRef: the user's handle to an object, counted by its process's CoreWorker.

An ObjectRef is also an asyncio future: it subclasses ``asyncio.Future`` (the C
implementation), so ``asyncio.wait([ref])``, ``gather``, ``wait_for`` and
``as_completed`` take it on Python 3.11+, where plain awaitables are refused, and
their per-ref calls (``add_done_callback``'s scheduling, ``cancelled``, ``exception``,
``result``) run in C. The future state is bound lazily to the loop that first waits on
the ref and is resolved by that loop's fetcher (async_api.py). Cancelling it stops
that wait, never the task that produces the object (as in Ray).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from asyncio.events import _get_running_loop
from collections.abc import Callable, Generator
from threading import get_ident as _get_ident
from typing import TYPE_CHECKING, Any, NoReturn

from aioray._private.owner import object_waits, worker_context
from aioray._private.wire import config, ids, serialization
from aioray.exceptions import OufOfBandObjectRefSerializationException

if TYPE_CHECKING:
    from aioray._private.owner.core_worker import CoreWorker


def _no_fetcher() -> Any:
    raise RuntimeError("aioray.async_api is not imported (import aioray does it)")


# The running loop's LoopFetcher (outside a running loop, that of get_event_loop()):
# aioray.async_api, which owns the fetchers and builds on this module, sets it at import.
fetcher_for_running_loop: Callable[[], Any] = _no_fetcher

_Future = asyncio.Future
_future_init = _Future.__init__
_future_done = _Future.done
_future_cancelled = _Future.cancelled
_future_cancel = _Future.cancel
_future_add_done_callback = _Future.add_done_callback


# Each thread's running loop's fetcher. On Python 3.11 asyncio's _get_running_loop
# asks the kernel for the pid on every call inside a running loop (~0.5 us here), and
# gather uses a ref as a future two or three times; this lookup costs ~0.1 us. An entry
# is trusted while its loop runs (a loop stopped in this thread and restarted in
# another while this one runs a third would fool it; uvloop does not say which thread
# runs it). async_api fills it; a new CoreWorker empties it.
running_fetchers: dict[int, Any] = {}


def set_core_worker(cw: CoreWorker | None) -> None:
    """Make ``cw`` this process's CoreWorker (worker_context holds it), or none."""
    worker_context.core_worker = cw
    running_fetchers.clear()


class ObjectRef(_Future):
    """A reference to an object in the cluster: a future for a task's result or a put value."""

    __slots__ = ("_cw", "_id", "_owner")

    def __init__(
        self,
        object_id: bytes,
        owner: tuple[str, int, bytes] | None = None,
        _count: bool = True,
    ) -> None:
        # No Future.__init__: the future state is bound on first wait (_bind), so a ref
        # that is never awaited costs nothing for it.
        self._id = object_id
        self._owner = owner
        cw = worker_context.core_worker
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
        """The object id as bytes (24: the id of the task that makes it, then an index)."""
        return self._id

    def hex(self) -> str:
        """The object id in hexadecimal."""
        return self._id.hex()

    def task_id(self) -> ids.TaskID:
        """The id of the task that created the object (a put has an id of its own, made
        like a task's, with its caller's job)."""
        return ids.TaskID(ids.task_id_of(self._id))

    def job_id(self) -> ids.JobID:
        """The job of the task (or put) that created the object, read from its id."""
        return ids.JobID(ids.job_id_of(self._id))

    @classmethod
    def from_hex(cls, hex_id: str) -> ObjectRef:
        """The ref whose ``hex()`` is ``hex_id`` (its owner unknown, as in Ray)."""
        return cls.from_binary(ids.ObjectID.from_hex(hex_id).binary())

    @classmethod
    def from_binary(cls, object_id: bytes) -> ObjectRef:
        """An ObjectRef for the object id given as its raw bytes (validated by ``ObjectID``)."""
        return cls(ids.ObjectID(object_id).binary())

    @classmethod
    def nil(cls) -> ObjectRef:
        """The nil ObjectRef (all-0xff id, no owner); it is not reference-counted."""
        return cls(ids.ObjectID.nil().binary(), None, _count=False)

    def is_nil(self) -> bool:
        """Whether this is the nil ref (every id byte 0xff), as from ``ObjectRef.nil()``."""
        return self._id == b"\xff" * ids.OBJECT_ID_SIZE

    @property
    def owner_address(self) -> tuple[str, int, bytes] | None:
        """``(ip, port, worker_id)`` of the process that owns the object; None for a ref made
        without one."""
        return self._owner

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectRef) and other._id == self._id

    def __hash__(self) -> int:
        return hash(self._id)

    def __repr__(self) -> str:
        return f"ObjectRef({self._id.hex()})"

    # (_repr_html_, the notebook view, is set by aioray._html, which renders above this floor)

    def __reduce__(self) -> Any:
        if not serialization.record_ref(self):
            _pickled_out_of_band(self)
        return (_rebuild_ref, (self._id, self._owner))

    def __await__(self) -> Generator[Any, None, Any]:
        # Each await gets a future of its own: cancelling one awaiter cancels no other,
        # and any number of loops may await the same ref at once.
        return _current_fetcher().future(self).__await__()

    __iter__ = __await__

    def as_future(self) -> asyncio.Future[Any]:
        """A new asyncio future on the running loop that resolves to the value."""
        return _current_fetcher().future(self)

    # -- the asyncio.Future protocol ----------------------------------------------------------
    # get_loop and add_done_callback are where asyncio starts using a ref as a future:
    # they bind its state to the running loop's fetcher (which resolves it and batches its
    # callbacks: async_api.LoopFetcher) and start its fetch; the rest is the C Future's.
    def get_loop(self) -> asyncio.AbstractEventLoop:
        """(asyncio.Future protocol) The running loop; binds the ref's future state to that loop's
        fetcher and starts fetching the value."""
        f = running_fetchers.get(_get_ident())
        if f is not None and f.loop_running():
            bound: Any = self._loop
            if bound is None:  # the first wait on a fresh ref: gather's common case
                _future_init(self, loop=f)
                f.fresh = self  # (gather, wait_for and as_completed add a callback next)
                f.watch(self, self)
                return f.loop
            if bound is f and not _future_cancelled(self):
                return f.loop
        fetcher = self._bind()
        running = _get_running_loop()
        # (a state done on another loop stays bound there, and serves this one too)
        return running if running is not None else fetcher.loop

    def add_done_callback(self, fn: Any, *, context: Any = None) -> None:
        """(asyncio.Future protocol) Call ``fn(ref)`` on the running loop once the value (or its
        error) is there; starts the fetch."""
        bound: Any = self._loop
        if bound is not None and bound.fresh is self:
            # get_loop has just bound this ref on the running loop: that was checked.
            bound.fresh = None
            _future_add_done_callback(self, fn, context=context)
            return
        f: Any = running_fetchers.get(_get_ident())
        if f is None or bound is not f or _future_cancelled(self) or not f.loop_running():
            fetcher = self._bind()
            running = _get_running_loop()
            if running is not None and fetcher.loop is not running:  # done on another loop
                running.call_soon(fn, self, context=context)
                return
        _future_add_done_callback(self, fn, context=context)

    def done(self) -> bool:
        """True once the value (or its error) has arrived on this loop; the first call starts the
        fetch."""
        if self._loop is None:
            self._bind()
        return _future_done(self)

    def _bind(self) -> Any:
        """Bind the future state to the running loop's fetcher, and start its fetch.

        A state bound to another loop is replaced, unless it is done (a value is the
        same on every loop) or another live loop is waiting on it (an asyncio future
        has one loop: that is an error). A cancelled state is replaced too: a timed-out
        wait must not poison the next one."""
        fetcher = _current_fetcher()
        bound: Any = self._loop
        if bound is fetcher:
            if not _future_cancelled(self):
                return fetcher
        elif bound is not None:
            if _future_done(self) and not _future_cancelled(self):
                return bound
            if not _future_done(self) and not bound.is_closed() and self._callbacks:
                raise RuntimeError(
                    f"{self!r} is already waited on as a future by another event loop "
                    f"({bound.loop!r}); an asyncio future belongs to one loop. Use "
                    "`await ref` or `ref.as_future()` on each loop instead."
                )
        _future_init(self, loop=fetcher)
        fetcher.watch(self, self)
        return fetcher

    def cancel(self, msg: Any = None) -> bool:
        """Cancel the waits on this ref (never the task: use ``aioray.cancel``).

        False when nothing waits on it yet, or the wait is already done."""
        if self._loop is None:
            return False
        return _future_cancel(self, msg)

    def set_result(self, result: Any) -> NoReturn:
        """Refused: an ObjectRef's value comes from the task or put that creates it (TypeError)."""
        raise TypeError("An ObjectRef's value is set by the task or put that creates it.")

    def set_exception(self, exception: Any) -> NoReturn:
        """Refused: an ObjectRef's value comes from the task or put that creates it (TypeError)."""
        raise TypeError("An ObjectRef's value is set by the task or put that creates it.")

    def future(self) -> concurrent.futures.Future[Any]:
        """A concurrent.futures.Future that resolves to the value (or its error)."""
        return object_waits.get_future(self)


def _current_fetcher() -> Any:
    """The running loop's LoopFetcher; outside a running loop, that of the loop
    asyncio.get_event_loop() gives (async_api sets the hook: it imports us)."""
    f = running_fetchers.get(_get_ident())
    if f is not None and f.loop_running():
        return f
    return fetcher_for_running_loop()


def _pickled_out_of_band(ref: ObjectRef) -> None:
    """A ref pickled outside aioray's serialization: no one will hold the object for the
    reader, so (as Ray) this process pins it for good, or refuses when
    RAY_allow_out_of_band_object_ref_serialization is off."""
    if not config.ALLOW_OUT_OF_BAND_OBJECT_REF_SERIALIZATION:
        raise OufOfBandObjectRefSerializationException(
            f"It is not allowed to serialize ray.ObjectRef {ref.hex()}. If you want to allow "
            "serialization, set `RAY_allow_out_of_band_object_ref_serialization=1.` If you set "
            "the env var, the object is pinned forever in the lifetime of the worker process "
            "and can cause Ray object leaks."
        )
    cw = ref._cw
    if cw is not None:
        cw.refs.pin((ref._id,))


def _rebuild_ref(object_id: bytes, owner: tuple[str, int, bytes] | None) -> ObjectRef:
    if owner is not None:
        owner = (owner[0], owner[1], owner[2])
    return ObjectRef(object_id, owner)
