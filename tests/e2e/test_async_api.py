"""End-to-end tests of the asyncio face of aioray: awaiting refs, the *_async API,
ray.util.as_completed / map_unordered, and the warning for a blocking get on a loop.

Every test body is a coroutine run by ``asyncio.run`` (the cluster fixtures are sync).
Tasks that must stay unfinished wait for a file in ``tmp_path``, which the test creates
when it is ready; the test side only ever waits with a deadline. The ``init_async``
tests start their own cluster, so they come before the first ``ray_shared`` test.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import os
import sys
import threading
import time
import warnings
import weakref
from pathlib import Path
from typing import Any

import pytest
from conftest import pending_owned_refs, store_on_core_loop, wait_for_condition

import aioray as ray
from aioray import api
from aioray._private.owner import object_ref
from aioray.exceptions import GetTimeoutError, RayTaskError
from aioray.util import as_completed, map_unordered

RAY_SHARED_INIT_KWARGS = {"num_cpus": 4}

DEADLINE_S = 20.0  # how long a gated task waits for its file before giving up


@ray.remote
def echo(x: Any) -> Any:
    return x


@ray.remote
def fail(message: str) -> None:
    raise KeyError(message)


@ray.remote
def after_file(path: str, value: Any) -> Any:
    """Return ``value`` once ``path`` exists (raise after DEADLINE_S so nothing hangs)."""
    deadline = time.monotonic() + DEADLINE_S
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.01)
    return value


@ray.remote
def start_then_return(job: tuple[str, int]) -> int:
    """Record that the task for ``job = (directory, item)`` started (a file); return item."""
    started_dir, item = job
    Path(started_dir, f"started_{item}").touch()
    return item


def _started(directory: Path) -> int:
    return sum(1 for name in os.listdir(directory) if name.startswith("started_"))


# -------------------------------------------------------- init_async (own cluster)


def test_async_with_init_async_starts_and_shuts_down_a_cluster() -> None:
    async def main() -> None:
        async with ray.init_async(num_cpus=1) as ctx:
            assert ray.is_initialized()
            assert ctx["gcs_address"]
            assert await echo.remote(3) == 3
        assert not ray.is_initialized()

    asyncio.run(main())


def test_await_init_async_does_not_block_the_loop() -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    async def main() -> None:
        tick_task = asyncio.create_task(ticker())
        await asyncio.sleep(0)  # the ticker takes its first step
        before = ticks
        ctx = await ray.init_async(num_cpus=1)
        during_init = ticks - before
        try:
            assert ray.is_initialized()
            assert ctx["gcs_address"]
            assert await ray.get_async(echo.remote("x")) == "x"
        finally:
            await ray.shutdown_async()
            tick_task.cancel()
        assert not ray.is_initialized()
        # Starting daemons takes far longer than a few ms: a loop left free kept ticking.
        assert during_init >= 3, f"the loop ticked {during_init} times during init"

    asyncio.run(main())


# ---------------------------------------------------------- awaiting ObjectRefs


def test_object_ref_is_an_asyncio_future(ray_shared: Any) -> None:
    async def main() -> None:
        ref = echo.remote(1)
        assert asyncio.isfuture(ref)
        assert asyncio.ensure_future(ref) is ref
        assert await ref == 1
        assert await ref == 1  # awaiting twice is fine

    asyncio.run(main())


def test_await_gather_and_wait_for_on_the_driver_loop(ray_shared: Any) -> None:
    async def main() -> None:
        refs = [echo.remote(i) for i in range(20)]
        assert await asyncio.gather(*refs) == list(range(20))
        assert await asyncio.wait_for(echo.remote("w"), timeout=DEADLINE_S) == "w"
        same = echo.remote(5)
        assert await asyncio.gather(same, same) == [5, 5]

    asyncio.run(main())


def test_done_callbacks_get_the_ref_in_order_with_their_context(ray_shared: Any) -> None:
    # Callbacks of refs resolved together run as one batch: each still gets the ref
    # itself, in its own contextvars context, and one that raises reaches the loop's
    # exception handler without stopping the others.
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        errors: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
        refs = [echo.remote(i) for i in range(100)]
        seen: list[tuple[Any, str]] = []
        all_done = loop.create_future()

        def cb(ref: Any) -> None:
            seen.append((ref, var.get()))
            if len(seen) == len(refs):
                all_done.set_result(None)

        def bad(ref: Any) -> None:
            raise ValueError("boom")

        refs[0].add_done_callback(bad)
        for i, ref in enumerate(refs):
            ctx = contextvars.copy_context()
            ctx.run(var.set, f"v{i}")
            ref.add_done_callback(cb, context=ctx)
        await asyncio.wait_for(all_done, DEADLINE_S)
        assert {id(r) for r, _ in seen} == {id(r) for r in refs}
        assert sorted(v for _, v in seen) == sorted(f"v{i}" for i in range(100))
        assert all(r.done() and r.result() == i for i, r in enumerate(refs))
        assert any("boom" in str(e.get("exception")) for e in errors)

    asyncio.run(main())


def test_gather_raises_the_users_exception(ray_shared: Any) -> None:
    async def main() -> None:
        with pytest.raises(KeyError) as info:
            await asyncio.gather(echo.remote(1), fail.remote("bad"))
        assert isinstance(info.value, RayTaskError)
        results = await asyncio.gather(fail.remote("x"), echo.remote(2), return_exceptions=True)
        assert isinstance(results[0], KeyError)
        assert results[1] == 2

    asyncio.run(main())


@pytest.mark.skipif(sys.version_info < (3, 11), reason="the 3.11+ refusal of awaitables")
def test_asyncio_wait_accepts_refs_on_python_311(ray_shared: Any) -> None:
    async def main() -> None:
        refs = [echo.remote(i) for i in range(5)]
        done, pending = await asyncio.wait(refs, timeout=DEADLINE_S)
        assert not pending
        assert done == set(refs)  # the refs themselves, not wrappers
        assert sorted(r.result() for r in done) == list(range(5))

    asyncio.run(main())


def test_asyncio_wait_first_completed_leaves_the_slow_ref_pending(
    ray_shared: Any, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"

    async def main() -> None:
        slow = after_file.remote(str(gate), "slow")
        fast = echo.remote("fast")
        done, pending = await asyncio.wait(
            [slow, fast], timeout=DEADLINE_S, return_when=asyncio.FIRST_COMPLETED
        )
        assert done == {fast}
        assert pending == {slow}
        gate.touch()
        done, pending = await asyncio.wait([slow], timeout=DEADLINE_S)
        assert done == {slow}
        assert slow.result() == "slow"

    asyncio.run(main())


def test_asyncio_as_completed_yields_in_completion_order(ray_shared: Any, tmp_path: Path) -> None:
    gate = tmp_path / "gate"

    async def main() -> None:
        slow = after_file.remote(str(gate), "slow")
        fast = echo.remote("fast")
        order = []
        for next_done in asyncio.as_completed([slow, fast], timeout=DEADLINE_S):
            value = await next_done
            order.append(value)
            gate.touch()  # the slow one may finish only after the fast one arrived
        assert order == ["fast", "slow"]

    asyncio.run(main())


def test_cancelling_an_await_does_not_cancel_the_task(ray_shared: Any, tmp_path: Path) -> None:
    gate = tmp_path / "gate"

    async def main() -> None:
        ref = after_file.remote(str(gate), 42)

        async def waiter() -> Any:
            return await ref

        awaiting = asyncio.create_task(waiter())
        for _ in range(5):
            await asyncio.sleep(0)  # let it start awaiting
        awaiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await awaiting
        gate.touch()
        assert await ref == 42  # the task ran on and finished

    asyncio.run(main())
    assert ray.get(echo.remote(0)) == 0


def test_cancelling_the_ref_as_a_future_does_not_cancel_the_task(
    ray_shared: Any, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"

    async def main() -> None:
        ref = after_file.remote(str(gate), "kept")
        done, _ = await asyncio.wait([ref], timeout=0)
        assert not done
        ref.cancel()  # the Future protocol: stops this wait only
        gate.touch()
        assert await ref == "kept"

    asyncio.run(main())


def test_wait_for_timeout_raises_timeout_and_the_task_finishes(
    ray_shared: Any, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"

    async def main() -> None:
        ref = after_file.remote(str(gate), "late")
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(ref, timeout=0.05)
        gate.touch()
        assert await ref == "late"
        # A timed-out wait must not poison the ref for the asyncio.Future protocol.
        done, _ = await asyncio.wait([ref], timeout=DEADLINE_S)
        assert done == {ref}
        assert ref.result() == "late"

    asyncio.run(main())
    assert ray.get(echo.remote(0)) == 0


def test_a_ref_can_be_awaited_on_successive_loops(ray_shared: Any) -> None:
    ref = echo.remote("twice")

    async def main() -> Any:
        done, _ = await asyncio.wait([ref], timeout=DEADLINE_S)
        assert done == {ref}
        return await ref

    assert asyncio.run(main()) == "twice"
    assert asyncio.run(main()) == "twice"


def test_the_same_ref_awaited_from_two_loops_at_once(ray_shared: Any, tmp_path: Path) -> None:
    # `await ref` makes a future per await: any number of loops may await one ref.
    gate = tmp_path / "gate"
    ref = after_file.remote(str(gate), "both")
    waiting = threading.Barrier(3, timeout=DEADLINE_S)

    def on_own_loop() -> Any:
        async def main() -> Any:
            awaiting = asyncio.create_task(asyncio.wait_for(ref.as_future(), DEADLINE_S))
            await asyncio.sleep(0)
            waiting.wait()  # both loops wait before the task may finish
            return await awaiting

        return asyncio.run(main())

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(on_own_loop) for _ in range(2)]
        waiting.wait()
        gate.touch()
        assert [f.result(timeout=DEADLINE_S + 5) for f in futures] == ["both", "both"]


def test_a_ref_used_as_a_future_by_two_live_loops_at_once_is_a_clear_error(
    ray_shared: Any, tmp_path: Path
) -> None:
    # As a future (asyncio.wait, gather) the ref itself is the future, and an asyncio
    # future has one loop: a second live loop gets an error that says what to do.
    gate = tmp_path / "gate"
    ref = after_file.remote(str(gate), "one")
    first_waits = threading.Event()
    second_tried = threading.Event()

    def first() -> Any:
        async def main() -> Any:
            wait = asyncio.create_task(asyncio.wait([ref], timeout=DEADLINE_S))
            await asyncio.sleep(0)  # the wait registers its callback on the ref
            first_waits.set()
            await asyncio.to_thread(second_tried.wait, DEADLINE_S)
            gate.touch()
            done, _ = await wait
            return [r.result() for r in done]

        return asyncio.run(main())

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        result = pool.submit(first)
        assert first_waits.wait(DEADLINE_S)

        async def second() -> None:
            with pytest.raises(RuntimeError, match=r"another event loop.*await ref"):
                await asyncio.wait([ref], timeout=DEADLINE_S)

        try:
            asyncio.run(second())
        finally:
            second_tried.set()
        assert result.result(timeout=DEADLINE_S + 5) == ["one"]

    async def third() -> Any:  # once the value is in, any loop may use the ref
        done, _ = await asyncio.wait([ref], timeout=DEADLINE_S)
        return [r.result() for r in done], await asyncio.gather(ref)

    assert asyncio.run(third()) == (["one"], ["one"])


def test_ref_future_is_a_concurrent_future(ray_shared: Any) -> None:
    fut = echo.remote("cf").future()
    assert isinstance(fut, concurrent.futures.Future)
    assert fut.result(timeout=DEADLINE_S) == "cf"
    bad = fail.remote("oops").future()
    assert isinstance(bad.exception(timeout=DEADLINE_S), KeyError)

    async def main() -> Any:
        return await asyncio.wrap_future(echo.remote("wrapped").future())

    assert asyncio.run(main()) == "wrapped"


@ray.remote
class AsyncConsumer:
    """An async actor that awaits refs it is handed (inside a list, so unresolved)."""

    async def gather(self, refs: list[Any]) -> list[Any]:
        return await asyncio.gather(*refs)

    async def wait_all(self, refs: list[Any]) -> list[Any]:
        done, pending = await asyncio.wait(refs, timeout=DEADLINE_S)
        assert not pending
        return sorted(r.result() for r in done)

    async def first_completed(self, refs: list[Any]) -> Any:
        for next_done in asyncio.as_completed(refs, timeout=DEADLINE_S):
            return await next_done

    async def wait_for(self, ref: list[Any]) -> Any:
        return await asyncio.wait_for(ref[0], timeout=DEADLINE_S)

    async def submit_and_await(self, n: int) -> int:
        return sum(await asyncio.gather(*[echo.remote(i) for i in range(n)]))


def test_async_actor_awaits_refs(ray_shared: Any, tmp_path: Path) -> None:
    actor = AsyncConsumer.remote()
    refs = [echo.remote(i) for i in range(4)]
    assert ray.get(actor.gather.remote(refs), timeout=DEADLINE_S) == [0, 1, 2, 3]
    assert ray.get(actor.wait_all.remote(refs), timeout=DEADLINE_S) == [0, 1, 2, 3]
    assert ray.get(actor.wait_for.remote([echo.remote("w")]), timeout=DEADLINE_S) == "w"
    assert ray.get(actor.submit_and_await.remote(10), timeout=DEADLINE_S) == 45
    gate = tmp_path / "gate"
    slow = after_file.remote(str(gate), "slow")
    first = actor.first_completed.remote([slow, echo.remote("fast")])
    assert ray.get(first, timeout=DEADLINE_S) == "fast"
    gate.touch()
    assert ray.get(slow, timeout=DEADLINE_S) == "slow"
    ray.kill(actor)


@ray.remote
def task_with_its_own_loop(refs: list[Any]) -> dict[str, Any]:
    """A task that runs a user's event loop and awaits refs on it."""

    async def main() -> dict[str, Any]:
        gathered = await asyncio.gather(*refs)
        done, pending = await asyncio.wait(refs, timeout=DEADLINE_S)
        nested = await echo.remote("nested")
        timed = await asyncio.wait_for(echo.remote("timed"), timeout=DEADLINE_S)
        fetched = await ray.get_async(refs)
        return {
            "gathered": gathered,
            "done": len(done),
            "pending": len(pending),
            "nested": nested,
            "timed": timed,
            "fetched": fetched,
        }

    return asyncio.run(main())


