"""A/B: awaiting 10,000 task results with asyncio.gather against a sync get of the same.

Issue #6 asks that the async path be no slower. The two run interleaved, round after
round, on one cluster, so drift in machine load hits both alike; the median of the
per-round ratios is the figure to quote.

    python benchmarks/gather_vs_get.py [--rounds 7] [--n 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import aioray as ray


@ray.remote
def small_value() -> bytes:
    return b"ok"


def sync_get(n: int) -> None:
    ray.get([small_value.remote() for _ in range(n)])


async def gather(n: int) -> None:
    await asyncio.gather(*[small_value.remote() for _ in range(n)])


def timed(fn: object, n: int) -> tuple[float, float]:
    """(results per second, driver CPU microseconds per result)."""
    cpu, wall = time.process_time(), time.perf_counter()
    fn()  # type: ignore[operator]
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return n / wall, cpu / n * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--n", type=int, default=10000)
    a = p.parse_args()
    ray.init(num_cpus=2)
    try:
        sync_get(2000)
        asyncio.run(gather(2000))
        ratios = []
        for i in range(a.rounds):
            s_rate, s_cpu = timed(lambda: sync_get(a.n), a.n)
            g_rate, g_cpu = timed(lambda: asyncio.run(gather(a.n)), a.n)
            ratios.append(g_rate / s_rate)
            print(
                f"round {i}: sync get {s_rate:8.0f}/s ({s_cpu:4.1f} us driver CPU)  "
                f"gather {g_rate:8.0f}/s ({g_cpu:4.1f} us)  ratio {ratios[-1]:.2f}",
                flush=True,
            )
        print(
            f"single client tasks async gather / sync get of {a.n}: median ratio "
            f"{statistics.median(ratios):.2f} over {a.rounds} rounds"
        )
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
