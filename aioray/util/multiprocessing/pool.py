"""``Pool``: ``multiprocessing.Pool``'s API over actors, as Ray's ``ray.util.multiprocessing``.

Each of the pool's processes is an actor that runs the initializer once and then
chunks of calls. A map is cut into chunks (the stdlib's default size: a quarter of
an even share per process), dealt round-robin to the actors; the function travels
once per map through the object store. A call's exception comes back as a value
and is raised, with its own class, where the stdlib raises it."""

from __future__ import annotations

import itertools
import multiprocessing
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import aioray as ray
from aioray.exceptions import GetTimeoutError

RUN, CLOSE, TERMINATE = "RUN", "CLOSE", "TERMINATE"
_PRUNE_AT = 1000  # outstanding refs kept for join before the finished ones are dropped


MAP, STAR, APPLY = 0, 1, 2  # how a batch's items are calls: f(x), f(*x), f(*args, **kwargs)


class _Mixed:
    """A batch in which some call raised: ``(ok, result or exception)`` per call."""

    __slots__ = ("pairs",)

    def __init__(self, pairs: list[tuple[bool, Any]]) -> None:
        self.pairs = pairs

    def __reduce__(self) -> Any:
        return (_Mixed, (self.pairs,))


class PoolActor:
    """One of the pool's processes."""

    def __init__(self, initializer: Callable[..., Any] | None, initargs: tuple[Any, ...]):
        if initializer is not None:
            initializer(*initargs)

    def ping(self) -> None:
        """Do nothing; the pool calls it to wait until the actor is up (and initialized)."""
        return None

    def run_batch(self, func: Callable[..., Any], batch: list[Any], mode: int) -> Any:
        """The calls' results, a plain list (cheapest to send) unless one raised; each
        call runs once."""
        results: list[Any] = []
        add = results.append
        try:
            if mode == MAP:
                for x in batch:
                    add(func(x))
            elif mode == STAR:
                for x in batch:
                    add(func(*x))
            else:
                for args, kwargs in batch:
                    add(func(*args, **kwargs))
            return results
        except Exception as e:
            pairs: list[tuple[bool, Any]] = [(True, r) for r in results]
            pairs.append((False, e))
            pairs.extend(self._call(func, item, mode) for item in batch[len(results) + 1 :])
            return _Mixed(pairs)

    @staticmethod
    def _call(func: Callable[..., Any], item: Any, mode: int) -> tuple[bool, Any]:
        try:
            if mode == MAP:
                return True, func(item)
            if mode == STAR:
                return True, func(*item)
            return True, func(*item[0], **item[1])
        except Exception as e:
            return False, e


_RemotePoolActor = ray.remote(PoolActor)


def _pairs(chunk: Any) -> list[tuple[bool, Any]]:
    return chunk.pairs if isinstance(chunk, _Mixed) else [(True, v) for v in chunk]


def _unpack(chunk: Any) -> list[Any]:
    """The chunk's results; raises the first call's exception (as the stdlib does)."""
    if not isinstance(chunk, _Mixed):
        return list(chunk)
    out = []
    for ok, value in chunk.pairs:
        if not ok:
            raise value
        out.append(value)
    return out


class AsyncResult:
    """The result of ``apply_async``/``map_async``: ``get``, ``wait``, ``ready``,
    ``successful`` as multiprocessing's; callbacks run in a helper thread."""

    def __init__(
        self,
        refs: list[ray.ObjectRef],
        single: bool,
        callback: Callable[[Any], Any] | None = None,
        error_callback: Callable[[BaseException], Any] | None = None,
    ) -> None:
        self._refs = refs
        self._single = single
        self._lock = threading.Lock()
        self._done = False
        self._value: Any = None
        self._error: BaseException | None = None
        if callback is not None or error_callback is not None:
            threading.Thread(
                target=self._call_back, args=(callback, error_callback), daemon=True
            ).start()

    def _collect(self, timeout: float | None) -> None:
        with self._lock:
            if self._done:
                return
            try:
                chunks = ray.get(self._refs, timeout=timeout)
            except GetTimeoutError:
                raise multiprocessing.TimeoutError from None
            try:
                values = [v for chunk in chunks for v in _unpack(chunk)]
                self._value = values[0] if self._single else values
            except Exception as e:
                self._error = e
            self._done = True

    def _call_back(self, callback: Any, error_callback: Any) -> None:
        try:
            self._collect(None)
        except Exception as e:  # the pool was terminated: nothing to call back
            self._error, self._done = e, True
        if self._error is None:
            if callback is not None:
                callback(self._value)
        elif error_callback is not None:
            error_callback(self._error)

    def get(self, timeout: float | None = None) -> Any:
        """The result (a list, for the map variants), waiting up to ``timeout`` seconds;
        re-raises a task's exception, raises ``multiprocessing.TimeoutError`` on timeout."""
        self._collect(timeout)
        if self._error is not None:
            raise self._error
        return self._value

    def wait(self, timeout: float | None = None) -> None:
        """Wait until the result is ready, or ``timeout`` seconds have passed."""
        ray.wait(self._refs, num_returns=len(self._refs), timeout=timeout)

    def ready(self) -> bool:
        """Whether every task behind this result has finished (without waiting)."""
        ready, _ = ray.wait(self._refs, num_returns=len(self._refs), timeout=0)
        return len(ready) == len(self._refs)

    def successful(self) -> bool:
        """Whether the call finished without raising; ValueError if it is not ready yet."""
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        self._collect(None)
        return self._error is None


