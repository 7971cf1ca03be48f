"""aioray's `ray microbenchmark`: Ray's benchmark names and definitions
(python/ray/_private/ray_perf.py) run against `import aioray as ray`, plus two lines of
our own: init to first result (in a fresh process) and idle cluster memory.

Run it as `python benchmarks/microbenchmark.py`, as `aioray microbenchmark`, or load it
with `runpy.run_path(path)["main"](argv)`. Results go to stdout in Ray's format,
`<name> per second <mean> +- <std>`; failures and notes go to stderr.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import numpy as np
import psutil

import aioray as ray

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # run_path does not add it
import actor_benchmarks

MiB = 1024 * 1024


class Config(NamedTuple):
    """How long to measure, and which benchmarks to run."""

    warmup: float = 1.0  # seconds of warm-up calls before the trials (at least one call)
    duration: float = 2.0  # seconds per trial
    trials: int = 4
    pause: float = 1.0  # idle seconds before each benchmark, so the last one's frees settle
    timeout: float = 600.0  # a benchmark still running after this many seconds has failed
    filter: str = ""  # run only names containing this (Ray's TESTS_TO_RUN)
    skip: str = ""  # skip names containing this (Ray's TESTS_TO_SKIP)

    def selects(self, name: str) -> bool:
        if self.filter and self.filter not in name:
            return False
        return not (self.skip and self.skip in name)


# --quick: every benchmark runs a handful of calls; the whole suite in well under a minute.
QUICK = Config(warmup=0.0, duration=0.1, trials=2, pause=0.0, timeout=60.0)


class Result(NamedTuple):
    name: str
    mean: float
    std: float
    rate: bool = True  # "<name> per second ..." rather than "<name> ..."

    def line(self) -> str:
        label = f"{self.name} per second" if self.rate else self.name
        return f"{label} {round(self.mean, 2)} +- {round(self.std, 2)}"


class Benchmark(NamedTuple):
    name: str
    run: Callable[[Config], Result]


class Group(NamedTuple):
    """Benchmarks that share one cluster, started with `ray.init(**init_kwargs)`.

    init_kwargs None: no shared cluster; each benchmark starts and stops its own.
    """

    title: str
    benchmarks: list[Benchmark]
    init_kwargs: dict[str, Any] | None


class BenchmarkTimeout(Exception):
    pass


def timeit(name: str, fn: Callable[[], object], multiplier: float, cfg: Config) -> Result:
    """Calls of fn per second, times multiplier: mean and std over cfg.trials trials.

    Warm up for cfg.warmup seconds first (at least one call). Each trial calls fn for
    cfg.duration seconds in steps sized from the warm-up, so the clock is read about
    20 times a trial rather than after every call.
    """
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= cfg.warmup:
            break
    step = max(1, int(calls / max(elapsed, 1e-9) * cfg.duration / 20))
    rates = []
    for _ in range(max(1, cfg.trials)):
        calls, start = 0, time.perf_counter()
        while True:
            for _ in range(step):
                fn()
            calls += step
            elapsed = time.perf_counter() - start
            if elapsed >= cfg.duration:
                break
        rates.append(multiplier * calls / elapsed)
    return Result(name, statistics.fmean(rates), statistics.pstdev(rates))


def rate(
    name: str, multiplier: float = 1.0
) -> Callable[[Callable[[], Callable[[], object]]], Benchmark]:
    """Decorator: the function sets up and returns the call to time; the benchmark is its rate.

    Setup runs only when the benchmark is selected, so a filtered run skips the big arrays.
    """

    def wrap(setup: Callable[[], Callable[[], object]]) -> Benchmark:
        return Benchmark(name, lambda cfg: timeit(name, setup(), multiplier, cfg))

    return wrap


# ---- tasks and objects: Ray's definitions, one for one ------------------------------------
# Remote functions are made inside each setup, as Ray's main() makes most of its own: nested
# functions are pickled by value, so workers never need to import this file.


def _small_value() -> Any:
    @ray.remote
    def small_value():
        return b"ok"

    return small_value


@rate("single client get calls (Plasma Store)")
def _get_calls() -> Callable[[], object]:
    value = ray.put(0)
    return lambda: ray.get(value)


@rate("single client put calls (Plasma Store)")
def _put_calls() -> Callable[[], object]:
    return lambda: ray.put(0)


@rate("multi client put calls (Plasma Store)", 1000)
def _multi_put_calls() -> Callable[[], object]:
    @ray.remote
    def do_put_small():
        for _ in range(100):
            ray.put(0)

    return lambda: ray.get([do_put_small.remote() for _ in range(10)])


@rate("single client put gigabytes", 0.8)  # 800 MiB a call, counted as 0.8 GB as Ray does
def _put_gigabytes() -> Callable[[], object]:
    arr = np.zeros(100 * 1024 * 1024, dtype=np.int64)
    return lambda: ray.put(arr)


@rate("single client tasks and get batch")
def _tasks_and_get_batch() -> Callable[[], object]:
    small_value = _small_value()
    return lambda: ray.get([small_value.remote() for _ in range(1000)])


@rate("multi client put gigabytes", 8.0)  # 10 tasks x 10 puts of 80 MiB, counted as 8 GB
def _multi_put_gigabytes() -> Callable[[], object]:
    @ray.remote
    def do_put():
        for _ in range(10):
            ray.put(np.zeros(10 * 1024 * 1024, dtype=np.int64))

    return lambda: ray.get([do_put.remote() for _ in range(10)])


@rate("single client get object containing 10k refs")
def _get_containing_refs() -> Callable[[], object]:
    @ray.remote
    def create_object_containing_ref():
        return [ray.put(1) for _ in range(10000)]

    obj_containing_ref = create_object_containing_ref.remote()
    return lambda: ray.get(obj_containing_ref)


@rate("single client wait 1k refs")
def _wait_refs() -> Callable[[], object]:
    small_value = _small_value()

    def wait_multiple_refs() -> None:
        not_ready = [small_value.remote() for _ in range(1000)]
        # As Ray's: fetch_local only on the first wait; the fetch requests persist.
        fetch_local = True
        for _ in range(1000):
            _ready, not_ready = ray.wait(not_ready, fetch_local=fetch_local)
            fetch_local = False

    return wait_multiple_refs


@rate("single client tasks sync")
def _tasks_sync() -> Callable[[], object]:
    small_value = _small_value()
    return lambda: ray.get(small_value.remote())


@rate("single client tasks async", 1000)
def _tasks_async() -> Callable[[], object]:
    small_value = _small_value()
    return lambda: ray.get([small_value.remote() for _ in range(1000)])


TASKS_AND_OBJECTS = [
    _get_calls,
    _put_calls,
    _multi_put_calls,
    _put_gigabytes,
    _tasks_and_get_batch,
    _multi_put_gigabytes,
    _get_containing_refs,
    _wait_refs,
    _tasks_sync,
    _tasks_async,
]


# ---- aioray's own: start-up time and idle footprint ---------------------------------------

_FIRST_RESULT_SCRIPT = """
import time
import aioray as ray

