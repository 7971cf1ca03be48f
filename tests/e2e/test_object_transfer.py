"""Object transfer between the nodes of a Cluster: pulls into the reader's node store,
one pull per object per node, frees reaching every copy, and lost copies rebuilt.

Each node's store is its own namespace in the shared /dev/shm (the node id is in
the segment name), so a copy on a node is visible as a file of that node.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import wait_for_condition

import aioray as ray
from aioray._private.node.memory_tables import raylet_state
from aioray._private.rpc import loop as _loop
from aioray._private.rpc import rpc
from aioray._private.wire import config
from aioray.exceptions import ObjectLostError, OwnerDiedError
from aioray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

# head + two nodes; fast failure detection: a node silent for 5 x 100 ms is dead.
CLUSTER_NODES = [
    {
        "num_cpus": 1,
        "_system_config": {"health_check_period_ms": 100, "health_check_failure_threshold": 5},
    },
    {"num_cpus": 1},
    {"num_cpus": 1},
]
MiB = 1024 * 1024
GET_TIMEOUT = 60


def node_state(node: Any) -> dict[str, Any]:
    return raylet_state((node.node_ip_address, node.node_manager_port))


def on(node: Any, soft: bool = False) -> NodeAffinitySchedulingStrategy:
    return NodeAffinitySchedulingStrategy(node.node_id, soft=soft)


def transfer_stats(node: Any) -> dict[str, int]:
    return dict(node_state(node)["transfer"])


def copies_of(ref: Any) -> list[str]:
    """Segment files of this object, on any node (each name carries its node)."""
    oid = ref.hex()
    return [n for n in os.listdir(config.SHM_DIR) if n.startswith("aioray_") and oid in n]


def node_prefix(node: Any) -> str:
    return node.node_id[:16]


def data(nbytes: int, seed: int) -> Any:
    return np.random.default_rng(seed).integers(0, 256, nbytes, dtype=np.uint8)


@ray.remote
def make(nbytes: int, seed: int = 7) -> Any:
    return np.random.default_rng(seed).integers(0, 256, nbytes, dtype=np.uint8)  # as data()


@ray.remote
def checksum(arr: Any) -> tuple[str, int, str]:
    """A digest (chunks out of order would change it), the size, where it ran."""
    where = ray.get_runtime_context().get_node_id()
    return hashlib.blake2b(memoryview(arr)).hexdigest(), arr.nbytes, where


def digest(arr: Any) -> str:
    return hashlib.blake2b(memoryview(arr)).hexdigest()


def expected(nbytes: int, seed: int = 7) -> str:
    return digest(data(nbytes, seed))


@pytest.fixture
def nodes(ray_cluster: Any) -> tuple[Any, Any, Any]:
    head, a, b = ray_cluster.list_all_nodes()[:3]
    return head, a, b


def test_task_on_another_node_receives_a_100_mib_argument(nodes: Any) -> None:
    _, a, b = nodes
    before = transfer_stats(b)
    ref = make.options(scheduling_strategy=on(a)).remote(100 * MiB)
    total, size, where = ray.get(
        checksum.options(scheduling_strategy=on(b)).remote(ref), timeout=GET_TIMEOUT
    )
    assert where == b.node_id
    assert size == 100 * MiB and total == expected(100 * MiB)
    after = transfer_stats(b)
    assert after["pulls"] == before["pulls"] + 1
    assert after["bytes_pulled"] - before["bytes_pulled"] >= 100 * MiB
    # The copy on b is a file of b's store; the primary stays on a.
    names = copies_of(ref)
    assert any(node_prefix(a) in n for n in names) and any(node_prefix(b) in n for n in names)


def test_driver_gets_an_object_made_on_another_node(nodes: Any) -> None:
    head, a, _ = nodes
    before = transfer_stats(head)
    ref = make.options(scheduling_strategy=on(a)).remote(3 * MiB, seed=3)
    arr = ray.get(ref, timeout=GET_TIMEOUT)
    assert arr.nbytes == 3 * MiB
    assert np.array_equal(arr, data(3 * MiB, 3))
    assert ray.get(ref, timeout=GET_TIMEOUT)[:10].tolist() == arr[:10].tolist()
    assert transfer_stats(head)["pulls"] == before["pulls"] + 1  # the second get reads it here


def test_concurrent_pull_requests_for_one_object_share_one_transfer(nodes: Any) -> None:
    """Two readers ask b's raylet at the same moment: a serves the object once."""
    _, a, b = nodes
    ref = make.options(scheduling_strategy=on(a)).remote(20 * MiB)
    ray.wait([ref], timeout=GET_TIMEOUT, fetch_local=False)
    before_a, before_b = transfer_stats(a), transfer_stats(b)

    body = [ref.binary(), bytes.fromhex(a.node_id)]

    async def two_pulls() -> list[Any]:
        conn, _ = await rpc.connect(
            b.node_ip_address, b.node_manager_port, hello={"role": "client"}, timeout=5
        )
        try:
            calls = [conn.call_nowait("pull_object", body) for _ in range(2)]
            return [(await c)[0] for c in calls]
        finally:
            conn.close()

    assert _loop.run(two_pulls()) == [None, None]
    assert transfer_stats(a)["served"] == before_a["served"] + 1
    assert transfer_stats(b)["pulls"] == before_b["pulls"] + 1
    del ref


