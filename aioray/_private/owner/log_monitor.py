"""Driver side of worker logs: print forwarded lines with their origin, deduplicated.

Each line is printed as ``(name pid=…, ip=…) text``, on the driver's stderr if
the worker wrote it to stderr. Deduplication follows Ray's:

1. The first occurrence of a line prints at once, and opens a window
   (``AIORAY_DEDUP_LOGS_WINDOW_S``, default 5 s).
2. The same text (same stream, prefix aside) from another worker within the
   window is held and counted. A worker repeating its own line prints normally,
   until a second worker has printed that line too.
3. When the window ends, one ``text [repeated Nx across cluster]`` stands for
   the N held copies, under the prefix of the latest, and a new window opens
   for that text; a window with nothing held forgets the text.

Printed lines keep each worker's order; a held copy shows only in the later
summary. Windows end on a timer thread, and ``flush()`` (at shutdown) prints
every pending summary at once. ``AIORAY_DEDUP_LOGS=0`` turns deduplication
off. Both settings are read per message, so they apply without a restart.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
from collections.abc import Hashable
from dataclasses import dataclass, field

from aioray._private.wire.schema import WorkerLog

DEFAULT_WINDOW_S = 5.0
HINT = (
    " (aioray deduplicates logs by default. Set AIORAY_DEDUP_LOGS=0 to disable log "
    "deduplication, or AIORAY_DEDUP_LOGS_WINDOW_S to change its window.)"
)

Output = list[tuple[str, str]]  # (stream, text to print) in order


@dataclass
class _Seen:
    deadline: float
    prefix: str
    sources: set[Hashable]
    held: int = 0


@dataclass
class LogDeduplicator:
    """The deduplication state: batches and times in, lines to print out (no I/O)."""

    window_s: float
    seen: dict[tuple[str, str], _Seen] = field(default_factory=dict)  # in deadline order
    holding: dict[tuple[str, str], _Seen] = field(default_factory=dict)
    hinted: bool = False

    def add(
        self, prefix: str, stream: str, lines: list[str], source: Hashable, now: float
    ) -> Output:
        """Lines of one batch to print now (summaries of ended windows first)."""
        out = self.expire(now)
        for line in lines:
            key = (stream, line)
            entry = self.seen.get(key)
            if entry is None:
                if line.strip():  # blank lines are never held
                    self.seen[key] = _Seen(now + self.window_s, prefix, {source})
                out.append((stream, prefix + line))
                continue
            entry.sources.add(source)
            if len(entry.sources) == 1:  # only this worker printed it so far
                out.append((stream, prefix + line))
                continue
            entry.held += 1
            entry.prefix = prefix
            self.holding[key] = entry
        return out

    def expire(self, now: float) -> Output:
        """Summaries of the windows ended by ``now``; forget texts nobody repeated."""
        out: Output = []
        while self.seen:
            key, entry = next(iter(self.seen.items()))
            if entry.deadline > now:
                break
            del self.seen[key]
            if entry.held:
                out.append(self._summary(key, entry))
                entry.held = 0
                entry.deadline = now + self.window_s
                self.seen[key] = entry  # to the end: deadlines stay in order
                del self.holding[key]
        return out

    def next_deadline(self) -> float | None:
        """When the earliest window with held copies ends (None: nothing held)."""
        return min((e.deadline for e in self.holding.values()), default=None)

    def flush(self) -> Output:
        """Every pending summary now; forget everything."""
        out = [self._summary(key, entry) for key, entry in self.holding.items()]
        self.seen.clear()
        self.holding.clear()
        return out

    def _summary(self, key: tuple[str, str], entry: _Seen) -> tuple[str, str]:
        stream, line = key
        text = f"{entry.prefix}{line} [repeated {entry.held}x across cluster]"
        if not self.hinted:  # Ray explains deduplication once, on the first summary
            self.hinted = True
            text += HINT
        return stream, text


def prefix_of(name: str | None, pid: int, ip: str) -> str:
    """``(f pid=12, ip=10.0.0.1) ``, or ``(pid=12, ip=…) `` before any task ran."""
    return f"({name} pid={pid}, ip={ip}) " if name else f"(pid={pid}, ip={ip}) "


class LogMonitor:
    """Prints batches through a deduplicator, from any thread; a timer ends windows."""

    def __init__(self, dedup: bool, window_s: float) -> None:
        self.settings = (dedup, window_s)
        self.dedup = LogDeduplicator(window_s) if dedup else None
        self.lock = threading.Lock()
        self.timer: threading.Timer | None = None

    def print_batch(self, prefix: str, stream: str, lines: list[str], source: Hashable) -> None:
        if self.dedup is None:
            _write([(stream, prefix + line) for line in lines])
            return
        with self.lock:
            out = self.dedup.add(prefix, stream, lines, source, time.monotonic())
            self._arm()
            _write(out)

    def flush(self) -> None:
        with self.lock:
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            if self.dedup is not None:
                _write(self.dedup.flush())

    def _arm(self) -> None:
        if self.timer is not None or self.dedup is None:
            return
        deadline = self.dedup.next_deadline()
        if deadline is None:
            return
        self.timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._on_timer)
        self.timer.daemon = True
        self.timer.start()

    def _on_timer(self) -> None:
        with self.lock:
            self.timer = None
            if self.dedup is not None:
                _write(self.dedup.expire(time.monotonic()))
                self._arm()


def _write(out: Output) -> None:
    try:
        for stream, text in out:
            (sys.stderr if stream == "stderr" else sys.stdout).write(text + "\n")
        if out:
            sys.stdout.flush()
            sys.stderr.flush()
    except (OSError, ValueError):  # the driver's stream is closed
        pass


def _settings() -> tuple[bool, float]:
    dedup = os.environ.get("AIORAY_DEDUP_LOGS", "1") != "0"
    try:
        window = float(os.environ.get("AIORAY_DEDUP_LOGS_WINDOW_S", DEFAULT_WINDOW_S))
    except ValueError:
        window = DEFAULT_WINDOW_S
    return dedup, window


_monitor: LogMonitor | None = None
_monitor_lock = threading.Lock()


def monitor() -> LogMonitor:
    """This process's monitor, rebuilt (after a flush) when the settings changed."""
    global _monitor
    settings = _settings()
    with _monitor_lock:
        if _monitor is None or _monitor.settings != settings:
            if _monitor is not None:
                _monitor.flush()
            _monitor = LogMonitor(*settings)
        return _monitor