@ray.remote
def f():
    return 1

start = time.perf_counter()
ray.init()
assert ray.get(f.remote()) == 1
print("FIRST_RESULT_SECONDS", time.perf_counter() - start, flush=True)
ray.shutdown()
"""


def _init_to_first_result(cfg: Config) -> Result:
    """Seconds from ray.init() to ray.get(f.remote()) in a fresh process, once per trial."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "AIORAY_ADDRESS")}
    samples = []
    for _ in range(max(1, cfg.trials)):
        code, out, err = _run_fresh(_FIRST_RESULT_SCRIPT, env, timeout=min(cfg.timeout, 120.0))
        marked = [ln for ln in out.splitlines() if ln.startswith("FIRST_RESULT_SECONDS")]
        if code != 0 or not marked:
            raise RuntimeError(f"fresh process exited {code}\n{out}\n{err}")
        samples.append(float(marked[-1].split()[1]))
    return Result(
        "init to first result seconds",
        statistics.fmean(samples),
        statistics.pstdev(samples),
        rate=False,
    )


def _run_fresh(script: str, env: dict[str, str], timeout: float) -> tuple[int, str, str]:
    """Run script in a new interpreter; on timeout (or Ctrl-C) kill it and its cluster."""
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        _kill_tree(proc.pid)
        proc.communicate()
        raise
    return proc.returncode, out, err


