"""The raylet's half of placement-group reservation: two-phase bundle accounting.

The GCS reserves a group's bundles on every chosen node atomically
(daemons/gcs/placement_groups.py):

1. ``prepare_bundles [pg, [[index, resources], ...]]``: all or nothing, the
   node holds the bundles' resources aside (taken from ``available``, so leases
   cannot take them) and answers True; False if they do not all fit now.
2. ``commit_bundles [pg, [index, ...]]``: each prepared bundle becomes the
   group's resources (``CPU_group_<i>_<pg>``, ``CPU_group_<pg>``, ... in
   aioray/_private/core/bundle_resources.py), added to the node's totals, which tasks and
   actors in the group lease.
3. ``cancel_bundles [pg, [index, ...], removed]``: a rollback (prepared) or a
   removal (committed). Workers leasing the group's resources are killed (Ray's
   semantics), the group's resources disappear, the reserved ones return. A
   removal goes to every raylet, which from then on fails lease requests for the
   group's resources instead of queueing them forever.

Every step reports the node's resources to the GCS at once.
"""

from __future__ import annotations

import collections
import os
import signal
from typing import TYPE_CHECKING

from aioray.daemons.raylet.gcs_link import check_from_gcs
from aioray.daemons.raylet.resources import give_back_gpus, take_gpus

from aioray._private.core.bundle_resources import add, group_resources, is_group_resource
from aioray._private.rpc import rpc
from aioray._private.wire.protocol import Buffer
from aioray._private.wire.schema import CancelBundles, CommitBundles, PrepareBundles

if TYPE_CHECKING:
    from aioray.daemons.raylet.server import LeaseRequest, Raylet

BundleKey = tuple[bytes, int]
MAX_REMOVED_KEPT = 10000