def print_lines(body: WorkerLog) -> None:
    """Print one ``worker_log`` message: ``[pid, ip, stream, lines, name]``."""
    pid, ip, stream, lines = body[:4]
    name = body[4] if len(body) > 4 else None
    monitor().print_batch(prefix_of(name, pid, ip), stream, lines, (ip, pid))


def flush() -> None:
    """Print pending ``[repeated Nx]`` summaries now (call at shutdown; any thread)."""
    if _monitor is not None:
        _monitor.flush()


atexit.register(flush)  # a script that never calls shutdown() still sees its summaries


class LogSync:
    """Lets a driver's get return only after the prints of the tasks it waited for.

    A worker forwards a numbered sync notice behind a task's lines (one per stream);
    the task's reply carries the number; ``wait`` blocks (bounded) until both
    notices have arrived, so those lines have been printed.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._seen: dict[tuple[int, str], int] = {}  # (pid, stream) -> sync number
        self._expected: dict[tuple[int, str], int] = {}

    def received(self, body: WorkerLog) -> None:
        """(loop) A ``worker_log`` message: print its lines, note a sync notice."""
        if body[3]:
            print_lines(body)
        if len(body) > 5:
            with self._cond:
                self._seen[(body[0], body[2])] = body[5]
                self._cond.notify_all()

    def expect(self, seen: tuple[int, int] | None) -> None:
        if not seen:
            return
        pid, seq = seen
        with self._cond:
            for stream in ("stdout", "stderr"):
                key = (pid, stream)
                self._expected[key] = max(seq, self._expected.get(key, 0))

    def wait(self, timeout: float = 0.5) -> None:
        """Bounded: a line lost with a dead raylet must not stall the caller."""
        if not self._expected:
            return
        with self._cond:
            self._cond.wait_for(
                lambda: all(self._seen.get(k, 0) >= n for k, n in self._expected.items()),
                timeout,
            )
            self._expected.clear()  # met, or given up on: never wait twice for it