def _kill_tree(pid: int) -> None:
    try:
        root = psutil.Process(pid)
        family = [*root.children(recursive=True), root]
    except psutil.Error:
        return
    for p in family:
        try:
            p.kill()
        except psutil.Error:
            pass


def _idle_cluster_memory(cfg: Config) -> Result:
    """USS (MiB) of the cluster's daemon processes, after init and one task, once idle."""
    before = _daemon_processes()
    ray.init()
    try:

        @ray.remote
        def one():
            return 1

        ray.get(one.remote())
        procs = _wait_until_idle(lambda: _cluster_processes(before))
        if not procs:
            raise RuntimeError("no process with 'aioray.daemons' in its command line")
        samples = []
        for i in range(max(1, cfg.trials)):
            if i:
                time.sleep(0.2)
            samples.append(sum(_uss(p) for p in procs) / MiB)
        print(f"  idle cluster: {len(procs)} processes: {_describe(procs)}", file=sys.stderr)
    finally:
        ray.shutdown()
    return Result(
        "idle cluster memory MiB", statistics.fmean(samples), statistics.pstdev(samples), rate=False
    )


def _daemon_processes() -> dict[tuple[int, float], psutil.Process]:
    """Every live process whose command line names aioray.daemons, by (pid, start time)."""
    found = {}
    for p in psutil.process_iter(["cmdline", "create_time"]):
        if "aioray.daemons" in " ".join(p.info["cmdline"] or ()):
            found[(p.pid, p.info["create_time"])] = p
    return found


def _cluster_processes(before: dict[tuple[int, float], psutil.Process]) -> list[psutil.Process]:
    """Daemon processes that appeared since `before`: our own descendants when there are
    any (other clusters may run on this machine), otherwise all the new ones."""
    new = [p for key, p in _daemon_processes().items() if key not in before]
    try:
        mine = {c.pid for c in psutil.Process().children(recursive=True)}
    except psutil.Error:
        mine = set()
    return [p for p in new if p.pid in mine] or new


def _wait_until_idle(
    find: Callable[[], list[psutil.Process]], timeout: float = 30.0, window: float = 0.5
) -> list[psutil.Process]:
    """Wait until the processes' set is stable and together they use < 5% of a core."""
    deadline = time.monotonic() + timeout
    procs = find()
    cpu = sum(_cpu_seconds(p) for p in procs)
    while time.monotonic() < deadline:
        time.sleep(window)
        now = find()
        now_cpu = sum(_cpu_seconds(p) for p in now)
        if {p.pid for p in now} == {p.pid for p in procs} and now_cpu - cpu < 0.05 * window:
            return now
        procs, cpu = now, now_cpu
    print(f"  cluster not idle after {timeout:g} s; measuring anyway", file=sys.stderr)
    return procs


def _cpu_seconds(p: psutil.Process) -> float:
    try:
        t = p.cpu_times()
    except psutil.Error:
        return 0.0
    return t.user + t.system


