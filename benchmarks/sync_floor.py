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

    python benchmarks/sync_floor.py [--n 5000] [--rounds 3] [--wakeups 5|4|3|2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import queue
import socket
import statistics
import threading
import time
from functools import partial

import uvloop

MESSAGE = b"x" * 100


def worker(sock: socket.socket, direct: bool = False) -> None:
    """The worker process: a loop thread reads, an execution thread replies (``direct``:
    the execution thread reads too)."""
    jobs: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
    fd = sock.fileno()
    if direct:
        while True:
            job = os.read(fd, 65536)
            if not job:
                os._exit(0)
            os.write(fd, job)

    def execute() -> None:
        while True:
            job = jobs.get()
            if job is None:
                return
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


def round_trip_own(fd: int) -> None:
    """The caller writes the request and reads the reply itself (rpc/thread_reads.py)."""
    os.write(fd, MESSAGE)
    os.read(fd, 65536)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--wakeups", type=int, choices=[5, 4, 3, 2], default=5)
    a = p.parse_args()
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
        round_trip = partial(round_trip_own, sock.fileno())
    for _ in range(500):
        round_trip()
    for _ in range(a.rounds):
        lat = []
        start = time.perf_counter()
        for _ in range(a.n):
            t = time.perf_counter()
            round_trip()
            lat.append(time.perf_counter() - t)
        wall = time.perf_counter() - start
        print(
            f"floor, {a.wakeups} wake-ups {a.n / wall:7.0f}/s  "
            f"median {statistics.median(lat) * 1e6:6.1f} us  "
            f"p10 {statistics.quantiles(lat, n=10)[0] * 1e6:6.1f} us",
            flush=True,
        )
    if driver is not None:
        driver.loop.call_soon_threadsafe(driver.transport.close)  # type: ignore[union-attr]
    else:
        sock.close()
    os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
