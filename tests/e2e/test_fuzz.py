"""Fuzzing every daemon port with mutated real frames; idle and slow-loris sockets.

Frames recorded from a real workload (handshakes, tasks, actors, objects, the KV
store) are mutated by a seeded fuzzer (``fuzz_frames``) and sent to the GCS, the
raylet, an actor's worker and this driver's owner port, both before a handshake
and after a valid one. Afterwards every daemon must be alive, its memory growth
bounded, and the same workload must still complete. ``AIORAY_FUZZ_LONG=1`` sends
100,000 inputs instead of 8,000 per seed; ``AIORAY_FUZZ_SEED`` picks the one seed to run
(by default three, each of which once found a bug: a worker killed, a KV value stored with
the wrong type).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from conftest import listener_pids, port_of
from fuzz_frames import (
    DESTRUCTIVE,
    Frame,
    Mutator,
    RawPeer,
    encode,
    handler_names,
    read_frames,
    record,
)
from test_hostile_peers import CHALLENGE_LEN

import aioray as ray
from aioray._private.owner import worker_context
from aioray._private.wire import auth, protocol
from aioray._private.wire.protocol import PREFIX, FrameDecoder
from aioray.experimental import internal_kv
from aioray.util.placement_group import placement_group, remove_placement_group

LONG = os.environ.get("AIORAY_FUZZ_LONG") == "1"
INPUTS = int(os.environ.get("AIORAY_FUZZ_INPUTS", 100_000 if LONG else 8_000))
SEEDS = [int(os.environ["AIORAY_FUZZ_SEED"])] if "AIORAY_FUZZ_SEED" in os.environ else [14, 7, 12]
GROWTH_LIMIT = 64 * 1024 * 1024  # bytes of USS a daemon may gain over the whole run
GET_TIMEOUT = 60

RAY_SHARED_INIT_KWARGS = {"num_cpus": 2}


@ray.remote
class Target:
    """An actor whose worker's port is fuzzed."""

    def where(self) -> tuple[int, int]:
        from aioray._private.owner import worker_context

        cw = worker_context.core_worker
        assert cw is not None
        return os.getpid(), cw.address[1]

    def add(self, a: int, b: int) -> int:
        return a + b

    def worker_id(self) -> str:
        return ray.get_runtime_context().get_worker_id()


@ray.remote
def square(x: int) -> int:
    return x * x


@ray.remote
def nested(n: int) -> int:
    return sum(ray.get([square.remote(i) for i in range(n)]))


@ray.remote
def total(a: np.ndarray) -> int:
    return int(a.sum())


@ray.remote
def borrowed_total(refs: list[Any]) -> int:
    return int(ray.get(refs[0]).sum())  # asks the driver, the owner, on its port


def workload(target: Any) -> None:
    """Tasks, nested tasks, a shared-memory object, actor calls and the KV store."""
    big = np.arange(200_000, dtype=np.int64)
    ref = ray.put(big)
    assert ray.get([square.remote(i) for i in range(20)], timeout=GET_TIMEOUT) == [
        i * i for i in range(20)
    ]
    assert ray.get(nested.remote(5), timeout=GET_TIMEOUT) == 30
    assert ray.get(total.remote(ref), timeout=GET_TIMEOUT) == int(big.sum())
    small = ray.put(np.arange(10))
    assert ray.get(borrowed_total.remote([small]), timeout=GET_TIMEOUT) == 45
    assert ray.get([target.add.remote(i, 1) for i in range(10)], timeout=GET_TIMEOUT) == list(
        range(1, 11)
    )
    ready, _ = ray.wait([square.remote(3)], timeout=GET_TIMEOUT)
    assert ray.get(ready) == [9]
    internal_kv._internal_kv_put(b"fuzz", b"value")
    assert internal_kv._internal_kv_get(b"fuzz") == b"value"
    assert any(n["Alive"] for n in ray.nodes())
    pg = placement_group([{"CPU": 0.1}])
    assert pg.wait(GET_TIMEOUT)
    remove_placement_group(pg)


@dataclass
class Targets:
    target: Any
    ports: dict[str, int]
    daemons: dict[str, psutil.Process]
    corpus: dict[int, list[Frame]]
    session_dir: str
    uss: dict[str, int] = field(default_factory=dict)

    def check_alive(self) -> None:
        dead = [name for name, p in self.daemons.items() if not p.is_running()]
        assert not dead, f"daemons died: {dead}"

    def check_growth(self) -> dict[str, int]:
        growth = {n: p.memory_full_info().uss - self.uss[n] for n, p in self.daemons.items()}
        assert all(g < GROWTH_LIMIT for g in growth.values()), growth
        return growth


