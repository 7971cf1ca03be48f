"""Python bytecodes one sync round trip executes, per thread of the driver and the worker (#21).

A load-independent measure of the Python work of ``get(f.remote())`` (``--kind task``)
or ``get(a.m.remote())`` (``--kind actor``): ``sys.settrace`` opcode events in the
driver's caller thread and core loop, and in the worker's loop and execution thread
(installed there by a call, which also brings the counts back), divided by the calls.
``--burst B`` counts the async rows' way instead: ``get`` of ``B`` calls submitted at once.

    python benchmarks/sync_bytecodes.py [--kind task|actor] [--n 500] [--burst 0] [--top 0]
"""

from __future__ import annotations

import argparse
import collections
import sys
import threading
from typing import Any

import aioray as ray


def start_counting() -> dict[str, collections.Counter[tuple[str, str]]]:
    """Count opcodes by function in this thread and in this process's core loop."""
    from aioray._private.owner import worker_context

    counts: dict[str, collections.Counter[tuple[str, str]]] = {}

    def tracer_for(name: str) -> Any:
        c = counts.setdefault(name, collections.Counter())

        def tracer(frame: Any, event: str, arg: Any) -> Any:
            frame.f_trace_opcodes = True
            frame.f_trace_lines = False
            if event == "opcode":
                c[(frame.f_code.co_filename.rsplit("/", 1)[-1], frame.f_code.co_name)] += 1
            return tracer

        return tracer

    cw = worker_context.core_worker
    assert cw is not None
    ready = threading.Event()

    def on_loop() -> None:
        sys.settrace(tracer_for("loop"))
        ready.set()

    cw.loop.call_soon_threadsafe(on_loop)
    ready.wait()
    sys.settrace(tracer_for("thread"))
    return counts


def stop_counting() -> None:
    from aioray._private.owner import worker_context

    sys.settrace(None)
    cw = worker_context.core_worker
    assert cw is not None
    done = threading.Event()
    cw.loop.call_soon_threadsafe(lambda: (sys.settrace(None), done.set()))
    done.wait()


def report(side: str, counts: dict[str, Any], n: int, top: int) -> None:
    for thread, c in counts.items():
        print(f"{side} {thread}: {sum(c.values()) / n:.0f} bytecodes per call")
        for (file, fn), v in collections.Counter(c).most_common(top):
            print(f"    {v / n:7.1f} {file}:{fn}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kind", choices=["task", "actor"], default="task")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--burst", type=int, default=0, help="calls per get (0: one at a time)")
    p.add_argument("--top", type=int, default=0, help="also list the top functions")
    a = p.parse_args()
    ray.init(num_cpus=1, include_dashboard=False)
    held: dict[str, Any] = {}

    def in_worker(op: int) -> Any:  # 1: start counting, 2: stop and return the counts
        if op == 1:
            held["counts"] = start_counting()
            return None
        stop_counting()
        return {t: dict(c) for t, c in held.pop("counts").items()}

    @ray.remote
    def f(op: int = 0) -> Any:
        return in_worker(op) if op else 1

    @ray.remote(num_cpus=0)
    class A:
        def m(self, op: int = 0) -> Any:
            return in_worker(op) if op else 1

    call = A.remote().m.remote if a.kind == "actor" else f.remote
    for _ in range(300):
        ray.get(call())
    ray.get(call(1))
    burst = max(a.burst, 1)
    for _ in range(max(300 // burst, 2)):
        ray.get([call() for _ in range(burst)])
    driver = start_counting()
    for _ in range(a.n // burst):
        ray.get([call() for _ in range(burst)] if a.burst else call())
    stop_counting()
    worker = ray.get(call(2))
    n = a.n // burst * burst
    report("driver", {"caller" if k == "thread" else k: v for k, v in driver.items()}, n, a.top)
    report("worker", {"exec" if k == "thread" else k: v for k, v in worker.items()}, n, a.top)
    ray.shutdown()


if __name__ == "__main__":
    main()
