"""This process's user metrics, aggregated locally until the next report to the raylet.

Floor 3 (no sockets): ``aioray.util.metrics`` records here under one lock (any thread,
no frame, no allocation beyond the series' first point); the ``MetricsReporter`` of the
CoreWorker takes the deltas (counters, histograms) and latest values (gauges) every
``config.METRICS_REPORT_S`` and sends them to the node's raylet, which exports them.
Nothing runs in a driver until its first metric is defined; a worker also reports its
executor's task counts (``TaskCounts``, for ``ray_tasks``) when they changed.

Report wire form (``report_metrics`` notice, a dict; schema.MetricsReport declares it):
``d`` new definitions ``[name, kind, description, tag_keys, boundaries]``;
``c`` ``[name, label_values, delta]``; ``g`` ``[name, label_values, value]``;
``h`` ``[name, label_values, bucket_deltas, sum_delta, count_delta]``;
``t`` (workers) a snapshot of the executor's task counts ``[state, name, job_hex, n]``.
"""

from __future__ import annotations

import asyncio
import bisect
import threading
import warnings
from collections.abc import Callable

from aioray._private.wire import config

COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"
Labels = tuple[str, ...]
# A report as built here: its entries are lists of the positions schema.MetricsReport
# declares (msgpack sends a list and a tuple alike).
Report = dict[str, list[list[object]]]


class _Definition:
    __slots__ = ("boundaries", "description", "kind", "name", "tag_keys")

    def __init__(
        self, name: str, kind: str, description: str, tag_keys: Labels, boundaries: list[float]
    ) -> None:
        self.name = name
        self.kind = kind
        self.description = description
        self.tag_keys = tag_keys
        self.boundaries = boundaries

    def wire(self) -> list[object]:
        return [self.name, self.kind, self.description, list(self.tag_keys), self.boundaries]


class _Histogram:
    """One histogram series' points since the last report."""

    __slots__ = ("bounds", "buckets", "count", "sum")

    def __init__(self, bounds: list[float]) -> None:
        self.bounds = bounds
        self.buckets = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0