def test_task_running_its_own_loop_awaits_refs(ray_shared: Any) -> None:
    refs = [echo.remote(i) for i in range(3)]
    result = ray.get(task_with_its_own_loop.remote(refs), timeout=DEADLINE_S)
    assert result == {
        "gathered": [0, 1, 2],
        "done": 3,
        "pending": 0,
        "nested": "nested",
        "timed": "timed",
        "fetched": [0, 1, 2],
    }


# ---------------------------------------------------------------- the *_async API


def test_get_async_single_list_and_error(ray_shared: Any) -> None:
    async def main() -> None:
        assert await ray.get_async(echo.remote("one")) == "one"
        assert await ray.get_async([echo.remote(1), echo.remote(2)]) == [1, 2]
        assert await ray.get_async([]) == []
        with pytest.raises(KeyError):
            await ray.get_async(fail.remote("bad"))
        with pytest.raises(TypeError):
            await ray.get_async(42)

    asyncio.run(main())


def test_get_async_timeout_raises_get_timeout_error(ray_shared: Any, tmp_path: Path) -> None:
    gate = tmp_path / "gate"

    async def main() -> None:
        ref = after_file.remote(str(gate), "eventually")
        with pytest.raises(GetTimeoutError) as info:
            await ray.get_async(ref, timeout=0.05)
        assert isinstance(info.value, TimeoutError)
        gate.touch()
        assert await ray.get_async(ref, timeout=DEADLINE_S) == "eventually"

    asyncio.run(main())


