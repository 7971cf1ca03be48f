"""Large objects (issue 21): put and get of 100 MiB, and 100 MiB between two nodes.

    python benchmarks/large_objects.py [--trials 5] [--rounds 10] [--profile]

- "put 100 MiB": ``ray.put`` of a 100 MiB numpy array whose ref is dropped at once (the
  object is freed, so its memory can serve the next put), ``--rounds`` puts per trial;
  GiB/s, mean ± std over the trials.
- "get 100 MiB": ``ray.get`` of a 100 MiB array that is already in the store (a zero-copy
  view of the segment), dropped at once; gets per second.
- "transfer 100 MiB between nodes": a task on a second node of a ``cluster_utils.Cluster``
  makes a 100 MiB array; once it exists the driver, on the head, times ``ray.get`` of it
  (one pull into the head's store, then a zero-copy read); GiB/s.
- Beside the put and transfer rows, the CPU time (user + system) the processes that do
  the work spent per operation: the driver and its raylet for a put, the pulling and the
  source raylet for a transfer. On a shared machine these move less than the rates.
- ``--profile``: where a 100 MiB put's time goes, measured in this process on this node's
  shared memory: serializing, writing into a fresh /dev/shm file (the kernel allocates
  and zeroes each page inside the write: first touch), writing into a file whose pages
  exist already (warm), copying into a new mapping of that file (a minor fault per page)
  and into the same mapping kept, and a plain memcpy between two warm buffers.

The first puts (WARMUP_PUTS) and transfers (WARMUP_TRANSFERS) warm workers, connections
and the stores' segment pools, and are not counted. The machine is shared: the figures are
approximate.
"""

from __future__ import annotations

import argparse
import mmap
import os
import statistics
import time
from typing import Any

import numpy as np
import psutil

import aioray as ray
from aioray._private.wire import object_store, serialization
from aioray.cluster_utils import Cluster
from aioray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

MiB = 1024 * 1024
SIZE = 100 * MiB
STORE = 2 * 1024 * MiB
WARMUP_PUTS = 10  # (Ray's microbenchmark warms up for a second before its trials)
WARMUP_TRANSFERS = 4
HEAD_IP = "127.0.0.1"


def fmt(values: list[float], digits: int = 2) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {std:.{digits}f}"


def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return total


def raylets() -> dict[str, psutil.Process]:
    """This process's raylets (the local node's, or every node of a local Cluster)."""
    found = {}
    for proc in psutil.Process().children(recursive=True):
        try:
            cmd = proc.cmdline()
        except psutil.Error:
            continue
        if "aioray.daemons.raylet" in cmd:
            found[cmd[cmd.index("--node-ip") + 1] if "--node-ip" in cmd else HEAD_IP] = proc
    return found


class Cpu:
    """CPU time (user + system) each process spent over a section, per operation."""

    def __init__(self, procs: dict[str, psutil.Process]) -> None:
        self.procs = procs
        self.spent = dict.fromkeys(procs, 0.0)
        self.ops = 0

    def measure(self, ops: int, run: Any) -> Any:
        before = {k: cpu_seconds([p]) for k, p in self.procs.items()}
        result = run()
        for k, p in self.procs.items():
            self.spent[k] += cpu_seconds([p]) - before[k]
        self.ops += ops
        return result

    def line(self) -> str:
        per = {k: 1e3 * v / max(self.ops, 1) for k, v in self.spent.items()}
        return ", ".join(f"{k} {v:.0f} ms" for k, v in per.items())


def put_rates(arr: np.ndarray, trials: int, rounds: int) -> tuple[list[float], Cpu]:
    for _ in range(WARMUP_PUTS):
        ray.put(arr)
    cpu = Cpu({"driver": psutil.Process(), "raylet": raylets()[HEAD_IP]})
    rates = []
    for _ in range(trials):

        def run() -> float:
            start = time.perf_counter()
            for _ in range(rounds):
                ray.put(arr)
            return time.perf_counter() - start

        rates.append(rounds * arr.nbytes / cpu.measure(rounds, run) / 2**30)
    return rates, cpu


def get_rates(arr: np.ndarray, trials: int, rounds: int) -> tuple[list[float], float]:
    """Gets per second, and the driver's CPU microseconds per get."""
    ref = ray.put(arr)
    ray.get(ref)
    rates = []
    cpu = 0.0
    for _ in range(trials):
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(rounds * 10):
            ray.get(ref)
        rates.append(rounds * 10 / (time.perf_counter() - start))
        cpu += time.process_time() - cpu_start
    return rates, 1e6 * cpu / (trials * rounds * 10)


@ray.remote
def make(nbytes: int) -> Any:
    return np.ones(nbytes, dtype=np.uint8)