class Registry:
    """Definitions and not-yet-reported points of one process (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.definitions: dict[str, _Definition] = {}
        self._new: list[_Definition] = []
        self._counters: dict[tuple[str, Labels], float] = {}
        self._gauges: dict[tuple[str, Labels], float] = {}
        self._histograms: dict[tuple[str, Labels], _Histogram] = {}
        self.collectors: list[Callable[[Report], None]] = []
        self.wake: Callable[[], None] | None = None  # the reporter's start, set by a CoreWorker
        self.active = False  # a metric was defined: the reporter runs

    def define(
        self,
        name: str,
        kind: str,
        description: str,
        tag_keys: Labels,
        boundaries: list[float] | None = None,
    ) -> None:
        """Announce a metric (again: a no-op; the first definition of a name wins)."""
        with self._lock:
            known = self.definitions.get(name)
            if known is not None:
                if known.kind != kind or known.tag_keys != tag_keys:
                    warnings.warn(
                        f"Metric {name!r} is already defined as a {known.kind} with tag keys "
                        f"{known.tag_keys}; this {kind}'s points will not be exported.",
                        UserWarning,
                        stacklevel=4,
                    )
                return
            d = _Definition(name, kind, description, tag_keys, sorted(boundaries or []))
            self.definitions[name] = d
            self._new.append(d)
        self.start()

    def start(self) -> None:
        """Make sure the reporter runs (first metric, or a collector with news)."""
        if not self.active:
            self.active = True
            if self.wake is not None:
                self.wake()

    def inc(self, name: str, labels: Labels, value: float) -> None:
        key = (name, labels)
        with self._lock:
            self._counters[key] = self._counters.get(key, 0.0) + value

    def set(self, name: str, labels: Labels, value: float) -> None:
        with self._lock:
            self._gauges[(name, labels)] = value

    def observe(self, name: str, labels: Labels, value: float) -> None:
        key = (name, labels)
        with self._lock:
            h = self._histograms.get(key)
            if h is None:
                h = self._histograms[key] = _Histogram(self.definitions[name].boundaries)
            # Prometheus buckets are "less than or equal": a value on a bound counts in it.
            h.buckets[bisect.bisect_left(h.bounds, value)] += 1
            h.sum += value
            h.count += 1

    def take_report(self) -> Report:
        """What changed since the last call, in the wire form above (empty: nothing)."""
        with self._lock:
            new, self._new = self._new, []
            counters, self._counters = self._counters, {}
            gauges, self._gauges = self._gauges, {}
            hists, self._histograms = self._histograms, {}
        report: Report = {}
        if new:
            report["d"] = [d.wire() for d in new]
        if counters:
            report["c"] = [[n, list(lv), v] for (n, lv), v in counters.items()]
        if gauges:
            report["g"] = [[n, list(lv), v] for (n, lv), v in gauges.items()]
        if hists:
            report["h"] = [[n, list(lv), h.buckets, h.sum, h.count] for (n, lv), h in hists.items()]
        for collect in self.collectors:
            collect(report)
        return report

    def redefine_all(self) -> None:
        """A new raylet connection (``init`` after ``shutdown``) must hear every definition."""
        with self._lock:
            self._new = list(self.definitions.values())


REGISTRY = Registry()


class MetricsReporter:
    """Sends ``REGISTRY``'s news to the raylet every METRICS_REPORT_S, once started."""

    def __init__(self, loop: asyncio.AbstractEventLoop, send: Callable[[Report], None]):
        self.loop = loop
        self.send = send
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        REGISTRY.wake = self.wake
        if REGISTRY.active:
            REGISTRY.redefine_all()  # points recorded before init are kept and sent
            self.wake()

    def wake(self) -> None:
        """(any thread) Start the periodic report."""
        self.loop.call_soon_threadsafe(self._start)

    def _start(self) -> None:
        if self._timer is None and not self._closed:
            self._timer = self.loop.call_later(config.METRICS_REPORT_S, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self.flush()
        self._start()

    def flush(self) -> None:
        """(loop) Send what is pending now (also at exit)."""
        report = REGISTRY.take_report()
        if report:
            self.send(report)

    def close(self) -> None:
        """(loop) Send the last report and stop."""
        if self._closed:
            return
        self.flush()
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if REGISTRY.wake == self.wake:
            REGISTRY.wake = None


class TaskCounts:
    """A worker's executor-side task counts by (state, name, job id), for ``ray_tasks``.

    The execution thread runs one task at a time: RUNNING is that task (one attribute
    write), FINISHED and FAILED one dict update each. The reporter sends a snapshot
    when they changed. Cost per task: ~0.3 µs (benchmarks/metrics_benchmark.py).
    """

    def __init__(self) -> None:
        self.done: dict[tuple[bool, str, bytes], int] = {}  # (failed, name, job) -> tasks
        self.running: tuple[str, bytes] | None = None
        # RUNNING_IN_RAY_GET / _WAIT while the running task blocks (Ray's states), and every
        # (state, name, job) shown so far: each is reported again, 0 once it has ended.
        self.blocked_in: str | None = None
        self.blocked_rows: set[tuple[str, str, bytes]] = set()
        self.changed = False

    def started(self, name: str, job: bytes) -> None:
        self.running = (name, job)
        self.changed = True

    def blocked(self, state: str | None) -> None:
        """The running task blocks in ray.get or ray.wait (``state``), or resumes (None)."""
        self.blocked_in = state
        self.changed = True

    def ended(self, name: str, job: bytes, failed: bool) -> None:
        self.running = None
        self.blocked_in = None
        key = (failed, name, job)
        self.done[key] = self.done.get(key, 0) + 1

    def collect(self, report: Report) -> None:
        if not self.changed:
            return
        self.changed = False
        running, blocked = self.running, self.blocked_in
        done = dict(self.done)  # a copy: the thread may add a key
        rows: list[list[object]] = [
            ["FAILED" if failed else "FINISHED", name, job.hex(), n]
            for (failed, name, job), n in done.items()
        ]
        names = {(name, job) for _, name, job in done}
        current = None
        if running is not None:
            names.add(running)
            if blocked is not None:
                current = (blocked, *running)
                self.blocked_rows.add(current)
        rows += [["RUNNING", n, j.hex(), int((n, j) == running and not current)] for n, j in names]
        rows += [[st, n, j.hex(), int((st, n, j) == current)] for st, n, j in self.blocked_rows]
        report["t"] = rows