def test_put_async_round_trips_small_and_large_values(ray_shared: Any) -> None:
    async def main() -> None:
        small = await ray.put_async({"a": 1})
        assert isinstance(small, ray.ObjectRef)
        assert await small == {"a": 1}
        big = bytes(range(256)) * 40_000  # 10 MB: goes to shared memory
        ref = await ray.put_async(big)
        assert await ray.get_async(ref) == big
        assert await echo.remote(ref) == big  # usable as a task argument

    asyncio.run(main())


def test_wait_async_splits_ready_and_not_ready(ray_shared: Any, tmp_path: Path) -> None:
    gate = tmp_path / "gate"

    async def main() -> None:
        slow = after_file.remote(str(gate), "slow")
        fast = echo.remote("fast")
        ready, not_ready = await ray.wait_async([slow, fast], num_returns=1, timeout=DEADLINE_S)
        assert ready == [fast]
        assert not_ready == [slow]
        ready, not_ready = await ray.wait_async([slow], timeout=0.05)
        assert (ready, not_ready) == ([], [slow])
        gate.touch()
        ready, not_ready = await ray.wait_async(
            [slow, fast], num_returns=2, timeout=DEADLINE_S, fetch_local=False
        )
        assert ready == [slow, fast]  # input order
        assert not_ready == []
        assert await ray.get_async(ready) == ["slow", "fast"]
        with pytest.raises(ValueError):
            await ray.wait_async([fast], num_returns=2)

    asyncio.run(main())