@ray.remote
def digests(*arrays: Any) -> list[str]:
    return [hashlib.blake2b(memoryview(x)).hexdigest() for x in arrays]


def test_pulled_copies_are_written_into_the_segment_pool(nodes: Any) -> None:
    """A pull wants a segment of its class on the puller's node: once the pool has one,
    the next pull of that class is received into it (issue 21), bytes intact."""
    head, a, _ = nodes
    size = 12 * MiB  # a size class no other test here pulls

    def head_store() -> dict[str, Any]:
        return dict(node_state(head)["object_store"])

    claimed = head_store()["pool_claimed_total"]
    first = make.options(scheduling_strategy=on(a)).remote(size, seed=11)
    assert digest(ray.get(first, timeout=GET_TIMEOUT)) == expected(size, 11)
    wait_for_condition(lambda: head_store()["pool_free"] >= 1, message=lambda: str(head_store()))
    second = make.options(scheduling_strategy=on(a)).remote(size, seed=12)
    assert digest(ray.get(second, timeout=GET_TIMEOUT)) == expected(size, 12)
    assert head_store()["pool_claimed_total"] > claimed
    assert digest(ray.get(first, timeout=GET_TIMEOUT)) == expected(size, 11)  # untouched


def test_several_remote_objects_in_one_get_or_task(nodes: Any) -> None:
    head, a, b = nodes
    before = transfer_stats(head)["pulls"]
    refs = [
        make.options(scheduling_strategy=on(n)).remote(5 * MiB, seed=i)
        for i, n in enumerate((a, b, a))
    ]
    want = [expected(5 * MiB, seed=i) for i in range(3)]
    assert [digest(x) for x in ray.get(refs, timeout=GET_TIMEOUT)] == want
    assert transfer_stats(head)["pulls"] == before + 3
    assert ray.get(digests.options(scheduling_strategy=on(b)).remote(*refs)) == want


def test_many_readers_on_one_node_share_one_pull(nodes: Any) -> None:
    _, a, b = nodes
    before_b, before_a = transfer_stats(b), transfer_stats(a)
    ref = make.options(scheduling_strategy=on(a)).remote(40 * MiB)
    ray.wait([ref], timeout=GET_TIMEOUT, fetch_local=False)
    readers = [
        checksum.options(scheduling_strategy=on(b), num_cpus=0.25).remote(ref) for _ in range(6)
    ]
    results = ray.get(readers, timeout=GET_TIMEOUT)
    assert {r[2] for r in results} == {b.node_id}
    assert {r[0] for r in results} == {expected(40 * MiB)}
    assert transfer_stats(b)["pulls"] == before_b["pulls"] + 1
    assert transfer_stats(a)["served"] == before_a["served"] + 1


