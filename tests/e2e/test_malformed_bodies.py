"""Single hostile frames the fuzzer (test_fuzz.py) found harmful, each sent alone by an
authenticated raw peer: the daemon answers a clear error, stores nothing of it, and the
cluster's work goes on. Each body is of a type or range its schema does not allow, or a
lease the sender was never granted."""

from __future__ import annotations

import os
from typing import Any

import psutil
import pytest
from conftest import port_of
from fuzz_frames import Frame, RawPeer, encode, read_frames, record

import aioray as ray
from aioray._private.wire import auth, protocol
from aioray._private.wire.protocol import FrameDecoder
from aioray.experimental import internal_kv
from aioray.util import state
from aioray.util.placement_group import placement_group_table

RAY_SHARED_INIT_KWARGS = {"num_cpus": 2}
GET_TIMEOUT = 60


@ray.remote
class Counter:
    def where(self) -> int:
        return os.getpid()

    def add(self, a: int, b: int) -> int:
        return a + b


@ray.remote
def square(x: int) -> int:
    return x * x


def ask(port: int, method: str, body: Any) -> tuple[int, Any]:
    """Send one request on a fresh authenticated connection; the reply's kind and body."""
    peer = RawPeer(port, auth.cluster_token(), True)
    peer.send(encode(protocol.REQUEST, 77, method, body))
    assert peer.sock is not None
    peer.sock.settimeout(30)
    [(kind, seq, _, reply, _)] = read_frames(peer.sock, FrameDecoder(), 1)
    peer.close()
    assert seq == 77
    return kind, reply


def tell(port: int, frames: list[bytes]) -> None:
    """Send notices on one authenticated connection; return once the daemon read them all."""
    peer = RawPeer(port, auth.cluster_token(), True, batch=len(frames) + 1)
    for frame in frames:
        peer.send(frame)
    peer.finish()


def gcs_port(ctx: Any) -> int:
    return port_of(ctx.address_info["gcs_address"])


def raylet_port(ctx: Any) -> int:
    return port_of(ctx.address_info["raylet_address"])


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (["", b"malformed", 1.5, True], "kv_put: value must be bytes, got float"),
        (["", b"malformed", "text", True], "kv_put: value must be bytes, got str"),
        (["", 7, b"v", True], "kv_put: key must be bytes, got int"),
        (["", b"malformed", b"v"], "kv_put takes [namespace, key, value, overwrite]"),
    ],
)
def test_a_kv_put_of_the_wrong_type_is_refused_and_stores_nothing(
    ray_shared: Any, body: list[Any], message: str
) -> None:
    kind, reply = ask(gcs_port(ray_shared), "kv_put", body)
    assert kind == protocol.ERROR
    assert reply[0] == "TypeError" and message in reply[1]
    assert internal_kv._internal_kv_get(b"malformed") is None
    assert internal_kv._internal_kv_list(b"") == []  # (nothing stored under any key)
    internal_kv._internal_kv_put(b"malformed", b"ok")
    assert internal_kv._internal_kv_get(b"malformed") == b"ok"
    assert internal_kv._internal_kv_del(b"malformed") == 1


@pytest.mark.parametrize("method", ["kv_get", "kv_del", "kv_keys"])
def test_a_kv_read_or_delete_of_the_wrong_type_is_refused(ray_shared: Any, method: str) -> None:
    kind, reply = ask(gcs_port(ray_shared), method, ["", 1.5])
    assert kind == protocol.ERROR
    assert reply[0] == "TypeError" and f"{method}: " in reply[1] and "must be bytes" in reply[1]