@pytest.fixture(scope="module")
def targets(ray_shared: Any) -> Iterator[Targets]:
    corpus: dict[int, list[Frame]] = {}
    with record(corpus):
        target = Target.options(name="fuzzed").remote()  # type: ignore[attr-defined]
        worker_pid, worker_port = ray.get(target.where.remote(), timeout=GET_TIMEOUT)
        assert ray.get_actor("fuzzed") is not None
        workload(target)
    info = ray_shared.address_info
    ports = {
        "gcs": port_of(info["gcs_address"]),
        "raylet": port_of(info["raylet_address"]),
        "worker": worker_port,
        "owner": worker_context.core_worker.address[1],  # type: ignore[union-attr]
    }
    daemons = {
        name: psutil.Process(next(iter(listener_pids(ports[name]) - {os.getpid()})))
        for name in ("gcs", "raylet")
    }
    daemons["worker"] = psutil.Process(worker_pid)
    t = Targets(target, ports, daemons, corpus, info["session_dir"])
    t.uss = {n: p.memory_full_info().uss for n, p in daemons.items()}
    yield t


def frames_for(t: Targets, port: int) -> list[Frame]:
    """The frames recorded on ``port`` (all of them if none), destructive ones left out."""
    every = [f for frames in t.corpus.values() for f in frames]
    ours = t.corpus.get(port) or every
    return [f for f in ours if f[2] not in DESTRUCTIVE]


def methods_of(t: Targets) -> list[str]:
    """Every method some service handles, and every one the workload used."""
    names = {f[2] for frames in t.corpus.values() for f in frames if isinstance(f[2], str)}
    return sorted(set(handler_names()) | names - DESTRUCTIVE - {"hello", "challenge"})


def assert_no_thread_died(t: Targets, printed: str) -> None:
    """No thread of any daemon died (its traceback goes to stderr, which the driver
    prints), and no event loop reported a fatal error in a daemon's log."""
    logs = Path(t.session_dir, "logs")
    text = printed + "".join(p.read_text(errors="replace") for p in logs.glob("*.log"))
    for needle in ("Exception in thread", "Fatal error", "Fatal Python error"):
        assert needle not in text, text[text.index(needle) - 200 : text.index(needle) + 2000]


@pytest.mark.timeout(3600 if LONG else 120)
@pytest.mark.parametrize("seed", SEEDS)
def test_mutated_frames_against_every_port(
    targets: Targets, capfd: pytest.CaptureFixture[str], seed: int
) -> None:
    t = targets
    token = auth.cluster_token()
    methods = methods_of(t)
    runs = [(name, authed) for name in t.ports for authed in (False, True)]
    per_run = INPUTS // len(runs)
    start = time.monotonic()
    sent = 0
    for i, (name, authed) in enumerate(runs):
        port = t.ports[name]
        mutator = Mutator(frames_for(t, port), methods, seed * 100 + i)
        peer = RawPeer(port, token, authed)
        for _ in range(per_run):
            peer.send(mutator.one())
            sent += 1
        peer.finish()
        t.check_alive()
    elapsed = time.monotonic() - start
    print(f"fuzz: {sent} inputs to {len(t.ports)} ports in {elapsed:.1f} s (seed {seed})")
    t.check_alive()
    workload(t.target)
    t.check_alive()
    t.check_growth()
    out, err = capfd.readouterr()
    assert_no_thread_died(t, out + err)


class SlowLoris(threading.Thread):
    """Sockets that claim a hello of the largest size allowed, then send it a byte at
    a time; a socket the daemon drops is opened again."""

    def __init__(self, ports: list[int], per_port: int) -> None:
        super().__init__(daemon=True)
        self.ports = ports
        self.per_port = per_port
        self.stop = threading.Event()
        self.reopened = 0

    def _open(self, port: int) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(PREFIX.pack(4000, 0))
        return s

    def run(self) -> None:
        socks = [(p, self._open(p)) for p in self.ports for _ in range(self.per_port)]
        try:
            while not self.stop.wait(0.05):
                for i, (port, s) in enumerate(socks):
                    try:
                        s.send(b"\x90")
                    except OSError:
                        s.close()
                        socks[i] = (port, self._open(port))
                        self.reopened += 1
        finally:
            for _, s in socks:
                s.close()


