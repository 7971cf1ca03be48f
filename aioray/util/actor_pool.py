"""ActorPool (aioray.util.ActorPool): spread calls over a fixed set of actors.

Pure bookkeeping on the public API: an actor is busy from submit() until its result is
taken with get_next*(); calls beyond the idle actors wait in a FIFO. It imports
aioray.api, never the aioray package (which imports aioray.util, hence this module).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import aioray.api as api
from aioray.exceptions import ActorDiedError

V = TypeVar("V")

# What ``fn(actor, value)`` returns: one ObjectRef, or a list of them for a method
# with num_returns > 1. A list is keyed by the tuple of its refs.
Future = Any
SubmitFn = Callable[[Any, Any], Future]

_TIMEOUT_MSG = "Timed out waiting for result"


def _key(future: Future) -> Any:
    return tuple(future) if isinstance(future, list) else future


def _refs(key: Any) -> tuple[Any, ...]:
    return key if isinstance(key, tuple) else (key,)


class ActorPool:
    """Run ``fn(actor, value)`` calls on a fixed pool of actors, one call per actor.

    Args:
        actors: the actor handles to use.

    Example::

        pool = ActorPool([Doubler.remote(), Doubler.remote()])
        list(pool.map(lambda a, v: a.double.remote(v), [1, 2, 3, 4]))  # [2, 4, 6, 8]
    """

    def __init__(self, actors: Iterable[Any]) -> None:
        self._idle_actors: list[Any] = list(actors)
        # future key -> (submission index, actor running it), in submission order
        self._future_to_actor: dict[Any, tuple[int, Any]] = {}
        self._index_to_future: dict[int, Future] = {}
        self._next_task_index = 0
        self._next_return_index = 0
        self._pending_submits: list[tuple[SubmitFn, Any]] = []
        self._ready_refs: set[Any] = set()

    def __repr__(self) -> str:
        return (
            f"<ActorPool idle={len(self._idle_actors)} busy={len(self._future_to_actor)} "
            f"queued={len(self._pending_submits)}>"
        )

    # -- bulk ---------------------------------------------------------------------------------
    def map(self, fn: Callable[[Any, V], Any], values: Iterable[V]) -> Iterator[Any]:
        """Apply ``fn(actor, value)`` over ``values``; iterate the results in order.

        All values are submitted at once; results not yet taken from earlier
        submissions are discarded first (a still-running one is ignored).
        """
        return self._map(fn, values, self.get_next)

    def map_unordered(self, fn: Callable[[Any, V], Any], values: Iterable[V]) -> Iterator[Any]:
        """Like map(), but yields each result as soon as it is ready, in any order."""
        return self._map(fn, values, self.get_next_unordered)

    def _map(
        self, fn: Callable[[Any, V], Any], values: Iterable[V], take: Callable[..., Any]
    ) -> Iterator[Any]:
        while self.has_next():
            try:
                take(timeout=0, ignore_if_timedout=True)
            except TimeoutError:
                pass
        for value in values:
            self.submit(fn, value)

        def results() -> Iterator[Any]:
            while self.has_next():
                yield take()

        return results()

    # -- one at a time ------------------------------------------------------------------------
    def submit(self, fn: Callable[[Any, V], Any], value: V) -> None:
        """Run ``fn(actor, value)`` on an idle actor, or queue it until one is free.

        ``fn`` must return the ObjectRef (or list of ObjectRefs) of the call; the
        result is taken with get_next() or get_next_unordered().
        """
        if not self._idle_actors:
            self._pending_submits.append((fn, value))
            return
        actor = self._idle_actors.pop()
        future = fn(actor, value)
        self._future_to_actor[_key(future)] = (self._next_task_index, actor)
        self._index_to_future[self._next_task_index] = future
        self._next_task_index += 1

    def has_next(self) -> bool:
        """Whether any submitted call has a result not yet returned."""
        return bool(self._future_to_actor)

    def get_next(self, timeout: float | None = None, ignore_if_timedout: bool = False) -> Any:
        """Return the result of the oldest call not yet returned, in submission order.

        Raises:
            StopIteration: nothing has been submitted that was not yet returned.
            ValueError: get_next_unordered() already returned the next in order.
            TimeoutError: the result is not ready within ``timeout`` seconds. With
                ``ignore_if_timedout=True`` the call is dropped (its actor goes back
                to the pool) before raising.
        """
        if not self.has_next():
            raise StopIteration("No more results to get")
        future = self._index_to_future.get(self._next_return_index)
        if future is None:
            raise ValueError("It is not allowed to call get_next() after get_next_unordered().")
        timed_out = False
        if timeout is not None:
            refs = list(_refs(_key(future)))
            ready, _ = api.wait(refs, num_returns=len(refs), timeout=timeout)
            if len(ready) < len(refs):
                if not ignore_if_timedout:
                    raise TimeoutError(_TIMEOUT_MSG)
                timed_out = True
        del self._index_to_future[self._next_return_index]
        self._next_return_index += 1
        _, actor = self._pop_future(_key(future))
        if timed_out:
            self._return_actor(actor)
            raise TimeoutError(f"{_TIMEOUT_MSG}. The task {future} has been ignored.")
        return self._get_result(future, actor)

    def get_next_unordered(
        self, timeout: float | None = None, ignore_if_timedout: bool = False
    ) -> Any:
        """Return the result of any finished call (the oldest finished one first).

        Raises:
            StopIteration: nothing has been submitted that was not yet returned.
            TimeoutError: no call finishes within ``timeout`` seconds. With
                ``ignore_if_timedout=True`` the oldest call is dropped (its actor
                goes back to the pool) before raising.
        """
        if not self.has_next():
            raise StopIteration("No more results to get")
        key = self._wait_for_any(timeout)
        timed_out = key is None
        if key is None:
            if not ignore_if_timedout:
                raise TimeoutError(_TIMEOUT_MSG)
            key = next(iter(self._future_to_actor))
        index, actor = self._pop_future(key)
        future = self._index_to_future.pop(index)
        self._next_return_index = max(self._next_return_index, index + 1)
        if timed_out:
            self._return_actor(actor)
            raise TimeoutError(f"{_TIMEOUT_MSG}. The task {future} has been ignored.")
        return self._get_result(future, actor)

    # -- membership ---------------------------------------------------------------------------
    def has_free(self) -> bool:
        """Whether an actor is idle and no submitted call is waiting for one."""
        return bool(self._idle_actors) and not self._pending_submits

    def pop_idle(self) -> Any | None:
        """Remove an idle actor from the pool and return it; None if none is free."""
        if self.has_free():
            return self._idle_actors.pop()
        return None

    def push(self, actor: Any) -> None:
        """Add ``actor`` to the pool as idle (it takes a queued call at once, if any).

        Raises:
            ValueError: the actor already belongs to this pool.
        """
        busy = [a for _, a in self._future_to_actor.values()]
        if actor in self._idle_actors or actor in busy:
            raise ValueError("Actor already belongs to current ActorPool")
        self._return_actor(actor)

    # -- internals ----------------------------------------------------------------------------
    def _wait_for_any(self, timeout: float | None) -> Any | None:
        """The key of the oldest call whose refs are all ready, or None on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            for key in self._future_to_actor:
                if all(ref in self._ready_refs for ref in _refs(key)):
                    return key
            pending = [
                ref
                for key in self._future_to_actor
                for ref in _refs(key)
                if ref not in self._ready_refs
            ]
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _ = api.wait(pending, num_returns=1, timeout=left)
            if not ready:
                return None
            self._ready_refs.update(ready)

    def _pop_future(self, key: Any) -> tuple[int, Any]:
        self._ready_refs.difference_update(_refs(key))
        return self._future_to_actor.pop(key)

    def _get_result(self, future: Future, actor: Any) -> Any:
        alive = True
        try:
            return api.get(future)
        except ActorDiedError:
            alive = False  # a dead actor would take every later call and fail it
            raise
        finally:
            self._return_actor(actor, alive)

    def _return_actor(self, actor: Any, alive: bool = True) -> None:
        if alive:
            self._idle_actors.append(actor)
        if self._pending_submits and self._idle_actors:
            self.submit(*self._pending_submits.pop(0))
