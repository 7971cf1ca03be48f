"""Where the time of one sync round trip goes: timestamps at each hop, driver and worker (#21).

It wraps a few internals of both processes (so it measures them with a little overhead,
~1 us a stamp) and stamps, on the one clock both processes share (CLOCK_MONOTONIC):

    D:remote  the caller calls .remote()        W:exec   the execution thread starts it
    D:drain   the driver's loop drains posts    W:done   ... and has the reply to send
    D:write   ... writes the push               W:drain  the worker's loop drains posts
    D:send    the caller writes the push itself (instead of D:drain, D:write)
    W:read    the worker's loop reads it        W:write  ... writes the reply
    W:send    the execution thread writes the reply itself (instead of W:drain, W:write)
    D:read    the driver's loop reads the reply D:store  ... stores the result
    D:woken   the caller's wait returns         D:return get returns
    D:own     the caller read the reply itself (instead of D:read, D:store, D:woken)

and prints the median time between consecutive stamps over the calls. It works on the
main branch at ce966f7 and after (stamps a version lacks are left out).

    python benchmarks/sync_trace.py [--kind task|actor] [--n 3000]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import aioray as ray

ORDER = [
    "D:remote",
    "D:drain",
    "D:write",
    "D:send",
    "W:read",
    "W:exec",
    "W:done",
    "W:drain",
    "W:write",
    "W:send",
    "D:read",
    "D:store",
    "D:woken",
    "D:own",
    "D:return",
]


def install(side: str) -> list[tuple[int, str]]:
    """Stamp this process's hops ("D" driver or "W" worker); the stamps' list."""
    import sys

    from aioray._private.owner import core_worker, worker_context
    from aioray._private.rpc import rpc

    stamps: list[tuple[int, str]] = []
    clock = time.perf_counter_ns
    cw = worker_context.core_worker
    assert cw is not None
    peer = side == "D"  # the driver's push goes on a peer connection; the worker's reply
    flush, dispatch = rpc.Connection._flush, rpc.Connection._dispatch  # on a served one

    def ours(conn: Any) -> bool:
        return conn.name.startswith("peer") == peer and conn.name != "raylet"

    def stamped_flush(conn: Any) -> None:
        if conn._out and ours(conn):
            stamps.append((clock(), side + ":write"))
        flush(conn)

    def stamped_dispatch(conn: Any, *args: Any) -> None:
        if ours(conn):
            stamps.append((clock(), side + ":read"))
        dispatch(conn, *args)

    rpc.Connection._flush = stamped_flush  # type: ignore[method-assign]
    rpc.Connection._dispatch = stamped_dispatch  # type: ignore[method-assign]
    drain = cw.drain_posted

    def stamped_drain() -> None:
        stamps.append((clock(), side + ":drain"))
        drain()

    cw.drain_posted = stamped_drain  # type: ignore[method-assign]
    if side == "D":
        store = cw.store_result

        def stamped_store(oid: bytes, obj: Any) -> None:
            stamps.append((clock(), "D:store"))
            store(oid, obj)

        cw.store_result = stamped_store  # type: ignore[method-assign]
        call_then_now = getattr(rpc.Connection, "call_then_now", None)
        if call_then_now is not None:

            def stamped_call_then_now(conn: Any, *args: Any) -> int:
                stamps.append((clock(), "D:send"))  # (before: the reply may come first)
                return int(call_then_now(conn, *args))  # (its number: 0 when not sent)

            rpc.Connection.call_then_now = stamped_call_then_now  # type: ignore[method-assign]
        read_reply = getattr(rpc.Connection, "read_reply", None)
        if read_reply is not None:

            def stamped_read_reply(conn: Any, *args: Any) -> Any:
                frame = read_reply(conn, *args)
                if frame is not None:
                    stamps.append((clock(), "D:own"))
                return frame

            rpc.Connection.read_reply = stamped_read_reply  # type: ignore[method-assign]
        for module, name in ((core_worker, "result_interruptibly"),):
            _wrap_woken(module, name, stamps)
        waits = sys.modules.get("aioray._private.owner.thread_waits")
        if waits is not None:
            _wrap_woken(waits, "acquire_interruptibly", stamps)
        return stamps
    executor = _executor(cw)
    execute = executor.execute

    def stamped_execute(job: Any) -> Any:
        stamps.append((clock(), "W:exec"))
        result = execute(job)
        stamps.append((clock(), "W:done"))
        return result

    executor.execute = stamped_execute
    answer = sys.modules.get("aioray._private.rpc.answer")
    if answer is not None:
        send_now = answer.Answer.send_now

        def stamped_send_now(self: Any, body: Any, buffers: Any) -> bool:
            stamps.append((clock(), "W:send"))  # (before: the driver may read it first)
            return bool(send_now(self, body, buffers))

        answer.Answer.send_now = stamped_send_now
    return stamps


def _executor(cw: Any) -> Any:
    for handler in cw.extra_handlers.values():
        owner = getattr(handler, "__self__", None)
        if type(owner).__name__ == "TaskExecutor":
            return owner
    raise RuntimeError("no TaskExecutor in this worker")


def _wrap_woken(module: Any, name: str, stamps: list[tuple[int, str]]) -> None:
    wait = getattr(module, name)

    def stamped(*args: Any) -> Any:
        result = wait(*args)
        stamps.append((time.perf_counter_ns(), "D:woken"))
        return result

    setattr(module, name, stamped)


def breakdown(stamps: list[tuple[int, str]], n: int) -> None:
    present = {label for _, label in stamps}
    if "W:send" in present:  # replies leave from the execution thread: the worker's
        present -= {"W:drain", "W:write"}  # loop drains and writes for other things only
    if "D:send" in present:  # pushes leave from the caller's thread (likewise)
        present -= {"D:drain", "D:write"}
    if "D:own" in present:  # replies read by the caller's thread: the loop's stamps are
        present -= {"D:read", "D:store", "D:woken"}  # the odd call's that went its way
    order = [label for label in ORDER if label in present]
    deltas: dict[str, list[float]] = {label: [] for label in order[1:]}
    complete = 0
    i = 0
    while i < len(stamps):
        if stamps[i][1] != "D:remote":
            i += 1
            continue
        prev, got, j, k = stamps[i][0], {}, i + 1, 1
        while j < len(stamps) and k < len(order) and stamps[j][1] != "D:remote":
            if stamps[j][1] == order[k]:
                got[order[k]] = (stamps[j][0] - prev) / 1000
                prev, k = stamps[j][0], k + 1
            j += 1
        if k == len(order):
            complete += 1
            for label, us in got.items():
                deltas[label].append(us)
        i = j
    print(f"{complete} of {n} calls stamped at every hop; median us from the previous stamp:")
    total = 0.0
    for label in order[1:]:
        median = statistics.median(deltas[label])
        total += median
        print(f"  {label:9} {median:7.1f}")
    print(f"  sum      {total:7.1f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kind", choices=["task", "actor"], default="task")
    p.add_argument("--n", type=int, default=3000)
    a = p.parse_args()
    ray.init(num_cpus=1, include_dashboard=False)
    held: dict[str, Any] = {}

    def in_worker(op: int) -> Any:  # 1: stamp from now on, 2: hand the stamps over
        if op == 1:
            held["stamps"] = install("W")
            return None
        return list(held["stamps"])

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
    stamps = install("D")
    clock = time.perf_counter_ns
    for _ in range(a.n):
        stamps.append((clock(), "D:remote"))
        ray.get(call())
        stamps.append((clock(), "D:return"))
    worker = ray.get(call(2))
    ray.shutdown()
    breakdown(sorted(stamps + [tuple(s) for s in worker]), a.n)  # type: ignore[misc]


if __name__ == "__main__":
    main()