# ------------------------------------------------- util.as_completed / map_unordered


def test_util_as_completed_sync_and_async_in_completion_order(
    ray_shared: Any, tmp_path: Path
) -> None:
    gates = [tmp_path / "gate_sync", tmp_path / "gate_async"]

    # for: the slow ref was submitted first but arrives last.
    slow = after_file.remote(str(gates[0]), "slow")
    order = []
    for value in as_completed([slow, echo.remote("fast")], chunk_size=1):
        order.append(value)
        gates[0].touch()
    assert order == ["fast", "slow"]

    async def main() -> list[Any]:
        slow = after_file.remote(str(gates[1]), "slow")
        seen = []
        async for ref in as_completed(
            [slow, echo.remote("fast")], chunk_size=1, yield_obj_refs=True
        ):
            assert isinstance(ref, ray.ObjectRef)
            seen.append(await ref)
            gates[1].touch()
        return seen

    assert asyncio.run(main()) == ["fast", "slow"]


def test_util_as_completed_yields_every_result_once(ray_shared: Any) -> None:
    refs = [echo.remote(i) for i in range(25)]
    assert sorted(as_completed(refs, chunk_size=4)) == list(range(25))

    async def main() -> list[Any]:
        return [v async for v in as_completed(refs, chunk_size=7)]

    assert sorted(asyncio.run(main())) == list(range(25))
    assert list(as_completed([])) == []


