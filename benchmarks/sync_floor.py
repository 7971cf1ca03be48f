"""The floor of a sync round trip with aioray's threads and hops, doing nothing else (#21).

A driver process with a caller thread and a uvloop loop thread, a worker process with a
uvloop loop thread and an execution thread, as aioray's: the caller posts a request to
its loop (``call_soon_threadsafe``) and sleeps on a lock; the loop writes 100 bytes to
the worker; the worker's loop reads them and hands them to the execution thread
through a queue; that thread writes the reply to the socket itself; the driver's loop
reads it and releases the caller's lock. Five wake-ups, two TCP hops, no work: what
is left of a round trip once every line of aioray's own Python is gone.

``--wakeups`` takes the hops away one by one, as aioray did: 4, the caller writes the
request itself (session 10); 3, it also reads the reply itself (session 11); 2, the
worker's execution thread also reads the request itself (not done: a task's cancel
must still be read while it runs).

``--work``/``--cwork`` keep the worker (before it replies) and the caller (between
calls) busy that many µs, so each side sleeps as long as in a real round trip;
``--spin`` makes the waiting threads poll up to that many µs before they sleep, as
rpc/spin_wait.py does (the caller in modes 3 and 2, the worker's execution thread, or
its reading thread in mode 2). On a VM the difference is what waking a halted vCPU
costs (session 12: ~125 against ~62 µs with ``--wakeups 2 --work 50 --cwork 30``).

    python benchmarks/sync_floor.py [--n 5000] [--rounds 3] [--wakeups 5|4|3|2]
        [--work US] [--cwork US] [--spin US]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import queue
import select
import socket
import statistics
import threading
import time
from collections.abc import Callable
from functools import partial

import uvloop

MESSAGE = b"x" * 100
WORK_S = 0.0  # --work
SPIN_S = 0.0  # --spin


def busy(seconds: float) -> None:
    """Work (without sleeping) for ``seconds``."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def spin(ready: Callable[[], object]) -> None:
    """Poll ``ready`` for up to --spin, yielding the CPU between polls."""
    end = time.perf_counter() + SPIN_S
    while not ready() and time.perf_counter() < end:
        os.sched_yield()


def worker(sock: socket.socket, direct: bool = False) -> None:
    """The worker process: a loop thread reads, an execution thread replies (``direct``:
    the execution thread reads too)."""
    jobs: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
    fd = sock.fileno()
    if direct:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while True:
            spin(partial(poller.poll, 0))
            job = os.read(fd, 65536)
            if not job:
                os._exit(0)
            busy(WORK_S)
            os.write(fd, job)

    def execute() -> None:
        while True:
            spin(jobs.qsize)
            job = jobs.get()
            if job is None:
                return
            busy(WORK_S)
            os.write(fd, job)  # the reply leaves from this thread (rpc.Answer.send_now)

    threading.Thread(target=execute, daemon=True).start()

    class Reader(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            jobs.put(data)

        def connection_lost(self, exc: Exception | None) -> None:
            jobs.put(None)
            loop.stop()

    loop = uvloop.new_event_loop()
    loop.run_until_complete(loop.connect_accepted_socket(Reader, sock))
    loop.run_forever()
    os._exit(0)


class Driver:
    """The driver process: a caller thread and a loop thread."""

    def __init__(self, sock: socket.socket) -> None:
        self.loop = uvloop.new_event_loop()
        self.transport: asyncio.Transport | None = None
        self.wfd = -1  # the caller's own duplicate of the socket (``round_trip_written``)
        self.waiting: threading.Lock | None = None
        ready = threading.Event()
        threading.Thread(target=self._run, args=(sock, ready), daemon=True).start()
        ready.wait()

    def _run(self, sock: socket.socket, ready: threading.Event) -> None:
        driver = self

        class Reader(asyncio.Protocol):
            def data_received(self, data: bytes) -> None:
                lock, driver.waiting = driver.waiting, None
                if lock is not None:
                    lock.release()  # (MemoryStore.put -> ThreadWait.arrived)

        self.transport, _ = self.loop.run_until_complete(
            self.loop.connect_accepted_socket(Reader, sock)
        )
        self.wfd = os.dup(sock.fileno())
        ready.set()
        self.loop.run_forever()

    def round_trip(self) -> None:
        lock = threading.Lock()
        lock.acquire()
        self.waiting = lock
        assert self.transport is not None
        self.loop.call_soon_threadsafe(self.transport.write, MESSAGE)  # (CoreWorker.post)
        lock.acquire()

    def round_trip_written(self) -> None:
        """The caller writes the request itself (Connection.call_then_now)."""
        lock = threading.Lock()
        lock.acquire()
        self.waiting = lock
        os.write(self.wfd, MESSAGE)
        lock.acquire()


def round_trip_own(fd: int, poller: select.poll) -> None:
    """The caller writes the request and reads the reply itself (rpc/thread_reads.py)."""
    os.write(fd, MESSAGE)
    spin(partial(poller.poll, 0))
    os.read(fd, 65536)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--wakeups", type=int, choices=[5, 4, 3, 2], default=5)
    p.add_argument("--work", type=float, default=0.0, help="µs the worker works a call")
    p.add_argument("--cwork", type=float, default=0.0, help="µs the caller works between")
    p.add_argument("--spin", type=float, default=0.0, help="µs a waiter polls first")
    a = p.parse_args()
    global WORK_S, SPIN_S
    WORK_S, SPIN_S = a.work / 1e6, a.spin / 1e6
    listener = socket.create_server(("127.0.0.1", 0))
    pid = os.fork()
    if pid == 0:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        worker(conn, direct=a.wakeups == 2)
    sock = socket.create_connection(listener.getsockname())
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    driver = None
    if a.wakeups >= 4:
        driver = Driver(sock)
        round_trip = driver.round_trip if a.wakeups == 5 else driver.round_trip_written
    else:
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        round_trip = partial(round_trip_own, sock.fileno(), poller)
    for _ in range(500):
        round_trip()
    for _ in range(a.rounds):
        lat = []
        start = time.perf_counter()
        for _ in range(a.n):
            busy(a.cwork / 1e6)
            t = time.perf_counter()
            round_trip()
            lat.append(time.perf_counter() - t)
        wall = time.perf_counter() - start
        print(
            f"floor, {a.wakeups} wake-ups, work {a.work:g}/{a.cwork:g} us, spin {a.spin:g} us "
            f"{a.n / wall:7.0f}/s  "
            f"median {statistics.median(lat) * 1e6:6.1f} us  "
            f"p10 {statistics.quantiles(lat, n=10)[0] * 1e6:6.1f} us",
            flush=True,
        )
    sock.shutdown(socket.SHUT_RDWR)  # (the worker sees the end and exits)
    os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