def test_broadcast_fetches_once_per_node(nodes: Any) -> None:
    all_nodes = list(nodes)
    before = {n.node_id: transfer_stats(n) for n in all_nodes}
    big = data(30 * MiB, 11)
    ref = ray.put(big)  # on the head, the driver's node
    readers = [
        checksum.options(scheduling_strategy=on(n), num_cpus=0.5).remote(ref)
        for n in all_nodes
        for _ in range(2)
    ]
    results = ray.get(readers, timeout=GET_TIMEOUT)
    assert {r[2] for r in results} == {n.node_id for n in all_nodes}
    assert {r[0] for r in results} == {digest(big)}
    pulls = {n.node_id: transfer_stats(n)["pulls"] - before[n.node_id]["pulls"] for n in all_nodes}
    head = all_nodes[0]
    assert pulls == {n.node_id: (0 if n is head else 1) for n in all_nodes}


def test_copies_on_every_node_are_freed_with_the_refs(nodes: Any) -> None:
    _, a, b = nodes
    ref = make.options(scheduling_strategy=on(a)).remote(8 * MiB)
    ray.get([checksum.options(scheduling_strategy=on(b)).remote(ref)], timeout=GET_TIMEOUT)
    ray.get(ref, timeout=GET_TIMEOUT)  # and a copy on the head, for the driver
    names = copies_of(ref)
    assert {p for p in (node_prefix(x) for x in nodes) if any(p in n for n in names)} == {
        node_prefix(x) for x in nodes
    }
    used_before = {x.node_id: node_state(x)["object_store"]["objects"] for x in nodes}
    del ref
    wait_for_condition(lambda: not copies_of_hex(names), 10, message=lambda: str(names))
    for x in nodes:
        wait_for_condition(
            lambda x=x: node_state(x)["object_store"]["objects"] < used_before[x.node_id],
            10,
            message=f"node {x.node_id[:8]} still counts the copy",
        )


def copies_of_hex(names: list[str]) -> list[str]:
    return [n for n in names if os.path.exists(os.path.join(config.SHM_DIR, n))]


def test_pull_of_a_freed_object_is_an_object_lost_error(nodes: Any) -> None:
    """A stale location (the object is freed at its node) fails cleanly, no hang."""
    _, a, b = nodes
    ref = make.options(scheduling_strategy=on(a)).remote(2 * MiB)
    ray.wait([ref], timeout=GET_TIMEOUT, fetch_local=False)

    async def pull_freed() -> Any:
        conn, _ = await rpc.connect(
            b.node_ip_address, b.node_manager_port, hello={"role": "client"}, timeout=5
        )
        try:
            return await conn.call("pull_object", [os.urandom(24), bytes.fromhex(a.node_id)])
        finally:
            conn.close()

    reply = _loop.run(pull_freed())
    assert reply[0] == "ObjectLostError" and "not in" in reply[1]
    del ref


def test_pull_from_a_node_that_is_not_in_the_cluster_fails_cleanly(nodes: Any) -> None:
    _, _, b = nodes

    async def pull() -> Any:
        conn, _ = await rpc.connect(
            b.node_ip_address, b.node_manager_port, hello={"role": "client"}, timeout=5
        )
        try:
            unknown = await conn.call("pull_object", [os.urandom(24), os.urandom(16)])
            with pytest.raises(rpc.RpcError):
                await conn.call("pull_object", ["not an id"])
            return unknown
        finally:
            conn.close()

    reply = _loop.run(pull())
    assert reply[0] == "ObjectLostError" and "is not in the cluster" in reply[1]
    assert node_state(b)["transfer"]["pulling"] == 0  # and the raylet still serves


@pytest.fixture
def small(ray_cluster: Any) -> Any:
    """A node whose store holds two 20 MiB objects, not three."""
    node = ray_cluster.add_node(num_cpus=1, object_store_memory=50 * MiB)
    yield node
    ray_cluster.remove_node(node)