def test_a_lease_is_returned_only_by_the_connection_it_was_granted_to(ray_shared: Any) -> None:
    """Another peer's return_lease of a lease it does not hold (here: every lease id, so
    the actor's and the driver's, as an int and as the float or bool that equals it) is
    refused: the actor's worker lives on, and no CPU is released twice."""
    counter = Counter.remote()  # type: ignore[attr-defined]
    pid = ray.get(counter.where.remote(), timeout=GET_TIMEOUT)
    assert ray.get([square.remote(i) for i in range(4)], timeout=GET_TIMEOUT) == [0, 1, 4, 9]
    frames = [
        encode(protocol.NOTIFY, 0, "return_lease", [lid, True])
        for n in range(1, 64)
        for lid in (n, float(n))
    ]
    frames += [encode(protocol.NOTIFY, 0, "return_lease", [True, True])]
    tell(raylet_port(ray_shared), frames)
    assert ray.get(counter.add.remote(1, 2), timeout=GET_TIMEOUT) == 3
    assert psutil.pid_exists(pid)
    kind, reply = ask(raylet_port(ray_shared), "return_lease", [1, False])
    assert kind == protocol.ERROR  # (lease 1 was the first granted: the driver's or the actor's)
    assert reply == ["PermissionError", "lease 1 was not granted to this connection"]
    assert ray.get([square.remote(i) for i in range(4)], timeout=GET_TIMEOUT) == [0, 1, 4, 9]
    assert ray.available_resources().get("CPU", 0) <= 2  # (never more than the node has)
    ray.kill(counter)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"res": {"CPU": 0.1}, "hold": {"CPU": float("nan")}}, "hold['CPU'] must be a finite"),
        ({"res": {"CPU": float("nan")}}, "res['CPU'] must be a finite amount >= 0, got nan"),
        ({"res": {"CPU": float("inf")}}, "res['CPU'] must be a finite amount >= 0, got inf"),
        ({"res": {"CPU": -1}}, "res['CPU'] must be a finite amount >= 0, got -1"),
        ({"res": {"CPU": 0.1}, "env": 1.5}, "request_lease: env must be a map or None, not float"),
    ],
)
def test_a_lease_request_for_amounts_no_node_can_account_is_refused(
    ray_shared: Any, body: dict[str, Any], message: str
) -> None:
    """A NaN or infinite amount would stay in the node's free resources for good once
    granted and returned (inf - inf is NaN): no task could be scheduled again."""
    kind, reply = ask(raylet_port(ray_shared), "request_lease", body)
    assert kind == protocol.ERROR, reply
    assert message in reply[1]
    assert ray.get([square.remote(i) for i in range(4)], timeout=GET_TIMEOUT) == [0, 1, 4, 9]


@pytest.mark.parametrize(
    ("method", "body"),
    [
        ("prepare_bundles", [b"g" * 18, [[0, {"CPU": 2.0}]]]),
        ("commit_bundles", [b"g" * 18, [0]]),
        ("cancel_bundles", [b"g" * 18, [0], True]),
    ],
)
def test_a_bundle_step_from_a_peer_that_is_not_the_gcs_is_refused(
    ray_shared: Any, method: str, body: list[Any]
) -> None:
    """Only the GCS reserves a node's bundles: another peer's prepare_bundles, well formed,
    would hold the node's CPUs with no group to ever release them."""
    kind, reply = ask(raylet_port(ray_shared), method, body)
    assert kind == protocol.ERROR, reply
    assert reply == ["PermissionError", f"{method} is for the GCS to send"]
    assert ray.get([square.remote(i) for i in range(4)], timeout=GET_TIMEOUT) == [0, 1, 4, 9]


def test_a_placement_group_of_infinite_amounts_is_refused(ray_shared: Any) -> None:
    body = {
        "id": b"i" * 18,
        "name": "infinite",
        "ns": "",
        "bundles": [{"CPU": float("inf")}],
        "strategy": "PACK",
        "detached": False,
        "job": b"\x01\x00\x00\x00",
    }
    kind, reply = ask(gcs_port(ray_shared), "create_placement_group", body)
    assert (kind, reply) == (
        protocol.RESPONSE,
        {
            "error": "invalid placement group: create_placement_group: bundle['CPU'] must be "
            "a finite amount >= 0, got inf"
        },
    )
    assert (b"i" * 18).hex() not in placement_group_table()


def test_a_second_creation_of_an_existing_actor_is_refused(ray_shared: Any) -> None:
    """Another peer replaying an actor's create_actor (its name changed, so the name is not
    what refuses it) must not take the actor over: the GCS would own it by the replaying
    connection and kill it when that closes."""
    corpus: dict[int, list[Frame]] = {}
    with record(corpus):
        counter = Counter.remote()  # type: ignore[attr-defined]
        pid = ray.get(counter.where.remote(), timeout=GET_TIMEOUT)
    [(_, _, _, body, bufs)] = [f for f in corpus[gcs_port(ray_shared)] if f[2] == "create_actor"]
    replay = encode(protocol.REQUEST, 77, "create_actor", {**body, "name": "replayed"}, bufs)
    peer = RawPeer(gcs_port(ray_shared), auth.cluster_token(), True)
    peer.send(replay)
    assert peer.sock is not None
    peer.sock.settimeout(30)
    [(kind, _, _, reply, _)] = read_frames(peer.sock, FrameDecoder(), 1)
    peer.finish()  # (its connection closes: an actor it owned would die now)
    row = state.get_actor(body["aid"].hex())
    assert row is not None and (row.state, row.pid) == ("ALIVE", pid)  # (the GCS's record)
    assert ray.get(counter.add.remote(1, 2), timeout=GET_TIMEOUT) == 3
    assert psutil.pid_exists(pid)
    assert kind == protocol.RESPONSE
    assert reply == {"error": f"an actor with id {body['aid'].hex()} was already created"}
    ray.kill(counter)
