"""Object transfer between the nodes of a local Cluster (issue #5's figures).

    python benchmarks/transfer_benchmark.py [--trials 5] [--broadcast-gib 1]

- "object transfer 100 MiB between nodes": a task on node A makes a 100 MiB array;
  once it exists, the driver (on the head) times ``ray.get`` of it: one pull from
  A's raylet into the head's store, then a zero-copy read. GiB/s, mean ± std.
- "1 GiB broadcast to 3 nodes": the driver puts 1 GiB on the head, then one task on
  each of 3 other nodes reads it (workers warmed up first); seconds until all three
  have it, mean ± std.
- A baseline measured in the same run: 100 MiB sent by one process over a plain
  blocking loopback socket into another's mapped /dev/shm file (``recv_into``), the
  most this machine does for the same bytes without any framing or event loop.

Every node is a raylet on its own loopback address of this machine (cluster_utils),
so the bytes cross real TCP connections between processes, but the nodes share the
machine's cores and memory bandwidth.
"""

from __future__ import annotations

import argparse
import mmap
import os
import socket
import statistics
import time
from typing import Any

import numpy as np

import aioray as ray
from aioray.cluster_utils import Cluster
from aioray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

MiB = 1024 * 1024


@ray.remote
def make(nbytes: int) -> Any:
    return np.ones(nbytes, dtype=np.uint8)


@ray.remote
def size_of(arr: Any) -> int:
    return int(arr.nbytes)


@ray.remote
def ready() -> bool:
    return True


def on(node: Any) -> NodeAffinitySchedulingStrategy:
    return NodeAffinitySchedulingStrategy(node.node_id, soft=False)


def fmt(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {std:.2f}"


def transfer_100mib(source: Any, trials: int) -> list[float]:
    rates = []
    for _ in range(trials + 1):  # the first round warms up connections and workers
        ref = make.options(scheduling_strategy=on(source)).remote(100 * MiB)
        ray.wait([ref], fetch_local=False)
        start = time.perf_counter()
        arr = ray.get(ref)
        rates.append(100 * MiB / (time.perf_counter() - start) / 2**30)
        assert arr.nbytes == 100 * MiB
        del arr, ref
    return rates[1:]


def broadcast(receivers: list[Any], gib: float, trials: int) -> list[float]:
    ray.get([ready.options(scheduling_strategy=on(n)).remote() for n in receivers])
    times = []
    for _ in range(trials):
        ref = ray.put(np.ones(int(gib * 2**30), dtype=np.uint8))
        start = time.perf_counter()
        sizes = ray.get([size_of.options(scheduling_strategy=on(n)).remote(ref) for n in receivers])
        times.append(time.perf_counter() - start)
        assert sizes == [int(gib * 2**30)] * len(receivers)
        del ref
    return times


def raw_socket_baseline(trials: int) -> list[float]:
    size = 100 * MiB
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    pid = os.fork()
    if pid == 0:  # the sender
        conn, _ = srv.accept()
        data = memoryview(bytearray(size))
        for _ in range(trials):
            conn.recv(1)
            conn.sendall(data)
        os._exit(0)
    rates = []
    with socket.create_connection(srv.getsockname()) as sock:
        path = f"/dev/shm/aioray_bench_{os.getpid()}"
        for _ in range(trials):
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
            os.ftruncate(fd, size)
            dest = mmap.mmap(fd, size)
            os.close(fd)
            view = memoryview(dest)
            start = time.perf_counter()
            sock.send(b"g")
            got = 0
            while got < size:
                got += sock.recv_into(view[got:], size - got)
            rates.append(size / (time.perf_counter() - start) / 2**30)
            view.release()
            dest.close()
            os.unlink(path)
    os.waitpid(pid, 0)
    srv.close()
    return rates


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--broadcast-gib", type=float, default=1.0)
    a = p.parse_args()
    store = int(max(0.5, a.broadcast_gib) * 2**30 * 2)
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": store}
    )
    try:
        receivers = [cluster.add_node(num_cpus=1, object_store_memory=store) for _ in range(3)]
        cluster.wait_for_nodes()
        cluster.connect()
        rates = transfer_100mib(receivers[0], a.trials)
        print(f"object transfer 100 MiB between nodes per second (GiB/s) = {fmt(rates)}")
        times = broadcast(receivers, a.broadcast_gib, a.trials)
        label = f"{a.broadcast_gib:g} GiB broadcast to {len(receivers)} nodes"
        print(f"{label} (seconds) = {fmt(times)}")
        raw = raw_socket_baseline(a.trials)
        print(f"baseline: raw loopback socket 100 MiB into shm (GiB/s) = {fmt(raw)}")
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main()