def test_util_as_completed_and_map_unordered_reject_chunk_size_below_1(
    ray_shared: Any,
) -> None:
    with pytest.raises(ValueError):
        list(as_completed([echo.remote(1)], chunk_size=0))
    with pytest.raises(ValueError):
        list(map_unordered(echo, [1, 2], chunk_size=0))
    with pytest.raises(ValueError):
        list(map_unordered(echo, [1, 2], backpressure_size=0))


def test_util_map_unordered_sync_and_async(ray_shared: Any) -> None:
    assert sorted(map_unordered(echo, range(30), chunk_size=3)) == list(range(30))
    refs = list(map_unordered(echo, range(5), yield_obj_refs=True))
    assert all(isinstance(r, ray.ObjectRef) for r in refs)
    assert sorted(ray.get(refs)) == list(range(5))

    async def main() -> list[Any]:
        return [v async for v in map_unordered(echo, range(30), backpressure_size=4)]

    assert sorted(asyncio.run(main())) == list(range(30))


class _Submissions:
    """Wraps a remote function to count submissions (map_unordered only calls .remote)."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.submitted = 0

    def remote(self, item: Any) -> Any:
        self.submitted += 1
        return self.fn.remote(item)


@pytest.mark.parametrize("backpressure", [1, 3])
def test_map_unordered_backpressure_bounds_tasks_started(
    ray_shared: Any, tmp_path: Path, backpressure: int
) -> None:
    items = 12
    fn = _Submissions(start_then_return)
    consumed = 0
    for _ in map_unordered(
        fn, [(str(tmp_path), i) for i in range(items)], backpressure_size=backpressure, chunk_size=1
    ):
        consumed += 1
        # Nothing runs while we hold a result: at most `backpressure` beyond those consumed.
        assert fn.submitted <= consumed + backpressure
        assert _started(tmp_path) <= consumed + backpressure
    assert consumed == items
    wait_for_condition(lambda: _started(tmp_path) == items)


@pytest.mark.parametrize("backpressure", [1, 3])
def test_async_map_unordered_backpressure_bounds_tasks_started(
    ray_shared: Any, tmp_path: Path, backpressure: int
) -> None:
    items = 12
    fn = _Submissions(start_then_return)

    async def main() -> int:
        consumed = 0
        async for _ in map_unordered(
            fn,
            [(str(tmp_path), i) for i in range(items)],
            backpressure_size=backpressure,
            chunk_size=1,
        ):
            consumed += 1
            assert fn.submitted <= consumed + backpressure
            assert _started(tmp_path) <= consumed + backpressure
        return consumed

    assert asyncio.run(main()) == items


def test_map_unordered_without_backpressure_starts_everything(
    ray_shared: Any, tmp_path: Path
) -> None:
    # The control for the two tests above: with no bound, every task starts before the
    # first result is consumed, so their bound is not met by accident.
    items = 12
    results = map_unordered(
        start_then_return,
        [(str(tmp_path), i) for i in range(items)],
        backpressure_size=None,
        chunk_size=1,
    )
    first = next(iter(results))
    assert 0 <= first < items
    wait_for_condition(lambda: _started(tmp_path) == items)


# -------------------------------------------------------- blocking get on a loop


@pytest.fixture
def fresh_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    """The blocking-get warning is once per process: re-arm it for this test."""
    monkeypatch.setattr(api, "_warned_blocking", False)


def test_blocking_get_on_a_running_loop_warns_once(ray_shared: Any, fresh_warning: None) -> None:
    async def main() -> list[Any]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            first = ray.get(echo.remote(1))
            second = ray.get([echo.remote(2)])
        assert (first, second) == (1, [2])
        return caught

    caught = asyncio.run(main())
    runtime = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(runtime) == 1, [str(w.message) for w in caught]
    assert "await" in str(runtime[0].message)
    assert runtime[0].filename == __file__  # points at the caller's line


def test_blocking_get_from_a_worker_thread_does_not_warn(
    ray_shared: Any, fresh_warning: None
) -> None:
    async def main() -> tuple[Any, Any]:
        loop = asyncio.get_running_loop()
        in_executor = await loop.run_in_executor(None, ray.get, echo.remote("exec"))
        from_thread: list[Any] = []
        thread = threading.Thread(target=lambda: from_thread.append(ray.get(echo.remote("t"))))
        thread.start()
        await asyncio.to_thread(thread.join, DEADLINE_S)
        return in_executor, from_thread

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert asyncio.run(main()) == ("exec", ["t"])
        assert ray.get(echo.remote("plain")) == "plain"  # no loop here at all
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert api._warned_blocking is False


def test_blocking_get_from_a_plain_callback_on_the_loop_does_not_warn(
    ray_shared: Any, fresh_warning: None
) -> None:
    # Code that is not a coroutine (a loop callback, a notebook cell) cannot await:
    # the warning is only for coroutines.
    async def main() -> Any:
        loop = asyncio.get_running_loop()
        result = loop.create_future()
        loop.call_soon(lambda: result.set_result(ray.get(echo.remote("cb"))))
        return await result

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert asyncio.run(main()) == "cb"
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]


def test_a_fetcher_per_finished_loop_is_not_kept(ray_shared: Any) -> None:
    # One asyncio.run after another (a script calling asyncio.run per request) must not
    # leave a fetcher, and its closed loop, behind for each.
    cw = api.ensure_connected()
    for i in range(20):
        assert asyncio.run(_await_one(i)) == i
    assert len(cw.loop_fetchers) <= 1


async def _await_one(i: int) -> Any:
    return await echo.remote(i)


# -- the watch a caller loop registers in the memory store (LoopFetcher.watch) -------------
# The caller's thread registers a watch and then looks for the object; put, on the core
# loop, stores the object and then looks for a watch. These tests make the put land at
# each point of that sequence, for real on the core loop's thread, and check the value
# arrives exactly once and nothing is left behind.


class _PutDuringWatch(dict):  # type: ignore[type-arg]
    """A watch table that has the core loop store the awaited object, for real, just
    before (``when="before"``) or just after (``"after"``) the watch is registered."""

    def __init__(self, cw: Any, when: str) -> None:
        super().__init__()
        self.cw, self.when, self.puts = cw, when, 0

    def setdefault(self, oid: bytes, entry: Any) -> Any:
        if self.when == "before":
            store_on_core_loop(self.cw, [oid])
        got = super().setdefault(oid, entry)
        if self.when == "after":
            store_on_core_loop(self.cw, [oid])
        self.puts += 1
        return got


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("how", ["gather", "await"])
def test_a_result_stored_while_its_watch_registers_arrives_once(
    ray_shared: Any, when: str, how: str
) -> None:
    cw = api.ensure_connected()
    refs = pending_owned_refs(cw, 20)

    async def main() -> list[Any]:
        fetcher = object_ref._current_fetcher()
        table = _PutDuringWatch(cw, when)
        fetcher._watched = table
        try:
            if how == "gather":
                got = await asyncio.wait_for(asyncio.gather(*refs), DEADLINE_S)
            else:
                got = [await asyncio.wait_for(r, DEADLINE_S) for r in refs]
        finally:
            fetcher._watched = cw.memory_store.watched
        assert table.puts == len(refs)
        assert not table, "a watch was left in the table"
        assert fetcher._outstanding == 0
        return got

    assert asyncio.run(main()) == [("value of", r.binary()) for r in refs]
    assert not cw.memory_store.watched


def test_results_stored_while_a_gather_registers_arrive_once(ray_shared: Any) -> None:
    # The same race, as it happens: tasks finish while gather walks their refs.
    cw = api.ensure_connected()

    async def main() -> None:
        for _ in range(10):
            refs = [echo.remote(i) for i in range(300)]
            got = await asyncio.wait_for(asyncio.gather(*refs), DEADLINE_S)
            assert got == list(range(300))

    asyncio.run(main())
    assert not cw.memory_store.watched
    assert all(f._outstanding == 0 for f in cw.loop_fetchers.values())


def test_gather_leaves_no_ref_marked_fresh(ray_shared: Any) -> None:
    # get_loop marks the ref it binds; gather's add_done_callback that follows takes
    # the mark off (the fetcher must not hold a ref the program has dropped).
    cw = api.ensure_connected()
    refs = pending_owned_refs(cw, 3)

    async def main() -> Any:
        fetcher = object_ref._current_fetcher()
        outer = asyncio.gather(*refs)
        assert fetcher.fresh is None
        store_on_core_loop(cw, [r.binary() for r in refs])
        return await asyncio.wait_for(outer, DEADLINE_S)

    assert asyncio.run(main()) == [("value of", r.binary()) for r in refs]


def test_a_ref_bound_without_a_callback_is_released_by_its_delivery(ray_shared: Any) -> None:
    cw = api.ensure_connected()
    held = pending_owned_refs(cw, 1)
    oid = held[0].binary()

    async def main() -> weakref.ref[Any]:
        ref = held[0]
        fetcher = object_ref._current_fetcher()
        assert ref.get_loop() is asyncio.get_running_loop()  # binds it, and no callback
        assert fetcher.fresh is ref
        store_on_core_loop(cw, [oid])
        deadline = time.monotonic() + DEADLINE_S
        while fetcher.fresh is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.005)  # the delivery runs on this loop
        assert fetcher.fresh is None
        assert ref.result() == ("value of", oid)
        return weakref.ref(ref)

    gone = asyncio.run(main())
    held.clear()
    assert gone() is None, "a loop fetcher still holds the ref"


# -- which loop is running: ObjectRef remembers each thread's running loop's fetcher --------


@pytest.mark.parametrize("make_loop", ["asyncio", "uvloop"])
def test_a_ref_waits_on_the_loop_running_now_not_the_last_one(
    ray_shared: Any, make_loop: str
) -> None:
    # A loop stopped but not closed, then another run in the same thread: the refs of
    # the second must be bound to the second (not the remembered fetcher of the first).
    import uvloop

    new_loop = uvloop.new_event_loop if make_loop == "uvloop" else asyncio.new_event_loop
    first, second = new_loop(), new_loop()

    async def gather_on(loop: asyncio.AbstractEventLoop, *values: int) -> Any:
        refs = [echo.remote(v) for v in values]
        got = await asyncio.wait_for(asyncio.gather(*refs), DEADLINE_S)
        assert all(r.get_loop() is loop for r in refs)
        return got

    try:
        assert first.run_until_complete(gather_on(first, 1, 2)) == [1, 2]
        assert second.run_until_complete(gather_on(second, 3, 4)) == [3, 4]
        assert first.run_until_complete(gather_on(first, 5)) == [5]
    finally:
        first.close()
        second.close()


def test_refs_awaited_from_several_threads_loops_at_once(ray_shared: Any) -> None:
    # Each thread's running loop is remembered for that thread only.
    def on_own_loop(base: int) -> list[Any]:
        async def main() -> list[Any]:
            out = []
            for i in range(5):
                refs = [echo.remote(base + i * 10 + j) for j in range(10)]
                out += await asyncio.wait_for(asyncio.gather(*refs), DEADLINE_S)
                assert all(r.get_loop() is asyncio.get_running_loop() for r in refs)
            return out

        return asyncio.run(main())

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        results = list(pool.map(on_own_loop, [0, 1000, 2000]))
    assert results == [list(range(b, b + 50)) for b in (0, 1000, 2000)]


def test_partial_deliveries_back_off_and_a_complete_one_resets(ray_shared: Any) -> None:
    # While results stream in, each wake-up of the caller's loop that delivers only part
    # of what it awaits doubles the wait before the next (up to COALESCE_MAX_S); one that
    # delivers everything brings it back (an await with nothing else pending is not held).
    from aioray import async_api

    cw = api.ensure_connected()
    refs = pending_owned_refs(cw, 30)

    async def main() -> None:
        fetcher = object_ref._current_fetcher()
        assert fetcher._coalesce_s == async_api.COALESCE_S
        waiting = [r.as_future() for r in refs]  # (each registers its watch at once)
        for k, expected in ((0, 2), (10, 4), (20, 8)):
            store_on_core_loop(cw, [r.binary() for r in refs[k : k + 5]])
            await asyncio.wait_for(asyncio.gather(*waiting[k : k + 5]), DEADLINE_S)
            assert fetcher._coalesce_s == async_api.COALESCE_S * expected
        store_on_core_loop(cw, [r.binary() for i, r in enumerate(refs) if i % 10 >= 5])
        got = await asyncio.wait_for(asyncio.gather(*waiting), DEADLINE_S)
        assert got == [("value of", r.binary()) for r in refs]
        assert fetcher._coalesce_s == async_api.COALESCE_S

    asyncio.run(main())


def test_the_backoff_is_capped(ray_shared: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from aioray import async_api

    monkeypatch.setattr(async_api, "COALESCE_MAX_S", async_api.COALESCE_S * 3)
    cw = api.ensure_connected()
    refs = pending_owned_refs(cw, 4)

    async def main() -> None:
        fetcher = object_ref._current_fetcher()
        waiting = [r.as_future() for r in refs]
        for i in range(3):
            store_on_core_loop(cw, [refs[i].binary()])
            await asyncio.wait_for(waiting[i], DEADLINE_S)
        assert fetcher._coalesce_s == async_api.COALESCE_S * 3
        store_on_core_loop(cw, [refs[3].binary()])
        await asyncio.wait_for(waiting[3], DEADLINE_S)

    asyncio.run(main())
