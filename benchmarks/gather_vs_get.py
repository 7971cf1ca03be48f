"""A/B: awaiting 10,000 task results with asyncio.gather against a sync get of the same.

Issue #6 asks that the async path be no slower. The two run interleaved on one cluster,
round after round, in the order sync-gather then gather-sync (so that whatever the
machine does meanwhile, and whichever runs second, hits both alike); the figure to quote
is the median of the per-pair throughput ratios, with the middle half of the ratios as
its spread. This machine's CPU speed drifts by up to 2x from second to second, so a
single pair says little. ``--get-async`` adds a third arm, ``await
aioray.get_async(refs)`` (the bulk async path), with its own ratio to the sync get.

    python benchmarks/gather_vs_get.py [--rounds 21] [--n 10000] [--uvloop] [--get-async]
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


async def get_async(n: int) -> None:
    await ray.get_async([small_value.remote() for _ in range(n)])


def timed(fn: object, n: int) -> tuple[float, float]:
    """(results per second, driver CPU microseconds per result)."""
    cpu, wall = time.process_time(), time.perf_counter()
    fn()  # type: ignore[operator]
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return n / wall, cpu / n * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=21)
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--uvloop", action="store_true", help="run the gather under uvloop")
    p.add_argument("--get-async", action="store_true", help="add an arm: await get_async(refs)")
    a = p.parse_args()
    run = asyncio.run
    if a.uvloop:
        import uvloop

        run = uvloop.run
    ray.init(num_cpus=2)
    try:
        sync_get(2000)
        run(gather(2000))
        arms = {"sync": lambda: sync_get(a.n), "gather": lambda: run(gather(a.n))}
        if a.get_async:
            arms["get_async"] = lambda: run(get_async(a.n))
        ratios: dict[str, list[float]] = {arm: [] for arm in arms if arm != "sync"}
        for i in range(a.rounds):
            order = list(arms) if i % 2 == 0 else list(arms)[::-1]
            got = {arm: timed(arms[arm], a.n) for arm in order}
            s_rate, s_cpu = got["sync"]
            line = f"round {i}: sync get {s_rate:8.0f}/s ({s_cpu:4.1f} us driver CPU)"
            for arm, rs in ratios.items():
                rate, cpu = got[arm]
                rs.append(rate / s_rate)
                line += f"  {arm} {rate:8.0f}/s ({cpu:4.1f} us)  ratio {rs[-1]:.2f}"
            print(line, flush=True)
        for arm, rs in ratios.items():
            q = statistics.quantiles(rs, n=4)
            what = "async gather" if arm == "gather" else "await get_async"
            print(
                f"single client tasks {what} / sync get of {a.n}: median ratio "
                f"{statistics.median(rs):.2f} (middle half {q[0]:.2f}-{q[2]:.2f}) "
                f"over {a.rounds} rounds{' (uvloop)' if a.uvloop else ''}"
            )
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