def transfer_rates(trials: int) -> tuple[list[float], Cpu]:
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": STORE}
    )
    try:
        other = cluster.add_node(num_cpus=1, object_store_memory=STORE)
        cluster.wait_for_nodes()
        cluster.connect()
        where = NodeAffinitySchedulingStrategy(other.node_id, soft=False)
        found = raylets()
        cpu = Cpu({"puller": found[HEAD_IP], "source": found[other.node_ip_address]})
        rates = []
        for i in range(WARMUP_TRANSFERS + trials):
            ref = make.options(scheduling_strategy=where).remote(SIZE)
            ray.wait([ref], fetch_local=False)
            start = time.perf_counter()
            if i < WARMUP_TRANSFERS:
                got = ray.get(ref)
            else:
                got = cpu.measure(1, lambda ref=ref: ray.get(ref))
                rates.append(SIZE / (time.perf_counter() - start) / 2**30)
            assert got.nbytes == SIZE
            del got, ref
        return rates, cpu
    finally:
        ray.shutdown()
        cluster.shutdown()


def profile(arr: np.ndarray, trials: int) -> None:
    """Time the parts of a 100 MiB put in this process (no cluster)."""
    path = os.path.join(object_store.shm_dir(), f"aioray_bench_{os.getpid()}")
    warm = path + "_warm"
    ser, fresh, warmed = [], [], []
    so = serialization.serialize(arr)
    fd = os.open(warm, os.O_CREAT | os.O_RDWR, 0o600)
    os.posix_fallocate(fd, 0, SIZE + MiB)
    os.close(fd)
    try:
        for _ in range(trials):
            t0 = time.perf_counter()
            so = serialization.serialize(arr)
            t1 = time.perf_counter()
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            os.pwritev(fd, [so.data, *so.buffers], 0)
            os.close(fd)
            t2 = time.perf_counter()
            os.unlink(path)
            fd = os.open(warm, os.O_WRONLY)
            t3 = time.perf_counter()
            os.pwritev(fd, [so.data, *so.buffers], 0)
            t4 = time.perf_counter()
            os.close(fd)
            ser.append((t1 - t0) * 1e3)
            fresh.append((t2 - t1) * 1e3)
            warmed.append((t4 - t3) * 1e3)
        fd = os.open(warm, os.O_RDWR)
        first, mapped = [], []
        for i in range(trials + 1):  # a fresh mapping of the warm file, then kept
            t0 = time.perf_counter()
            if i == 0:
                kept = mmap.mmap(fd, SIZE)
                into = np.frombuffer(kept, dtype=np.uint8)
            np.copyto(into, arr)
            (first if i == 0 else mapped).append((time.perf_counter() - t0) * 1e3)
        del into
        kept.close()
        os.close(fd)
        dst = np.empty_like(arr)
        dst[:] = arr
        copies = []
        for _ in range(trials):
            t0 = time.perf_counter()
            dst[:] = arr
            copies.append((time.perf_counter() - t0) * 1e3)
    finally:
        for p in (path, warm):
            if os.path.exists(p):
                os.unlink(p)
    gib = SIZE / 2**30
    for label, ms in (
        ("serialize (pickle-5, buffer by reference)", ser),
        ("write into a fresh /dev/shm file (first touch)", fresh),
        ("write into a /dev/shm file with its pages (warm)", warmed),
        ("copy into a new mapping of that file (a fault per page)", first),
        ("copy into that mapping kept (what the pool's writers do)", mapped),
        ("memcpy between two warm buffers", copies),
    ):
        rate = [gib / (m / 1e3) for m in ms]
        print(f"  {label}: {fmt(ms)} ms ({fmt(rate)} GiB/s)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--profile", action="store_true", help="only the breakdown of one put")
    p.add_argument("--only", choices=["put", "get", "transfer"], help="one row")
    a = p.parse_args()
    arr = np.ones(SIZE, dtype=np.uint8)
    if a.profile:
        print("profile of a 100 MiB put, ms (GiB/s):")
        profile(arr, a.trials)
        return
    if a.only in (None, "put", "get"):
        ray.init(num_cpus=1, object_store_memory=STORE, include_dashboard=False)
        try:
            if a.only in (None, "put"):
                rates, cpu = put_rates(arr, a.trials, a.rounds)
                print(f"put 100 MiB (GiB/s) = {fmt(rates)}   [CPU per put: {cpu.line()}]")
            if a.only in (None, "get"):
                rates, us = get_rates(arr, a.trials, a.rounds)
                print(
                    f"get 100 MiB (per second) = {fmt(rates, 0)}   [driver CPU per get {us:.1f} us]"
                )
        finally:
            ray.shutdown()
    if a.only in (None, "transfer"):
        rates, cpu = transfer_rates(a.trials)
        print(f"transfer 100 MiB between nodes (GiB/s) = {fmt(rates)}   [CPU: {cpu.line()}]")


if __name__ == "__main__":
    main()