@pytest.mark.timeout(120)
def test_idle_and_slow_loris_sockets_on_every_port(targets: Targets) -> None:
    t = targets
    ports = list(t.ports.values())
    idle = [socket.create_connection(("127.0.0.1", p), timeout=30) for p in ports * 100]
    loris = SlowLoris(ports, 25)
    loris.start()
    try:
        for s in idle:  # each was accepted: its challenge arrived
            assert len(s.recv(CHALLENGE_LEN)) > 0
        workload(t.target)
        t.check_alive()
        t.check_growth()
    finally:
        loris.stop.set()
        loris.join(30)
        for s in idle:
            s.close()
    workload(t.target)
    t.check_alive()


@pytest.mark.parametrize("nret", ["x", [1], None])
def test_a_malformed_call_is_answered_and_the_actor_keeps_serving(
    targets: Targets, nret: Any
) -> None:
    t = targets
    port = t.ports["worker"]
    [recorded] = [f for f in t.corpus[port] if f[2] == "push_actor_task"][:1]
    kind, _, method, spec, buffers = recorded
    peer = RawPeer(port, auth.cluster_token(), True)
    peer.send(encode(kind, 99, method, {**spec, "nret": nret}, buffers))
    assert peer.sock is not None
    peer.sock.settimeout(30)
    [(reply_kind, seq, _, body, _)] = read_frames(peer.sock, FrameDecoder(), 1)
    peer.close()
    assert (reply_kind, seq) == (protocol.ERROR, 99)
    assert "malformed task" in body[1]
    assert ray.get(t.target.add.remote(1, 2), timeout=GET_TIMEOUT) == 3
    t.check_alive()


@pytest.mark.parametrize("code", [0, "x"])
def test_exit_worker_from_a_peer_that_is_not_its_raylet_is_refused(
    targets: Targets, code: Any
) -> None:
    """Only a worker's raylet tells it to exit: from any other (authenticated) peer, even
    well formed, the request is refused and the actor keeps serving."""
    t = targets
    peer = RawPeer(t.ports["worker"], auth.cluster_token(), True)
    peer.send(encode(protocol.REQUEST, 98, "exit_worker", code, []))
    assert peer.sock is not None
    peer.sock.settimeout(30)
    [(reply_kind, seq, _, body, _)] = read_frames(peer.sock, FrameDecoder(), 1)
    peer.close()
    assert (reply_kind, seq) == (protocol.ERROR, 98)
    assert body[0] == "PermissionError" and "raylet" in body[1]
    assert ray.get(t.target.add.remote(1, 2), timeout=GET_TIMEOUT) == 3
    t.check_alive()


def refused(port: int, method: str, body: Any) -> list[Any]:
    """Send ``method`` well formed from an authenticated peer that is not its sender; the
    error it is answered with."""
    peer = RawPeer(port, auth.cluster_token(), True)
    peer.send(encode(protocol.REQUEST, 97, method, body, []))
    assert peer.sock is not None
    peer.sock.settimeout(30)
    [(reply_kind, seq, _, answer, _)] = read_frames(peer.sock, FrameDecoder(), 1)
    peer.close()
    assert (reply_kind, seq) == (protocol.ERROR, 97)
    return list(answer)


def test_what_only_a_daemon_may_ask_is_refused_from_a_driver(targets: Targets) -> None:
    """Well formed, with the token, from a peer that is not their sender: the GCS does not
    stop (nobody stops it over the wire), a live node is not declared stopped, a registered
    worker is not taken over; the cluster keeps serving."""
    t = targets
    node_id = bytes.fromhex(ray.get_runtime_context().get_node_id())
    wid = bytes.fromhex(ray.get(t.target.worker_id.remote(), timeout=GET_TIMEOUT))
    assert refused(t.ports["gcs"], "shutdown", None)[0] == "UnknownMethod"
    answer = refused(t.ports["gcs"], "node_stopping", [node_id, "forged"])
    assert answer[0] == "PermissionError" and "node_stopping" in answer[1]
    answer = refused(t.ports["raylet"], "register_worker", {"worker_id": wid, "port": 1})
    assert answer[0] == "PermissionError" and "register_worker" in answer[1]
    assert [n["Alive"] for n in ray.nodes() if n["NodeID"] == node_id.hex()] == [True]
    assert ray.get(t.target.add.remote(1, 2), timeout=GET_TIMEOUT) == 3
    workload(t.target)
    t.check_alive()