def test_pulls_into_a_full_store_evict_older_cached_copies(nodes: Any, small: Any) -> None:
    _, a, _ = nodes
    refs = [make.options(scheduling_strategy=on(a)).remote(20 * MiB, seed=i) for i in range(3)]
    for i, ref in enumerate(refs):
        got = ray.get(checksum.options(scheduling_strategy=on(small)).remote(ref), timeout=60)
        assert got[0] == expected(20 * MiB, seed=i)
    store = node_state(small)["object_store"]
    assert store["used"] <= 50 * MiB and store["objects"] == 2  # the first copy was evicted
    assert store["spilled_total"] == 0  # cached copies are dropped, never spilled
    pulls = transfer_stats(small)["pulls"]
    got = ray.get(checksum.options(scheduling_strategy=on(small)).remote(refs[0]), timeout=60)
    assert got[0] == expected(20 * MiB, seed=0)
    assert transfer_stats(small)["pulls"] == pulls + 1  # pulled again


def test_pull_from_a_spilled_primary_copy_restores_it_there(nodes: Any, small: Any) -> None:
    _, _, b = nodes
    refs = [make.options(scheduling_strategy=on(small)).remote(20 * MiB, seed=i) for i in range(3)]
    ray.wait(refs, num_returns=3, timeout=GET_TIMEOUT, fetch_local=False)
    wait_for_condition(
        lambda: node_state(small)["object_store"]["spilled_total"] >= 1, 10, message="no spill"
    )
    for i, ref in enumerate(refs):
        got = ray.get(checksum.options(scheduling_strategy=on(b)).remote(ref), timeout=60)
        assert got[0] == expected(20 * MiB, seed=i)
    assert node_state(small)["object_store"]["restored_total"] >= 1


def test_a_copy_larger_than_the_store_is_pulled_to_disk(nodes: Any, small: Any) -> None:
    """Fallback allocation for pulled copies: a copy larger than the reader's whole
    store is a file on its disk, linked from the segment's place; freed with the ref."""
    _, a, _ = nodes
    ref = make.options(scheduling_strategy=on(a)).remote(60 * MiB)
    total, size, where = ray.get(
        checksum.options(scheduling_strategy=on(small)).remote(ref), timeout=GET_TIMEOUT
    )
    assert (total, size, where) == (expected(60 * MiB), 60 * MiB, small.node_id)
    store = node_state(small)["object_store"]
    assert store["fallback_bytes"] >= 60 * MiB and store["used"] == 0
    (name,) = [n for n in copies_of(ref) if node_prefix(small) in n]
    link = os.path.join(config.SHM_DIR, name)
    on_disk = os.path.realpath(link)
    assert os.path.islink(link) and on_disk.endswith(".fallback") and os.path.isfile(on_disk)
    del ref
    wait_for_condition(lambda: not os.path.lexists(link) and not os.path.exists(on_disk))
    wait_for_condition(lambda: node_state(small)["object_store"]["fallback_bytes"] == 0)


@ray.remote(max_retries=2)
def produce(marker: str, nbytes: int) -> Any:
    with open(marker, "a") as f:
        f.write(ray.get_runtime_context().get_node_id() + "\n")
    return np.full(nbytes, 5, dtype=np.uint8)


@ray.remote
class Holder:
    def put_big(self) -> list[Any]:
        return [ray.put(np.ones(2 * MiB, dtype=np.uint8))]

    def node(self) -> str:
        return ray.get_runtime_context().get_node_id()


@pytest.fixture
def victim(ray_cluster: Any) -> Any:
    node = ray_cluster.add_node(num_cpus=1)
    yield node
    if node in ray_cluster.worker_nodes:
        ray_cluster.remove_node(node, allow_graceful=False)


def test_object_on_a_killed_node_is_rebuilt_from_lineage(
    ray_cluster: Any, victim: Any, tmp_path: Path
) -> None:
    marker = tmp_path / "runs"
    ref = produce.options(scheduling_strategy=on(victim, soft=True)).remote(str(marker), 4 * MiB)
    ray.wait([ref], timeout=GET_TIMEOUT, fetch_local=False)
    assert marker.read_text().split() == [victim.node_id]
    ray_cluster.remove_node(victim, allow_graceful=False)
    arr = ray.get(ref, timeout=GET_TIMEOUT)
    assert arr.nbytes == 4 * MiB and int(arr[0]) == 5 and int(arr[-1]) == 5
    ran_on = marker.read_text().split()
    assert len(ran_on) == 2 and ran_on[1] != victim.node_id
    # A task elsewhere reads the rebuilt object too.
    a = ray_cluster.list_all_nodes()[1]
    got, _, _ = ray.get(checksum.options(scheduling_strategy=on(a)).remote(ref), timeout=60)
    assert got == digest(np.full(4 * MiB, 5, dtype=np.uint8))


