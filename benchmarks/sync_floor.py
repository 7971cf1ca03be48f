"""The floor of a sync round trip with aioray's threads and hops, doing nothing else (#21).

A driver process with a caller thread and a uvloop loop thread, a worker process with a
uvloop loop thread and an execution thread, as aioray's: the caller posts a request to
its loop (``call_soon_threadsafe``) and sleeps on a lock; the loop writes 100 bytes to
the worker; the worker's loop reads them and hands them to the execution thread
through a queue; that thread writes the reply to the socket itself; the driver's loop
reads it and releases the caller's lock. Five wake-ups, two TCP hops, no work: what
is left of a round trip once every line of aioray's own Python is gone.

    python benchmarks/sync_floor.py [--n 5000] [--rounds 3]
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

import uvloop

MESSAGE = b"x" * 100


def worker(sock: socket.socket) -> None:
    """The worker process: a loop thread reads, an execution thread replies."""
    jobs: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
    fd = sock.fileno()

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
        ready.set()
        self.loop.run_forever()

    def round_trip(self) -> None:
        lock = threading.Lock()
        lock.acquire()
        self.waiting = lock
        assert self.transport is not None
        self.loop.call_soon_threadsafe(self.transport.write, MESSAGE)  # (CoreWorker.post)
        lock.acquire()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    listener = socket.create_server(("127.0.0.1", 0))
    pid = os.fork()
    if pid == 0:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        worker(conn)
    sock = socket.create_connection(listener.getsockname())
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    driver = Driver(sock)
    for _ in range(500):
        driver.round_trip()
    for _ in range(a.rounds):
        lat = []
        start = time.perf_counter()
        for _ in range(a.n):
            t = time.perf_counter()
            driver.round_trip()
            lat.append(time.perf_counter() - t)
        wall = time.perf_counter() - start
        print(
            f"floor {a.n / wall:7.0f}/s  median {statistics.median(lat) * 1e6:6.1f} us  "
            f"p10 {statistics.quantiles(lat, n=10)[0] * 1e6:6.1f} us",
            flush=True,
        )
    driver.loop.call_soon_threadsafe(driver.transport.close)  # type: ignore[union-attr]
    os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