class IMapIterator:
    """``imap``'s (ordered) or ``imap_unordered``'s iterator; ``next(timeout)`` too."""

    def __init__(self, refs: list[ray.ObjectRef], ordered: bool) -> None:
        self._pending = list(refs)
        self._ordered = ordered
        self._buffer: list[tuple[bool, Any]] = []

    def __iter__(self) -> IMapIterator:
        return self

    def __next__(self) -> Any:
        return self.next()

    def next(self, timeout: float | None = None) -> Any:
        """The next result (in order, or as finished for ``imap_unordered``), waiting up to
        ``timeout`` seconds: ``multiprocessing.TimeoutError`` then; StopIteration at the end."""
        while not self._buffer:
            if not self._pending:
                raise StopIteration
            if self._ordered:
                ref = self._pending[0]
                ready, _ = ray.wait([ref], timeout=timeout)
            else:
                ready, _ = ray.wait(self._pending, num_returns=1, timeout=timeout)
            if not ready:
                raise multiprocessing.TimeoutError
            self._pending.remove(ready[0])
            self._buffer = _pairs(ray.get(ready[0]))
        ok, value = self._buffer.pop(0)
        if not ok:
            raise value
        return value


class Pool:
    """A pool of actors with ``multiprocessing.Pool``'s API (Ray's Pool).

    Connects to the cluster at ``ray_address`` (or the running one, or starts one);
    ``processes`` defaults to the cluster's CPUs; ``ray_remote_args`` are the actors'
    options."""

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: Iterable[Any] | None = None,
        maxtasksperchild: int | None = None,
        context: Any = None,
        ray_address: str | None = None,
        ray_remote_args: dict[str, Any] | None = None,
    ) -> None:
        self._state = TERMINATE  # until started: __del__ and terminate see nothing to do
        if processes is not None and (not isinstance(processes, int) or processes < 1):
            raise ValueError("Number of processes must be at least 1")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if maxtasksperchild is not None and (
            not isinstance(maxtasksperchild, int) or maxtasksperchild <= 0
        ):
            raise ValueError("maxtasksperchild must be a positive int or None")
        if not ray.is_initialized():
            ray.init(address=ray_address)
        if processes is None:
            processes = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self._processes = processes
        self._initializer = initializer
        self._initargs = tuple(initargs or ())
        self._maxtasks = maxtasksperchild
        self._actor_options = dict(ray_remote_args or {})  # (Ray: the default actor options)
        self._actors = [self._new_actor() for _ in range(processes)]
        self._counts = [0] * processes
        self._next = itertools.count()
        self._outstanding: list[ray.ObjectRef] = []
        self._state = RUN
        ray.get([a.ping.remote() for a in self._actors])  # the initializers ran

    def _new_actor(self) -> Any:
        return _RemotePoolActor.options(**self._actor_options).remote(
            self._initializer, self._initargs
        )

    def _check_running(self) -> None:
        if self._state != RUN:
            raise ValueError("Pool not running")

    # -- submitting ---------------------------------------------------------------------
    def _submit(
        self, func: Any, calls: list[Any], chunksize: int, mode: int
    ) -> list[ray.ObjectRef]:
        func_ref = ray.put(func) if len(calls) > chunksize else func
        refs = []
        for start in range(0, len(calls), chunksize):
            chunk = calls[start : start + chunksize]
            i = next(self._next) % self._processes
            if self._maxtasks is not None and self._counts[i] >= self._maxtasks:
                self._actors[i] = self._new_actor()  # the old one ends after its queue
                self._counts[i] = 0
            self._counts[i] += len(chunk)
            refs.append(self._actors[i].run_batch.remote(func_ref, chunk, mode))
        if len(self._outstanding) > _PRUNE_AT:  # (join waits on these; drop the done)
            n = len(self._outstanding)
            self._outstanding = ray.wait(self._outstanding, num_returns=n, timeout=0)[1]
        self._outstanding.extend(refs)
        return refs

    def _chunksize(self, n: int, chunksize: int | None) -> int:
        if chunksize is None:
            chunksize, extra = divmod(n, self._processes * 4)
            if extra:
                chunksize += 1
        elif not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize!r}")
        if self._maxtasks is not None:
            chunksize = min(chunksize, self._maxtasks)
        return max(1, chunksize)

    def apply(self, func: Callable[..., Any], args: Iterable[Any] = (), kwds: Any = None) -> Any:
        """Run ``func(*args, **kwds)`` on a pool actor and return its result (blocks)."""
        return self.apply_async(func, args, kwds).get()

    def apply_async(
        self,
        func: Callable[..., Any],
        args: Iterable[Any] = (),
        kwds: dict[str, Any] | None = None,
        callback: Callable[[Any], Any] | None = None,
        error_callback: Callable[[BaseException], Any] | None = None,
    ) -> AsyncResult:
        """Submit ``func(*args, **kwds)`` to a pool actor; returns an AsyncResult, calling
        ``callback`` with the result or ``error_callback`` with the exception."""
        self._check_running()
        refs = self._submit(func, [(tuple(args), dict(kwds or {}))], 1, APPLY)
        return AsyncResult(refs, True, callback, error_callback)

    def map(
        self, func: Callable[[Any], Any], iterable: Iterable[Any], chunksize: int | None = None
    ) -> list[Any]:
        """``[func(x) for x in iterable]`` run in chunks across the pool's actors (blocks)."""
        return self.map_async(func, iterable, chunksize).get()

    def map_async(
        self,
        func: Callable[[Any], Any],
        iterable: Iterable[Any],
        chunksize: int | None = None,
        callback: Callable[[Any], Any] | None = None,
        error_callback: Callable[[BaseException], Any] | None = None,
    ) -> AsyncResult:
        """Submit ``func`` over ``iterable`` in chunks; returns an AsyncResult of the list of
        results in order (``callback``/``error_callback`` as for ``apply_async``)."""
        self._check_running()
        calls = list(iterable)
        refs = self._submit(func, calls, self._chunksize(len(calls), chunksize), MAP)
        return AsyncResult(refs, False, callback, error_callback)

    def starmap(
        self,
        func: Callable[..., Any],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
    ) -> list[Any]:
        """Like ``map`` but each item is an argument tuple:
        ``[func(*args) for args in iterable]`` (blocks)."""
        return self.starmap_async(func, iterable, chunksize).get()

    def starmap_async(
        self,
        func: Callable[..., Any],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        callback: Callable[[Any], Any] | None = None,
        error_callback: Callable[[BaseException], Any] | None = None,
    ) -> AsyncResult:
        """Like ``map_async`` but each item is an argument tuple, called as ``func(*args)``."""
        self._check_running()
        calls = [tuple(args) for args in iterable]
        refs = self._submit(func, calls, self._chunksize(len(calls), chunksize), STAR)
        return AsyncResult(refs, False, callback, error_callback)

    def imap(
        self, func: Callable[[Any], Any], iterable: Iterable[Any], chunksize: int = 1
    ) -> Iterator[Any]:
        """Like ``map`` but lazy: an iterator of the results in input order, as they come."""
        self._check_running()
        calls = list(iterable)
        refs = self._submit(func, calls, self._chunksize(len(calls), chunksize), MAP)
        return IMapIterator(refs, True)

    def imap_unordered(
        self, func: Callable[[Any], Any], iterable: Iterable[Any], chunksize: int = 1
    ) -> Iterator[Any]:
        """Like ``imap`` but yields the results in the order they finish."""
        self._check_running()
        calls = list(iterable)
        refs = self._submit(func, calls, self._chunksize(len(calls), chunksize), MAP)
        return IMapIterator(refs, False)

    # -- lifecycle ----------------------------------------------------------------------
    def close(self) -> None:
        """No more work: the actors finish what was submitted (``join`` waits for it)."""
        if self._state == RUN:
            self._state = CLOSE

    def terminate(self) -> None:
        """Stop at once: the actors are killed; outstanding work fails."""
        if self._state == TERMINATE and not getattr(self, "_actors", None):
            return
        self._state = TERMINATE
        for actor in self._actors:
            ray.kill(actor)
        self._actors = []
        self._outstanding = []

    def join(self) -> None:
        """Wait for the submitted work, after ``close`` (or ``terminate``)."""
        if self._state == RUN:
            raise ValueError("Pool is still running")
        if self._outstanding:
            ray.wait(self._outstanding, num_returns=len(self._outstanding))
        self._outstanding = []
        if self._state == CLOSE:
            self._actors = []  # (their handles gone, the actors end)

    def __enter__(self) -> Pool:
        self._check_running()
        return self

    def __exit__(self, *exc: object) -> None:
        self.terminate()

    def __repr__(self) -> str:
        return f"<aioray.util.multiprocessing.Pool state={self._state} pool_size={self._processes}>"
