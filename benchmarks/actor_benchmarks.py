"""Ray's actor microbenchmarks (ray_perf.py definitions), plus two aioray lines.

The actor classes and tasks are made inside each setup so they pickle by value:
workers never need to import this file.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import Callable
from typing import Any

import psutil

import aioray as ray

N_CPU = max(1, multiprocessing.cpu_count() // 2)


def _classes() -> tuple[Any, Any, Any, Any]:
    @ray.remote
    def small_value() -> bytes:
        return b"ok"

    @ray.remote(num_cpus=0)
    class Actor:
        def small_value(self) -> bytes:
            return b"ok"

        def small_value_arg(self, x: Any) -> bytes:
            return b"ok"

        def small_value_batch(self, n: int) -> None:
            ray.get([small_value.remote() for _ in range(n)])

    @ray.remote
    class AsyncActor:
        async def small_value(self) -> bytes:
            return b"ok"

        async def small_value_with_arg(self, x: Any) -> bytes:
            return b"ok"

        async def small_value_batch(self, n: int) -> None:
            await asyncio.wait([small_value.remote() for _ in range(n)])

    @ray.remote(num_cpus=0)
    class Client:
        def __init__(self, servers: Any) -> None:
            self.servers = servers if isinstance(servers, list) else [servers]

        def small_value_batch(self, n: int) -> None:
            results = []
            for s in self.servers:
                results.extend([s.small_value.remote() for _ in range(n)])
            ray.get(results)

        def small_value_batch_arg(self, n: int) -> None:
            x = ray.put(0)
            results = []
            for s in self.servers:
                results.extend([s.small_value_arg.remote(x) for _ in range(n)])
            ray.get(results)

    return Actor, AsyncActor, Client, small_value


Setup = Callable[[], Callable[[], object]]


def multi_client_tasks_async() -> Callable[[], object]:
    actor_cls = _classes()[0]
    actors = [actor_cls.remote() for _ in range(4)]
    return lambda: ray.get([a.small_value_batch.remote(10000) for a in actors])


def actor_sync() -> Callable[[], object]:
    a = _classes()[0].remote()
    return lambda: ray.get(a.small_value.remote())


def actor_async() -> Callable[[], object]:
    a = _classes()[0].remote()
    return lambda: ray.get([a.small_value.remote() for _ in range(1000)])


def actor_concurrent() -> Callable[[], object]:
    a = _classes()[0].options(max_concurrency=16).remote()
    return lambda: ray.get([a.small_value.remote() for _ in range(1000)])


def one_to_n(async_servers: bool) -> Setup:
    def setup() -> Callable[[], object]:
        actor_cls, async_cls, client_cls, _ = _classes()
        server_cls = async_cls if async_servers else actor_cls
        servers = [server_cls.remote() for _ in range(N_CPU)]
        client = client_cls.remote(servers)
        return lambda: ray.get(client.small_value_batch.remote(5000))

    return setup


def n_to_n(async_servers: bool) -> Setup:
    def setup() -> Callable[[], object]:
        actor_cls, async_cls, _, _ = _classes()
        server_cls = async_cls if async_servers else actor_cls
        servers = [server_cls.remote() for _ in range(N_CPU)]
        n, n_cpu = 5000, N_CPU

        @ray.remote
        def work(actors: list[Any]) -> None:
            ray.get([actors[i % n_cpu].small_value.remote() for i in range(n)])

        return lambda: ray.get([work.remote(servers) for _ in range(4)])

    return setup


def n_to_n_with_arg() -> Callable[[], object]:
    actor_cls, _, client_cls, _ = _classes()
    actors = [actor_cls.remote() for _ in range(N_CPU)]
    clients = [client_cls.remote(a) for a in actors]
    return lambda: ray.get([c.small_value_batch_arg.remote(1000) for c in clients])


def async_actor_sync() -> Callable[[], object]:
    a = _classes()[1].remote()
    return lambda: ray.get(a.small_value.remote())


def async_actor_async() -> Callable[[], object]:
    a = _classes()[1].remote()
    return lambda: ray.get([a.small_value.remote() for _ in range(1000)])


def async_actor_args() -> Callable[[], object]:
    a = _classes()[1].remote()
    return lambda: ray.get([a.small_value_with_arg.remote(i) for i in range(1000)])


# (name, setup, calls per timed call): Ray's names and multipliers.
RATES: list[tuple[str, Setup, float]] = [
    ("multi client tasks async", multi_client_tasks_async, 10000 * 4),
    ("1:1 actor calls sync", actor_sync, 1),
    ("1:1 actor calls async", actor_async, 1000),
    ("1:1 actor calls concurrent", actor_concurrent, 1000),
    ("1:n actor calls async", one_to_n(False), 5000 * N_CPU),
    ("n:n actor calls async", n_to_n(False), 4 * 5000),
    ("n:n actor calls with arg async", n_to_n_with_arg, 1000 * N_CPU),
    ("1:1 async-actor calls sync", async_actor_sync, 1),
    ("1:1 async-actor calls async", async_actor_async, 1000),
    ("1:1 async-actor calls with args async", async_actor_args, 1000),
    ("1:n async-actor calls async", one_to_n(True), 5000 * N_CPU),
    ("n:n async-actor calls async", n_to_n(True), 4 * 5000),
]


def actor_creation(count: int = 100) -> tuple[float, float]:
    """Seconds to create ``count`` actors until every one answers; actors per second."""

    @ray.remote(num_cpus=0)
    class Idle:
        def ping(self) -> int:
            return 1

    start = time.perf_counter()
    actors = [Idle.remote() for _ in range(count)]
    ray.get([a.ping.remote() for a in actors])
    elapsed = time.perf_counter() - start
    for a in actors:
        ray.kill(a)
    return elapsed, count / elapsed


def idle_actor_uss_mib() -> float:
    """USS of one started-but-idle actor's process, in MiB."""
    import os

    @ray.remote(num_cpus=0)
    class Idle:
        def pid(self) -> int:
            return os.getpid()

    a = Idle.remote()
    pid = ray.get(a.pid.remote())
    try:
        uss = psutil.Process(pid).memory_full_info().uss
    finally:
        ray.kill(a)
    return uss / 2**20
