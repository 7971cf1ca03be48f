"""Paired A/B of two aioray installs on a loaded machine: both drivers alive at once,
taking turns at short bursts of the same calls, so that both see the same load (#21).

Each side is a driver process (``--serve``) started with its own interpreter (a venv
whose aioray is the version to measure), with its own cluster, warmed up. The
controller asks them in turn, in the order A B, B A, A B..., for ``--burst-s`` seconds of
calls, and reports per kind the median rate of each side and the median of the
per-pair ratios B/A with its middle half: this machine's speed drifts by 2x from
minute to minute, and only pairs a second apart compare like with like.

    python benchmarks/paired_ab.py --a /venv-a/bin/python --b /venv-b/bin/python \\
        [--kinds task,actor,task-batch,actor-batch,gather] [--bursts 20] [--burst-s 0.5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

BATCH = 1000  # calls per get in the batch kinds (the microbenchmark's async rows)
GATHER = 10000  # refs per asyncio.gather (its "tasks async gather" row)


def serve() -> None:
    """A driver: warm up every kind, say READY, then run 'KIND SECONDS' bursts from stdin,
    answering 'calls-per-second driver-CPU-us-per-call'."""
    import asyncio

    import aioray as ray

    ray.init(num_cpus=2, include_dashboard=False)

    @ray.remote
    def small_value() -> bytes:
        return b"ok"

    @ray.remote(num_cpus=0)
    class Actor:
        def small_value(self) -> bytes:
            return b"ok"

    actor = Actor.remote()

    async def gather() -> None:
        await asyncio.gather(*[small_value.remote() for _ in range(GATHER)])

    kinds: dict[str, tuple[Callable[[], Any], int]] = {
        "task": (lambda: ray.get(small_value.remote()), 1),
        "actor": (lambda: ray.get(actor.small_value.remote()), 1),
        "task-batch": (lambda: ray.get([small_value.remote() for _ in range(BATCH)]), BATCH),
        "actor-batch": (
            lambda: ray.get([actor.small_value.remote() for _ in range(BATCH)]),
            BATCH,
        ),
        "gather": (lambda: asyncio.run(gather()), GATHER),
    }
    for call, per in kinds.values():
        for _ in range(max(2, 300 // per)):
            call()
    print("READY", flush=True)
    for line in sys.stdin:
        kind, seconds = line.split()
        call, per = kinds[kind]
        n, cpu, start = 0, time.process_time(), time.perf_counter()
        while time.perf_counter() - start < float(seconds):
            call()
            n += per
        wall = time.perf_counter() - start
        print(f"{n / wall:.1f} {(time.process_time() - cpu) / n * 1e6:.2f}", flush=True)
    ray.shutdown()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--a", help="the interpreter of side A (the baseline)")
    p.add_argument("--b", help="the interpreter of side B")
    p.add_argument("--kinds", default="task,actor")
    p.add_argument("--bursts", type=int, default=20)
    p.add_argument("--burst-s", default="0.5")
    a = p.parse_args()
    if a.serve:
        serve()
        return
    if not (a.a and a.b):
        p.error("--a and --b are required")
    sides = {}
    for name, python in (("A", a.a), ("B", a.b)):
        sides[name] = subprocess.Popen(
            [python, os.path.abspath(__file__), "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd="/",  # (no aioray source tree in the working directory to shadow the install)
        )
        assert sides[name].stdout is not None
        while sides[name].stdout.readline().strip() != "READY":
            if sides[name].poll() is not None:
                sys.exit(f"side {name} ({python}) exited before it was ready")
    kinds = a.kinds.split(",")
    got: dict[tuple[str, str], list[tuple[float, float]]] = {
        (k, s): [] for k in kinds for s in sides
    }
    for i in range(a.bursts):
        for kind in kinds:
            for name in ("A", "B") if i % 2 == 0 else ("B", "A"):
                proc = sides[name]
                assert proc.stdin is not None and proc.stdout is not None
                proc.stdin.write(f"{kind} {a.burst_s}\n")
                proc.stdin.flush()
                rate, cpu = map(float, proc.stdout.readline().split())
                got[(kind, name)].append((rate, cpu))
    for proc in sides.values():
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait()
    for kind in kinds:
        sa, sb = got[(kind, "A")], got[(kind, "B")]
        ratios = [b[0] / a_[0] for a_, b in zip(sa, sb, strict=True)]
        q = statistics.quantiles(ratios, n=4)
        print(
            f"{kind:12} A {statistics.median(r for r, _ in sa):8.0f}/s "
            f"({statistics.median(c for _, c in sa):5.1f} us driver CPU/call)  "
            f"B {statistics.median(r for r, _ in sb):8.0f}/s "
            f"({statistics.median(c for _, c in sb):5.1f} us)  "
            f"B/A median {statistics.median(ratios):.2f} "
            f"(middle half {q[0]:.2f}-{q[2]:.2f}, {len(ratios)} pairs)",
            flush=True,
        )


if __name__ == "__main__":
    main()
