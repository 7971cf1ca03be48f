"""End-to-end tests of streaming generators: ``num_returns="streaming"`` on tasks and
actor methods returns an ObjectRefGenerator, read with ``for`` or ``async for`` while
the task still runs, with backpressure and errors at the failing item (as in Ray).

Producers and consumers pace each other through files in ``tmp_path``: a producer
waits for a file the test creates, and records what it saw in files the test reads
afterwards. The test side only ever waits with a deadline; nothing sleeps.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for_condition

import aioray as ray
from aioray.exceptions import (
    ObjectRefStreamEndOfStreamError,
    RayActorError,
    RayTaskError,
    TaskCancelledError,
    WorkerCrashedError,
)

RAY_SHARED_INIT_KWARGS = {"num_cpus": 2}

DEADLINE_S = 20.0  # how long a producer waits for a file before giving up
ITEMS = 8


def _worker_helpers() -> tuple[Any, Any]:
    # Defined in a function so cloudpickle ships them by value with the remote
    # functions that call them: workers cannot import this test module.
    def wait_for_path(path: str) -> None:
        deadline = time.monotonic() + DEADLINE_S
        while not os.path.exists(path):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path} never appeared")
            time.sleep(0.01)

    def record_production(directory: str, i: int) -> None:
        """Before producing item ``i``: note how many items the consumer began to take."""
        taken = sum(1 for name in os.listdir(directory) if name.startswith("taking_"))
        Path(directory, f"produced_{i}").write_text(str(taken))

    return wait_for_path, record_production


_wait_for_path, _record_production = _worker_helpers()


def _count(directory: str | Path, prefix: str) -> int:
    return sum(1 for name in os.listdir(directory) if name.startswith(prefix))


@ray.remote(num_returns="streaming")
def count_to(n: int, fail_at: int | None = None) -> Iterator[int]:
    for i in range(n):
        if i == fail_at:
            raise ValueError(f"failed at item {i}")
        yield i


@ray.remote(num_returns="streaming")
def first_then_wait(gate: str) -> Iterator[str]:
    yield "first"
    _wait_for_path(gate)
    yield "second"


@ray.remote(num_returns="streaming")
def paced(directory: str, n: int) -> Iterator[int]:
    for i in range(n):
        _record_production(directory, i)
        yield i


@ray.remote(num_returns="streaming")
def not_a_generator() -> int:
    return 5


@ray.remote(num_returns="streaming")
def big_items(n: int) -> Iterator[bytes]:
    for i in range(n):
        yield bytes([i]) * 2_000_000  # each item goes to shared memory


@ray.remote
class Streamer:
    """A threaded actor with streaming methods."""

    @ray.method(num_returns="streaming")
    def count_to(self, n: int, fail_at: int | None = None) -> Iterator[int]:
        for i in range(n):
            if i == fail_at:
                raise ValueError(f"failed at item {i}")
            yield i

    @ray.method(num_returns="streaming")
    def first_then_wait(self, gate: str) -> Iterator[str]:
        yield "first"
        _wait_for_path(gate)
        yield "second"

    @ray.method(num_returns="streaming")
    def paced(self, directory: str, n: int) -> Iterator[int]:
        for i in range(n):
            _record_production(directory, i)
            yield i

    def ping(self) -> str:
        return "pong"


@ray.remote
class AsyncStreamer:
    """An async actor: async generators, and a sync generator run by its loop."""

    @ray.method(num_returns="streaming")
    async def count_to(self, n: int, fail_at: int | None = None) -> Any:
        for i in range(n):
            if i == fail_at:
                raise ValueError(f"failed at item {i}")
            await asyncio.sleep(0)
            yield i

    @ray.method(num_returns="streaming")
    def sync_count_to(self, n: int) -> Iterator[int]:
        yield from range(n)

    @ray.method(num_returns="streaming")
    async def first_then_wait(self, gate: str) -> Any:
        yield "first"
        await asyncio.to_thread(_wait_for_path, gate)
        yield "second"

    @ray.method(num_returns="streaming")
    async def paced(self, directory: str, n: int) -> Any:
        for i in range(n):
            _record_production(directory, i)
            yield i


def _values(gen: Any) -> list[Any]:
    return [ray.get(ref, timeout=DEADLINE_S) for ref in gen]


async def _async_values(gen: Any) -> list[Any]:
    return [await ref async for ref in gen]


# ------------------------------------------------------------------------ tasks


def test_streaming_task_returns_an_object_ref_generator(ray_shared: Any) -> None:
    gen = count_to.remote(ITEMS)
    assert isinstance(gen, ray.ObjectRefGenerator)
    refs = list(gen)
    assert all(isinstance(r, ray.ObjectRef) for r in refs)
    assert ray.get(refs, timeout=DEADLINE_S) == list(range(ITEMS))
    assert gen.is_finished()
    for _ in range(2):
        with pytest.raises(StopIteration):
            next(gen)


def test_streaming_task_with_options_and_async_for(ray_shared: Any) -> None:
    @ray.remote
    def plain(n: int) -> Iterator[int]:
        yield from range(n)

    gen = plain.options(num_returns="streaming").remote(ITEMS)
    assert asyncio.run(_async_values(gen)) == list(range(ITEMS))

    async def exhausted() -> None:
        with pytest.raises(StopAsyncIteration):
            await gen.__anext__()

    asyncio.run(exhausted())


def test_streaming_task_with_no_items(ray_shared: Any) -> None:
    assert _values(count_to.remote(0)) == []


def test_streaming_items_in_shared_memory(ray_shared: Any) -> None:
    values = _values(big_items.remote(3))
    assert [v[:1] for v in values] == [b"\x00", b"\x01", b"\x02"]
    assert all(len(v) == 2_000_000 for v in values)


def test_first_item_arrives_while_the_task_still_runs(ray_shared: Any, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    gen = first_then_wait.remote(str(gate))
    assert ray.get(next(gen), timeout=DEADLINE_S) == "first"
    assert not gen.is_finished()
    gate.touch()  # only now may the task go on
    assert _values(gen) == ["second"]


def test_async_for_reads_items_while_the_task_still_runs(ray_shared: Any, tmp_path: Path) -> None:
    gate = tmp_path / "gate"

    async def main() -> list[Any]:
        seen = []
        async for ref in first_then_wait.remote(str(gate)):
            seen.append(await ref)
            gate.touch()
        return seen

    assert asyncio.run(main()) == ["first", "second"]


def test_error_at_item_k_arrives_as_item_k(ray_shared: Any) -> None:
    gen = count_to.remote(ITEMS, fail_at=3)
    assert [ray.get(next(gen), timeout=DEADLINE_S) for _ in range(3)] == [0, 1, 2]
    failing = next(gen)
    with pytest.raises(ValueError, match="failed at item 3") as info:
        ray.get(failing, timeout=DEADLINE_S)
    assert isinstance(info.value, RayTaskError)
    for _ in range(2):
        with pytest.raises(StopIteration):
            next(gen)


def test_error_at_item_k_with_async_for(ray_shared: Any) -> None:
    async def main() -> list[Any]:
        seen: list[Any] = []
        async for ref in count_to.remote(ITEMS, fail_at=2):
            try:
                seen.append(await ref)
            except ValueError as e:
                assert "failed at item 2" in str(e)
                seen.append("error")
        return seen

    assert asyncio.run(main()) == [0, 1, "error"]


def test_error_before_the_first_item(ray_shared: Any) -> None:
    gen = count_to.remote(ITEMS, fail_at=0)
    with pytest.raises(ValueError):
        ray.get(next(gen), timeout=DEADLINE_S)
    with pytest.raises(StopIteration):
        next(gen)


def test_a_function_that_returns_no_generator_fails_at_item_0(ray_shared: Any) -> None:
    gen = not_a_generator.remote()
    with pytest.raises(RayTaskError, match="generator"):
        ray.get(next(gen), timeout=DEADLINE_S)
    with pytest.raises(StopIteration):
        next(gen)


def test_streaming_items_can_be_passed_to_other_tasks(ray_shared: Any) -> None:
    @ray.remote
    def double(x: int) -> int:
        return 2 * x

    doubled = [double.remote(ref) for ref in count_to.remote(4)]
    assert ray.get(doubled, timeout=DEADLINE_S) == [0, 2, 4, 6]


def test_generator_functions_stream_by_default(ray_shared: Any) -> None:
    @ray.remote
    def plain(n: int) -> Iterator[int]:
        yield from range(n)

    @ray.remote
    class Plain:
        def gen(self, n: int) -> Iterator[int]:
            yield from range(n)

        async def agen(self, n: int) -> Any:
            for i in range(n):
                yield i

    # Ray >= 2.8: generator functions and methods stream without num_returns.
    gen = plain.remote(3)
    assert isinstance(gen, ray.ObjectRefGenerator)
    assert _values(gen) == [0, 1, 2]
    actor = Plain.remote()
    assert _values(actor.gen.remote(2)) == [0, 1]
    assert _values(actor.agen.remote(2)) == [0, 1]
    assert ray.get(plain.options(num_returns=3).remote(3), timeout=DEADLINE_S) == [0, 1, 2]
    ray.kill(actor)


# ---------------------------------------------------------------- backpressure


def _consume_paced(gen: Any, directory: Path, n: int, backpressure: int) -> None:
    """Take items slowly and check the producer never ran more than ``backpressure`` ahead.

    The consumer first lets the producer run as far ahead as it may (it must reach
    ``backpressure`` items), and marks each take with a ``taking_k`` file *before* it
    asks for the item, so the count a producer sees never lags the items taken.
    """
    # A coarse poll: the producer gets every chance to run further ahead than allowed.
    wait_for_condition(
        lambda: _count(directory, "produced_") >= backpressure, DEADLINE_S, interval=0.2
    )
    values = []
    for k in range(n):
        (directory / f"taking_{k}").touch()
        values.append(ray.get(next(gen), timeout=DEADLINE_S))
    with pytest.raises(StopIteration):
        next(gen)
    assert values == list(range(n))
    _check_leads(directory, n, backpressure)


def _check_leads(directory: Path, n: int, backpressure: int) -> None:
    # Producing item i means i + 1 items exist; minus those taken, at most `backpressure`.
    leads = [i + 1 - int((directory / f"produced_{i}").read_text()) for i in range(n)]
    assert max(leads) <= backpressure, f"producer ran ahead of the consumer: {leads}"
    assert max(leads) == backpressure, f"producer never ran ahead as far as allowed: {leads}"


@pytest.mark.parametrize("backpressure", [1, 3])
def test_task_backpressure_bounds_the_producer(
    ray_shared: Any, tmp_path: Path, backpressure: int
) -> None:
    gen = paced.options(_generator_backpressure_num_objects=backpressure).remote(
        str(tmp_path), ITEMS
    )
    _consume_paced(gen, tmp_path, ITEMS, backpressure)


def test_task_without_backpressure_runs_ahead(ray_shared: Any, tmp_path: Path) -> None:
    # The control for the bound above: with no limit the producer finishes untouched.
    gen = paced.remote(str(tmp_path), ITEMS)
    wait_for_condition(lambda: _count(tmp_path, "produced_") == ITEMS, DEADLINE_S)
    assert _values(gen) == list(range(ITEMS))


def test_async_for_with_backpressure(ray_shared: Any, tmp_path: Path) -> None:
    backpressure = 2
    gen = paced.options(_generator_backpressure_num_objects=backpressure).remote(
        str(tmp_path), ITEMS
    )

    async def main() -> list[Any]:
        seen = []
        (tmp_path / "taking_0").touch()
        async for ref in gen:
            seen.append(await ref)
            (tmp_path / f"taking_{len(seen)}").touch()  # before asking for the next
        return seen

    wait_for_condition(
        lambda: _count(tmp_path, "produced_") >= backpressure, DEADLINE_S, interval=0.2
    )
    assert asyncio.run(main()) == list(range(ITEMS))
    _check_leads(tmp_path, ITEMS, backpressure)


# ----------------------------------------------------------------------- actors


def test_actor_streaming_methods_sync_and_async_for(ray_shared: Any) -> None:
    actor = Streamer.remote()
    gen = actor.count_to.remote(ITEMS)
    assert isinstance(gen, ray.ObjectRefGenerator)
    assert _values(gen) == list(range(ITEMS))
    assert asyncio.run(_async_values(actor.count_to.remote(3))) == [0, 1, 2]
    assert ray.get(actor.ping.remote(), timeout=DEADLINE_S) == "pong"
    ray.kill(actor)


def test_async_actor_async_and_sync_generators(ray_shared: Any) -> None:
    actor = AsyncStreamer.remote()
    assert _values(actor.count_to.remote(ITEMS)) == list(range(ITEMS))
    assert _values(actor.sync_count_to.remote(4)) == [0, 1, 2, 3]
    assert asyncio.run(_async_values(actor.count_to.remote(3))) == [0, 1, 2]
    ray.kill(actor)


@pytest.mark.parametrize("cls", [Streamer, AsyncStreamer], ids=["threaded", "async"])
def test_actor_first_item_arrives_while_the_method_runs(
    ray_shared: Any, tmp_path: Path, cls: Any
) -> None:
    actor = cls.remote()
    gate = tmp_path / "gate"
    gen = actor.first_then_wait.remote(str(gate))
    assert ray.get(next(gen), timeout=DEADLINE_S) == "first"
    assert not gen.is_finished()
    gate.touch()
    assert _values(gen) == ["second"]
    ray.kill(actor)


@pytest.mark.parametrize("cls", [Streamer, AsyncStreamer], ids=["threaded", "async"])
def test_actor_error_at_item_k(ray_shared: Any, cls: Any) -> None:
    actor = cls.remote()
    gen = actor.count_to.remote(ITEMS, fail_at=2)
    assert [ray.get(next(gen), timeout=DEADLINE_S) for _ in range(2)] == [0, 1]
    with pytest.raises(ValueError, match="failed at item 2"):
        ray.get(next(gen), timeout=DEADLINE_S)
    with pytest.raises(StopIteration):
        next(gen)
    ray.kill(actor)


def test_threaded_actor_backpressure(ray_shared: Any, tmp_path: Path) -> None:
    actor = Streamer.remote()
    backpressure = 2
    method = actor.paced.options(_generator_backpressure_num_objects=backpressure)
    _consume_paced(method.remote(str(tmp_path), ITEMS), tmp_path, ITEMS, backpressure)
    ray.kill(actor)


def test_async_actor_backpressure(ray_shared: Any, tmp_path: Path) -> None:
    actor = AsyncStreamer.remote()
    backpressure = 2
    try:
        method = actor.paced.options(_generator_backpressure_num_objects=backpressure)
        _consume_paced(method.remote(str(tmp_path), ITEMS), tmp_path, ITEMS, backpressure)
    finally:
        ray.kill(actor)


# ------------------------------------------------- gaps against Ray (known bugs)


def test_method_decorator_accepts_backpressure(ray_shared: Any) -> None:
    @ray.remote
    class Decorated:
        @ray.method(num_returns="streaming", _generator_backpressure_num_objects=1)
        def gen(self) -> Iterator[int]:
            yield from range(3)

    actor = Decorated.remote()
    assert _values(actor.gen.remote()) == [0, 1, 2]
    ray.kill(actor)


def test_worker_crash_mid_stream_is_the_next_item(ray_shared: Any, tmp_path: Path) -> None:
    @ray.remote(num_returns="streaming")
    def crash_after_first(gate: str) -> Iterator[int]:
        yield 0
        _wait_for_path(gate)
        os._exit(1)

    gen = crash_after_first.remote(str(tmp_path / "gate"))
    assert ray.get(next(gen), timeout=DEADLINE_S) == 0
    (tmp_path / "gate").touch()
    with pytest.raises(WorkerCrashedError):
        ray.get(next(gen), timeout=DEADLINE_S)
    with pytest.raises(StopIteration):
        next(gen)


def test_actor_killed_mid_stream_is_the_next_item(ray_shared: Any, tmp_path: Path) -> None:
    actor = Streamer.remote()
    gen = actor.first_then_wait.remote(str(tmp_path / "never"))
    assert ray.get(next(gen), timeout=DEADLINE_S) == "first"
    ray.kill(actor)
    with pytest.raises(RayActorError):
        ray.get(next(gen), timeout=DEADLINE_S)
    with pytest.raises(StopIteration):
        next(gen)


def test_cancel_a_streaming_task(ray_shared: Any, tmp_path: Path) -> None:
    gate = tmp_path / "never"
    gen = first_then_wait.remote(str(gate))
    try:
        assert ray.get(next(gen), timeout=DEADLINE_S) == "first"
        ray.cancel(gen)
        with pytest.raises(TaskCancelledError):
            ray.get(next(gen), timeout=DEADLINE_S)
    finally:
        gate.touch()  # whatever happened, let the task end
        list(gen)


def test_completed_is_a_ref_to_the_task_end(ray_shared: Any) -> None:
    gen = count_to.remote(2)
    done = gen.completed()
    assert isinstance(done, ray.ObjectRef)
    ray.get(done, timeout=DEADLINE_S)
    assert _values(gen) == [0, 1]


# ------------------------------------------------------------- peeking (Ray's private API)


def test_refs_past_the_end_of_a_finished_stream_are_end_of_stream(ray_shared: Any) -> None:
    """Ray's _get_next_ref_n / _consume_next_ref_n (used by Ray Data): positions the
    stream will never produce raise ObjectRefStreamEndOfStreamError at get."""
    gen = count_to.remote(1)
    ray.get(gen.completed(), timeout=DEADLINE_S)
    refs = gen._get_next_ref_n(3)
    assert len(set(refs)) == 3
    assert ray.get(refs[0], timeout=DEADLINE_S) == 0
    for ref in refs[1:]:
        with pytest.raises(ObjectRefStreamEndOfStreamError):
            ray.get(ref, timeout=DEADLINE_S)
    assert gen._get_next_ref_n(1) == refs[:1]  # not consumed
    gen._consume_next_ref_n(3)  # the end-of-stream positions too
    assert gen.is_finished()
    with pytest.raises(StopIteration):
        next(gen)
    (again,) = gen._get_next_ref_n(1)
    assert again not in refs
    with pytest.raises(ObjectRefStreamEndOfStreamError):
        ray.get(again, timeout=DEADLINE_S)
    with pytest.raises(ValueError, match="must be positive"):
        gen._get_next_ref_n(0)


def test_peeked_refs_resolve_as_the_stream_goes_on(ray_shared: Any, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    gen = first_then_wait.remote(str(gate))
    first, second, third = gen._get_next_ref_n(3)
    assert ray.get(first, timeout=DEADLINE_S) == "first"
    ready, _ = ray.wait([second], timeout=0.2)
    assert not ready  # not produced yet
    with pytest.raises(ValueError, match="not produced yet"):
        gen._consume_next_ref_n(2)
    gate.touch()
    assert ray.get(second, timeout=DEADLINE_S) == "second"
    with pytest.raises(ObjectRefStreamEndOfStreamError):
        ray.get(third, timeout=DEADLINE_S)
    gen._consume_next_ref_n(2)
    assert gen.is_finished()
