"""Chaos: workloads that must finish exactly right while their processes are SIGKILLed.

A background ``Killer`` thread SIGKILLs a process of this test's own cluster every
~50 ms, MAX_KILLS times, and then stops by itself. Only descendants of the cluster's
raylet are ever killed: never a daemon, never another test run's process. The
workload runs in rounds until the killer is done (a fast machine must not finish
before the chaos does), and every round's every result is checked exactly; each get
has a bounded timeout, and the autouse leak check then finds no process or segment left.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import psutil
import pytest
from conftest import listener_pids, port_of, wait_for_condition

import aioray as ray
from aioray._private.node.memory_tables import raylet_state

KILL_EVERY_S = 0.05
MAX_KILLS = 30
GET_TIMEOUT_S = 45.0
CHAOS_DEADLINE_S = 40.0  # the killer needs ~MAX_KILLS x (50 ms + a worker's restart)
WORKER_MARK = "aioray.daemons.worker"
FORKSERVER_MARK = "aioray.daemons.forkserver"


def raylet_process(ctx: Any) -> psutil.Process:
    """The raylet of the cluster ``ctx`` describes (it listens on the raylet's port)."""
    pids = listener_pids(port_of(ctx.address_info["raylet_address"]))
    (pid,) = pids
    return psutil.Process(pid)


def fork_servers(raylet: psutil.Process) -> list[psutil.Process]:
    """The fork servers of the raylet's node: its sibling of the same session (the node
    starts one beside the raylet) and any it started itself (its children)."""
    words = raylet.cmdline()
    session = words[words.index("--session-dir") + 1]
    parent = raylet.parent()
    siblings = parent.children() if parent is not None else []
    return [
        p
        for p in [*raylet.children(), *siblings]
        if FORKSERVER_MARK in " ".join(cmdline := p.cmdline())
        and f"--session-dir {session}" in " ".join(cmdline)
    ]


def worker_pids(raylet: psutil.Process) -> list[int]:
    """The raylet's workers: its fork servers' children, or workers it started itself."""
    found: list[int] = []
    try:
        for server in fork_servers(raylet):
            found += [p.pid for p in server.children()]
        found += [p.pid for p in raylet.children() if WORKER_MARK in " ".join(p.cmdline())]
    except psutil.Error:
        pass
    return found


def session_segments(ctx: Any) -> list[str]:
    """This cluster's object segments (not its nodes' segment-pool directories)."""
    prefix = f"aioray_{ctx.address_info['session_id']}_"
    return [n for n in os.listdir("/dev/shm") if n.startswith(prefix) and not n.endswith("_pool")]


def is_on_node(pid: int, raylet: psutil.Process) -> bool:
    """The process descends from the raylet or from its node's fork server."""
    try:
        ancestors = {p.pid for p in psutil.Process(pid).parents()}
        return bool(ancestors & {raylet.pid, *(s.pid for s in fork_servers(raylet))})
    except psutil.Error:
        return False


class Killer(threading.Thread):
    """SIGKILL ``pick()``'s choice every KILL_EVERY_S, at most MAX_KILLS times."""

    def __init__(self, raylet: psutil.Process, pick: Callable[[], int | None]) -> None:
        super().__init__(name="chaos-killer", daemon=True)
        self.raylet = raylet
        self.pick = pick
        self.kills: list[int] = []
        self.done = threading.Event()

    def run(self) -> None:
        while len(self.kills) < MAX_KILLS and not self.done.wait(KILL_EVERY_S):
            pid = self.pick()
            if pid is None or not is_on_node(pid, self.raylet):
                continue  # never anything outside this cluster
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            self.kills.append(pid)

    def stop(self) -> None:
        self.done.set()
        self.join(10)
        assert not self.is_alive()


@pytest.fixture
def killer_for(ray_start: Any) -> Iterator[Callable[[Callable[[], int | None]], Killer]]:
    started: list[Killer] = []

    def start(pick: Callable[[], int | None]) -> Killer:
        killer = Killer(raylet_process(ray_start), pick)
        started.append(killer)
        killer.start()
        return killer

    yield start
    for killer in started:
        killer.stop()


def rounds_until_killed(killer: Killer, one_round: Callable[[], None]) -> int:
    """Run ``one_round`` (which checks its own results) until the killer has made all
    its kills; return how many rounds ran."""
    deadline = time.monotonic() + CHAOS_DEADLINE_S
    rounds = 0
    while killer.is_alive() or rounds == 0:
        assert time.monotonic() < deadline, f"killer still running, kills={len(killer.kills)}"
        one_round()
        rounds += 1
    assert len(killer.kills) == MAX_KILLS, killer.kills
    return rounds


# ------------------------------------------------------------------- tree reduction


@ray.remote(max_retries=-1)  # every kill is retried: the outcome does not depend on luck
def add(a: int, b: int) -> int:
    return a + b


def tree_sum(values: list[Any]) -> Any:
    """Sum pairwise, level by level; each level's tasks take the refs of the one before."""
    while len(values) > 1:
        pairs = [add.remote(values[i], values[i + 1]) for i in range(0, len(values) - 1, 2)]
        if len(values) % 2:
            pairs.append(values[-1])
        values = pairs
    return values[0]


def test_tree_reduction_is_exact_while_workers_are_killed(ray_start: Any, killer_for: Any) -> None:
    """Each round: 2,047 pairwise tasks summing 2,048 numbers, and 127 summing 128
    arrays of 256 KiB (results in shared memory); a random worker SIGKILLed every
    50 ms. Afterwards the node's store is empty: no segment, no byte still counted."""
    raylet = raylet_process(ray_start)
    assert ray.get(add.remote(1, 2), timeout=GET_TIMEOUT_S) == 3  # workers are up

    def random_worker() -> int | None:
        pids = worker_pids(raylet)
        return random.choice(pids) if pids else None

    def one_round() -> None:
        numbers = list(range(rounds, rounds + 2048))
        assert ray.get(tree_sum(numbers), timeout=GET_TIMEOUT_S) == sum(numbers)
        arrays = [np.full(32768, i, dtype=np.int64) for i in range(128)]
        total = ray.get(tree_sum(arrays), timeout=GET_TIMEOUT_S)
        assert total.nbytes == 256 * 1024 and (total == sum(range(128))).all()

    rounds = 0
    killer = killer_for(random_worker)
    rounds = rounds_until_killed(killer, one_round)
    assert rounds >= 1
    # The cluster is whole again: a fresh reduction needs no retries to be right.
    assert ray.get(tree_sum(list(range(64))), timeout=GET_TIMEOUT_S) == sum(range(64))
    # Every object is freed: the retried tasks' earlier copies were not counted twice.
    wait_for_condition(
        lambda: raylet_state()["object_store"]["used"] == 0 and not session_segments(ray_start),
        timeout=20,
        message=lambda: f"{raylet_state()['object_store']} {session_segments(ray_start)}",
    )


# ------------------------------------------------------------------ actor call stream


@ray.remote(max_restarts=-1, max_task_retries=-1)
class Squarer:
    """Stateless answers (a pure function of the call's argument), so every result can
    be checked exactly however many restarts happened; the pid file says whom to kill."""

    def __init__(self, pid_file: str) -> None:
        tmp = f"{pid_file}.{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(str(os.getpid()))
        os.replace(tmp, pid_file)  # the killer never reads a half-written pid

    def square(self, i: int) -> tuple[int, int]:
        return i, i * i


def test_actor_call_stream_loses_nothing_while_its_worker_is_killed(
    ray_start: Any, killer_for: Any, tmp_path: Any
) -> None:
    """500 calls to an actor (max_restarts=-1, max_task_retries=-1) whose worker is
    SIGKILLed every 50 ms: every call returns, with exactly its expected value."""
    pid_file = str(tmp_path / "actor.pid")
    actor = Squarer.remote(pid_file)
    assert ray.get(actor.square.remote(3), timeout=GET_TIMEOUT_S) == (3, 9)

    def actor_pid() -> int | None:
        try:
            with open(pid_file) as f:
                pid = int(f.read())
        except (OSError, ValueError):
            return None
        return pid if psutil.pid_exists(pid) else None

    def one_round() -> None:
        refs = [actor.square.remote(i) for i in range(500)]
        assert ray.get(refs, timeout=GET_TIMEOUT_S) == [(i, i * i) for i in range(500)]

    rounds_until_killed(killer_for(actor_pid), one_round)
    # The same handle still works, on the restarted worker.
    assert ray.get(actor.square.remote(12), timeout=GET_TIMEOUT_S) == (12, 144)
    ray.kill(actor)
    wait_for_condition(lambda: actor_pid() is None, timeout=20)