class BundleService:
    def __init__(self, raylet: Raylet) -> None:
        self.raylet = raylet
        self.prepared: dict[BundleKey, dict[str, float]] = {}
        self.committed: dict[BundleKey, dict[str, float]] = {}
        self._gpu_taken: dict[BundleKey, list[tuple[int, float]]] = {}
        self.gpu_pools: dict[BundleKey, dict[int, float]] = {}  # bundle -> GPU id -> free
        self._lease_pool: dict[int, BundleKey] = {}  # lease -> the bundle its GPUs are from
        self._names: dict[bytes, set[str]] = {}  # each group's resource names on this node
        self._held: dict[bytes, set[int]] = {}  # each group's committed bundles here
        self.removed: set[str] = set()  # removed groups (id hex): their requests fail
        self._removed_order: collections.deque[str] = collections.deque()

    def __repr__(self) -> str:
        return f"<BundleService prepared={len(self.prepared)} committed={len(self.committed)}>"

    def handlers(self) -> dict[str, rpc.Handler]:
        return {
            "prepare_bundles": self.handle_prepare_bundles,
            "commit_bundles": self.handle_commit_bundles,
            "cancel_bundles": self.handle_cancel_bundles,
        }

    def _from_gcs(self, conn: rpc.Connection, method: str) -> None:
        """Only the GCS reserves and releases bundles: from any other peer (even well
        formed) a bundle step is refused, else it could hold a node's resources with no
        group to ever release them, or kill a group's workers."""
        check_from_gcs(conn, method)

    def handle_prepare_bundles(
        self, conn: rpc.Connection, body: PrepareBundles, _: list[Buffer]
    ) -> bool:
        """``prepare_bundles`` [group id, [[index, resources], ...]] from the GCS -> True if every
        bundle fits and is now held (phase 1 of 2), False if not (nothing is held)."""
        self._from_gcs(conn, "prepare_bundles")
        pg, bundles = body
        new = [
            (int(i), {k: float(v) for k, v in res.items()})
            for i, res in bundles
            if (pg, i) not in self.prepared and (pg, i) not in self.committed
        ]
        need: dict[str, float] = {}
        for _i, res in new:
            add(need, res)
        resources = self.raylet.resources
        if not resources.fits(need):
            return False
        resources.acquire(need)
        for i, res in new:
            self.prepared[(pg, i)] = res
            taken = resources.assign_gpus(res.get("GPU", 0.0))
            if taken:  # the bundle's own devices: its tasks get their ids from these
                self._gpu_taken[(pg, i)] = taken
                self.gpu_pools[(pg, i)] = dict(taken)
        self.raylet.resources_changed()
        return True

    def handle_commit_bundles(
        self, conn: rpc.Connection, body: CommitBundles, _: list[Buffer]
    ) -> bool:
        """``commit_bundles`` [group id, indexes] from the GCS -> True; the prepared bundles become
        the group's resources (phase 2)."""
        self._from_gcs(conn, "commit_bundles")
        pg, indexes = body
        resources = self.raylet.resources
        for i in indexes:
            res = self.prepared.pop((pg, i), None)
            if res is None:
                continue
            self.committed[(pg, i)] = res
            group = group_resources(pg.hex(), i, res)
            add(resources.total, group)
            add(resources.available, group)
            self._names.setdefault(pg, set()).update(group)
            self._held.setdefault(pg, set()).add(i)
        self.raylet.resources_changed()
        return True

    def handle_cancel_bundles(
        self, conn: rpc.Connection, body: CancelBundles, _: list[Buffer]
    ) -> None:
        """``cancel_bundles`` [group id, indexes, removed?] (notice, from the GCS): release those
        bundles, prepared or committed, killing the workers that use them; ``removed``: the whole
        group is gone."""
        self._from_gcs(conn, "cancel_bundles")
        pg, indexes = body[0], body[1]
        if len(body) > 2 and body[2]:  # the group was removed (sent to every raylet)
            self.removed.add(pg.hex())
            self._removed_order.append(pg.hex())
            while len(self._removed_order) > MAX_REMOVED_KEPT:
                self.removed.discard(self._removed_order.popleft())
        resources = self.raylet.resources
        removed_committed = False
        for i in indexes:
            res = self.prepared.pop((pg, i), None)
            if res is None:
                res = self.committed.pop((pg, i), None)
                removed_committed = removed_committed or res is not None
            if res is not None:
                resources.release(res)
                resources.release_gpus(self._gpu_taken.pop((pg, i), []))
                self.gpu_pools.pop((pg, i), None)
        if removed_committed:
            self._kill_group_workers(pg.hex())
            held = self._held.get(pg, set())
            held.difference_update(indexes)
            if not held:  # the group's last bundle here: its resource names go
                self._held.pop(pg, None)
                for name in self._names.pop(pg, ()):
                    resources.total.pop(name, None)
                    resources.available.pop(name, None)
        self.raylet.resources_changed()

    def assign_gpus(self, lease_id: int, res: dict[str, float]) -> list[tuple[int, float]]:
        """Device ids for a lease of a bundle's GPUs (``GPU_group_[<i>_]<pg>``)."""
        for name, amount in res.items():
            if not name.startswith("GPU_group_"):
                continue
            head, _, pg_hex = name[len("GPU_group_") :].rpartition("_")  # head: the index
            pg = bytes.fromhex(pg_hex)
            keys = [(pg, int(head))] if head else [k for k in self.gpu_pools if k[0] == pg]
            for key in keys:
                taken = take_gpus(self.gpu_pools.get(key, {}), amount)
                if taken:
                    self._lease_pool[lease_id] = key
                    return taken
        return []

    def release_gpus(self, lease_id: int, taken: list[tuple[int, float]]) -> bool:
        """Give a lease's GPUs back to its bundle; False if they came from the node."""
        key = self._lease_pool.pop(lease_id, None)
        if key is None:
            return False
        pool = self.gpu_pools.get(key)
        if pool is not None:  # else the bundle is gone and gave its devices back
            give_back_gpus(pool, taken)
        return True

    def refuse(self, req: LeaseRequest) -> bool:
        """Fail a lease request for a removed group (Ray: TaskPlacementGroupRemoved)."""
        for name in req.res:
            if is_group_resource(name) and name.rsplit("_", 1)[-1] in self.removed:
                req.fut.set_result(
                    {
                        "error": f"The placement group {name.rsplit('_', 1)[-1]} was removed.",
                        "pg_removed": True,
                    }
                )
                return True
        return False

    def _kill_group_workers(self, pg_hex: str) -> None:
        """Removing a group kills the tasks and actors running in it (as Ray does)."""
        for lease in self.raylet.leases.values():
            if any(is_group_resource(k, pg_hex) for k in lease.res):
                try:
                    os.kill(lease.worker.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