@ray.remote
def block_until(path: str) -> None:
    import time

    while not os.path.exists(path):
        time.sleep(0.01)  # another process's file: no event to wait on


def test_tasks_holding_a_stale_location_do_not_rebuild_it_again(
    ray_cluster: Any, victim: Any, tmp_path: Path
) -> None:
    """Readers on two nodes queued with the dead node's location: one rebuild serves both
    (the second is told where the object is now instead of running its task again)."""
    marker = tmp_path / "runs"
    _, a, b = ray_cluster.list_all_nodes()[:3]
    ref = produce.options(scheduling_strategy=on(victim, soft=True), max_retries=1).remote(
        str(marker), 4 * MiB
    )
    ray.wait([ref], timeout=GET_TIMEOUT, fetch_local=False)
    gates = {n.node_id: tmp_path / n.node_id for n in (a, b)}
    blockers = [
        block_until.options(scheduling_strategy=on(n)).remote(str(gates[n.node_id])) for n in (a, b)
    ]
    readers = [checksum.options(scheduling_strategy=on(n)).remote(ref) for n in (a, b)]
    ray_cluster.remove_node(victim, allow_graceful=False)
    want = digest(np.full(4 * MiB, 5, dtype=np.uint8))
    for n, reader in zip((a, b), readers, strict=True):  # one after the other
        gates[n.node_id].touch()
        assert ray.get(reader, timeout=GET_TIMEOUT)[0] == want
    ray.get(blockers, timeout=GET_TIMEOUT)
    assert len(marker.read_text().split()) == 2  # the first run and one rebuild


def test_copies_pulled_from_a_dead_node_are_freed_with_the_ref(
    ray_cluster: Any, victim: Any, tmp_path: Path
) -> None:
    _, _, b = ray_cluster.list_all_nodes()[:3]
    ref = produce.options(scheduling_strategy=on(victim), max_retries=0).remote(
        str(tmp_path / "runs"), 3 * MiB
    )
    ray.get(checksum.options(scheduling_strategy=on(b)).remote(ref), timeout=GET_TIMEOUT)
    on_b = [n for n in copies_of(ref) if node_prefix(b) in n]
    assert on_b
    ray_cluster.remove_node(victim, allow_graceful=False)
    wait_for_condition(
        lambda: not any(n["NodeID"] == victim.node_id and n["Alive"] for n in ray.nodes()), 10
    )
    del ref  # its primary's node cannot forward the free: every node is told
    wait_for_condition(lambda: not copies_of_hex(on_b), 10, message=lambda: str(on_b))


def test_task_result_without_retries_on_a_killed_node_is_lost(
    ray_cluster: Any, victim: Any, tmp_path: Path
) -> None:
    ref = produce.options(scheduling_strategy=on(victim, soft=True), max_retries=0).remote(
        str(tmp_path / "runs"), 2 * MiB
    )
    ray.wait([ref], timeout=GET_TIMEOUT, fetch_local=False)
    ray_cluster.remove_node(victim, allow_graceful=False)
    with pytest.raises(ObjectLostError, match=r"died|could not be reached"):
        ray.get(ref, timeout=GET_TIMEOUT)


def test_put_object_whose_owner_node_died_raises_owner_died(ray_cluster: Any, victim: Any) -> None:
    holder = Holder.options(scheduling_strategy=on(victim)).remote()
    assert ray.get(holder.node.remote(), timeout=GET_TIMEOUT) == victim.node_id
    [ref] = ray.get(holder.put_big.remote(), timeout=GET_TIMEOUT)
    ray_cluster.remove_node(victim, allow_graceful=False)
    with pytest.raises(OwnerDiedError):
        ray.get(ref, timeout=GET_TIMEOUT)