def _describe(procs: list[psutil.Process]) -> str:
    """Count the processes by module name, e.g. "aioray.daemons.worker x2"."""
    counts: dict[str, int] = {}
    for p in procs:
        try:
            words = p.cmdline()
        except psutil.Error:
            continue
        name = next((w for w in words if "aioray.daemons" in w), " ".join(words[:3]))
        counts[name] = counts.get(name, 0) + 1
    return ", ".join(f"{n} x{c}" for n, c in sorted(counts.items()))


def _uss(p: psutil.Process) -> int:
    try:
        return p.memory_full_info().uss
    except psutil.Error:
        return 0


AIORAY = [
    Benchmark("init to first result seconds", _init_to_first_result),
    Benchmark("idle cluster memory MiB", _idle_cluster_memory),
]


# ---- actors: Ray's definitions (benchmarks/actor_benchmarks.py) and two lines of ours ------

ACTORS = [rate(name, mult)(setup) for name, setup, mult in actor_benchmarks.RATES]


def _actor_creation(cfg: Config) -> Result:
    rates = [actor_benchmarks.actor_creation(100)[1] for _ in range(max(1, cfg.trials // 2))]
    return Result(
        "actor creation (100 actors, ready to serve)",
        statistics.fmean(rates),
        statistics.pstdev(rates),
    )


def _idle_actor_memory(cfg: Config) -> Result:
    mib = actor_benchmarks.idle_actor_uss_mib()
    return Result("idle actor memory MiB", mib, 0.0, rate=False)


ACTORS += [
    Benchmark("actor creation (100 actors, ready to serve)", _actor_creation),
    Benchmark("idle actor memory MiB", _idle_actor_memory),
]


# ---- the async API: awaiting results against the sync get of the same -------------------


@rate("single client tasks async gather", 10000)
def _tasks_async_gather() -> Callable[[], object]:
    # Compare with "single client tasks async" (a sync get of 1000): awaiting must not be slower.
    import asyncio

    small_value = _small_value()

    async def gather() -> None:
        await asyncio.gather(*[small_value.remote() for _ in range(10000)])

    return lambda: asyncio.run(gather())


ASYNC_API = [_tasks_async_gather]


# ---- placement groups: Ray's definition (100 groups of one tiny bundle, then removed) ----

NUM_PGS = 100


@rate("placement group create/removal", NUM_PGS)
def _placement_group_create_removal() -> Callable[[], object]:
    from aioray.util import placement_group, remove_placement_group

    def create_and_remove() -> None:
        pgs = [placement_group([{"custom": 0.001}]) for _ in range(NUM_PGS)]
        for pg in pgs:
            pg.wait(timeout_seconds=30)
        # Removal is part of the measure, as in Ray: without it the table keeps growing.
        for pg in pgs:
            remove_placement_group(pg)

    return create_and_remove


PLACEMENT_GROUPS = [_placement_group_create_removal]


# ---- the groups, in Ray's order ----------------------------------------------------------

GROUPS: list[Group] = [
    Group("tasks and objects", TASKS_AND_OBJECTS, {}),
    Group("actors", ACTORS, {}),
    Group("placement groups", PLACEMENT_GROUPS, {"resources": {"custom": 100}}),
    Group("async api", ASYNC_API, {}),
    Group("aioray", AIORAY, None),
]


# ---- running --------------------------------------------------------------------------


def run(cfg: Config, groups: Sequence[Group] = GROUPS) -> tuple[list[Result], list[str]]:
    """Run the selected benchmarks; print each result line as it is measured."""
    results: list[Result] = []
    failures: list[str] = []
    for group in groups:
        chosen = [b for b in group.benchmarks if cfg.selects(b.name)]
        if not chosen:
            continue
        try:
            with _cluster(group.init_kwargs, cfg):
                for bench in chosen:
                    result = _run_one(bench, cfg)
                    if result is None:
                        failures.append(bench.name)
                    else:
                        results.append(result)
        except Exception:
            print(f"FAILED group {group.title!r}:", file=sys.stderr)
            traceback.print_exc()
            done = {r.name for r in results}
            failures += [b.name for b in chosen if b.name not in done and b.name not in failures]
    return results, failures


def _run_one(bench: Benchmark, cfg: Config) -> Result | None:
    time.sleep(cfg.pause)
    try:
        with _deadline(cfg.timeout, bench.name):
            result = bench.run(cfg)
    except Exception:
        print(f"FAILED {bench.name}:", file=sys.stderr)
        traceback.print_exc()
        return None
    print(result.line(), flush=True)
    return result


@contextmanager
def _cluster(init_kwargs: dict[str, Any] | None, cfg: Config) -> Iterator[None]:
    if init_kwargs is None:
        yield
        return
    with _deadline(cfg.timeout, "ray.init"):
        ray.init(**init_kwargs)
    try:
        yield
    finally:
        with _deadline(cfg.timeout, "ray.shutdown"):
            ray.shutdown()


@contextmanager
def _deadline(seconds: float, name: str) -> Iterator[None]:
    """Turn a benchmark that hangs into a BenchmarkTimeout, so the rest still run.

    A timer thread sends this process SIGINT; a blocked get/wait wakes with
    KeyboardInterrupt, which we translate. Only possible on the main thread.
    """
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = threading.Event()

    def fire() -> None:
        fired.set()
        os.kill(os.getpid(), signal.SIGINT)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    except KeyboardInterrupt:
        if fired.is_set():
            raise BenchmarkTimeout(f"{name}: still running after {seconds:g} s") from None
        raise
    finally:
        timer.cancel()


def _parse_args(argv: Sequence[str] | None) -> tuple[Config, bool]:
    parser = argparse.ArgumentParser(
        prog="aioray microbenchmark",
        description="Ray's microbenchmark against aioray: `<name> per second <mean> +- <std>`.",
    )
    parser.add_argument(
        "--filter",
        default=os.environ.get("TESTS_TO_RUN", ""),
        help="run only benchmarks whose name contains this (env TESTS_TO_RUN)",
    )
    parser.add_argument(
        "--skip",
        default=os.environ.get("TESTS_TO_SKIP", ""),
        help="skip benchmarks whose name contains this (env TESTS_TO_SKIP)",
    )
    parser.add_argument("--duration", type=float, help="seconds per trial (default 2)")
    parser.add_argument("--trials", type=int, help="trials per benchmark (default 4)")
    parser.add_argument("--warmup", type=float, help="warm-up seconds (default 1)")
    parser.add_argument("--pause", type=float, help="idle seconds before each (default 1)")
    parser.add_argument(
        "--timeout", type=float, help="seconds before a benchmark counts as hung (default 600)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny durations: a smoke test of every benchmark in < 60 s",
    )
    parser.add_argument("--list", action="store_true", help="print the benchmark names and exit")
    words = list(sys.argv[1:] if argv is None else argv)
    if words[:1] == ["--"]:  # as passed on by `aioray microbenchmark -- ...`
        words = words[1:]
    args = parser.parse_args(words)
    base = QUICK if args.quick else Config()
    chosen = {
        k: getattr(args, k)
        for k in ("duration", "trials", "warmup", "pause", "timeout")
        if getattr(args, k) is not None
    }
    return base._replace(filter=args.filter, skip=args.skip, **chosen), args.list


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for the script and for `aioray microbenchmark`; returns the exit code."""
    cfg, list_only = _parse_args(argv)
    if list_only:
        for group in GROUPS:
            for bench in group.benchmarks:
                if cfg.selects(bench.name):
                    print(bench.name)
        return 0
    print("Tip: set TESTS_TO_RUN='pattern' to run a subset of benchmarks", flush=True)
    results, failures = run(cfg)
    if failures:
        print(f"{len(failures)} benchmark(s) failed: {', '.join(failures)}", file=sys.stderr)
        return 1
    if not results:
        print(f"no benchmark name contains {cfg.filter!r}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
