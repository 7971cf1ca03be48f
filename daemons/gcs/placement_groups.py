"""The GCS placement-group table and its scheduler: atomic reservation across nodes.

A group's life, driven here:

1. ``create_placement_group`` records it (PENDING) and queues it. A pass
   (``_pass``) plans the queued groups in order and reserves each placeable one
   (several at once); a group that cannot be placed now stays queued and is
   tried again when a node joins or resources free up.
   One that could never fit even the idle cluster is reported once, naming it
   (a log line here, a warning at its creator).
2. Placing: the policy (pg_policy.py) picks nodes from the cluster view, then
   the reservation runs in two phases so it is atomic across nodes:
   a. prepare on every chosen raylet at once (each holds its bundles' resources
      aside, all or nothing);
   b. if any raylet refused or died, every successful prepare is cancelled and
      the group stays queued; otherwise commit on every raylet, and the bundles'
      resources (``CPU_group_<i>_<pg>``...) join those nodes' totals. CREATED:
      the waiters (``wait_placement_group``) are answered.
3. ``remove_placement_group``: REMOVED; every raylet holding bundles cancels
   them (killing the tasks and actors running in them; actors are not
   restarted), and the resources return. A non-detached group is removed when
   its job's driver disconnects.
4. A node's death: the group's bundles there are lost; the group goes back to
   the front of the queue (RESCHEDULING) and only those bundles are placed again.

The table is plain data (``self.groups``: id -> dict of str/bytes/lists), so it
can be written through to storage as it changes (``listeners``).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aioray.daemons.gcs.pg_policy import STRATEGIES, infeasible_reason, place

from aioray._private.core.bundle_resources import add, group_resources, is_group_resource
from aioray._private.rpc import rpc
from aioray._private.wire import checks
from aioray._private.wire.protocol import Buffer
from aioray._private.wire.schema import (
    CreatePlacementGroup,
    CreatePlacementGroupReply,
    NameNamespace,
    WaitPlacementGroup,
)

if TYPE_CHECKING:
    from aioray.daemons.gcs.server import GcsServer

logger = logging.getLogger(__name__)

PENDING, CREATED, REMOVED, RESCHEDULING = "PENDING", "CREATED", "REMOVED", "RESCHEDULING"
MAX_REMOVED_KEPT = 1000  # removed groups stay visible in the table, up to this many
RETRY_ON_REPORT_S = 0.05  # a resource report retries pending groups at most this often


class PlacementGroupManager:
    def __init__(self, gcs: GcsServer) -> None:
        self.gcs = gcs
        self.groups: dict[bytes, dict[str, Any]] = {}
        self.names: dict[tuple[str, str], bytes] = {}
        self.listeners: list[Callable[[dict[str, Any]], None]] = []  # persistence hook
        self._queue: collections.deque[bytes] = collections.deque()
        self._removed: collections.deque[bytes] = collections.deque()
        self._waiters: dict[bytes, list[asyncio.Future[str]]] = {}
        self._owners: dict[bytes, rpc.Connection] = {}  # non-detached group -> its job's driver
        self._warned: set[bytes] = set()
        self._reserving: set[bytes] = set()  # groups with a two-phase reservation under way
        self._tasks: set[asyncio.Future[None]] = set()
        self._pass_soon = False
        self._retry_handle: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        made = sum(g["state"] == CREATED for g in self.groups.values())
        queued = len(self._queue)
        return f"<PlacementGroupManager groups={len(self.groups)} created={made} queue={queued}>"

    def handlers(self) -> dict[str, rpc.Handler]:
        return {
            "create_placement_group": self.handle_create_placement_group,
            "remove_placement_group": self.handle_remove_placement_group,
            "wait_placement_group": self.handle_wait_placement_group,
            "get_placement_group": self.handle_get_placement_group,
            "placement_group_table": self.handle_placement_group_table,
        }

    # -- 1. creation ---------------------------------------------------------------------
    def handle_create_placement_group(
        self, conn: rpc.Connection, body: CreatePlacementGroup, _: list[Buffer]
    ) -> CreatePlacementGroupReply:
        """``create_placement_group`` {id, bundles, strategy, name?, ns?, detached?, ...} -> {ok:
        True} once registered (reservation goes on), or {error} for an invalid group or a taken
        name."""
        pgid, name, ns = body["id"], body.get("name") or "", body.get("ns") or ""
        try:  # (finite amounts: an infinite bundle would wait for a node forever)
            bundles = [
                checks.resources("create_placement_group", "bundle", b) for b in body["bundles"]
            ]
        except (TypeError, ValueError) as e:
            return {"error": f"invalid placement group: {e}"}
        strategy = body["strategy"]
        if (
            strategy not in STRATEGIES
            or not bundles
            or not all(b and all(v > 0 for v in b.values()) for b in bundles)
            or pgid in self.groups
        ):  # the caller validates; this keeps a bad peer from corrupting the table
            return {"error": f"invalid placement group: {strategy!r} {bundles!r}"}
        if name and (ns, name) in self.names:
            return {"error": f"A placement group named {name!r} already exists (namespace {ns!r})."}
        rec: dict[str, Any] = {
            "id": pgid,
            "name": name,
            "ns": ns,
            "bundles": bundles,
            "strategy": strategy,
            "detached": bool(body.get("detached")),
            "job": body.get("job", b""),
            "state": PENDING,
            "nodes": [None] * len(bundles),
            "committed": [False] * len(bundles),
            "created_at": time.time(),
        }
        self.groups[pgid] = rec
        if name:
            self.names[(ns, name)] = pgid
        if not rec["detached"]:
            self._watch_owner(pgid, rec["job"], conn)
        self._changed(rec)
        self._queue.append(pgid)
        self.kick()
        return {"ok": True}

    def _watch_owner(self, pgid: bytes, job: bytes, conn: rpc.Connection) -> None:
        """Tie the group to its job's driver (or, failing that, to its creator)."""
        owner = next(
            (c for c in self.gcs.server.connections if c.state.get("job_id") == job and job),
            conn,
        )
        self._owners[pgid] = owner
        if "pg_watch" not in owner.state:
            owner.state["pg_watch"] = True
            owner.on_close.append(self._owner_gone)

    def _owner_gone(self, conn: rpc.Connection) -> None:
        for pgid in [p for p, c in self._owners.items() if c is conn]:
            self.remove(pgid)

    def load(self, records: list[dict[str, Any]]) -> None:
        """Take back a table written through ``listeners`` (a restarted GCS).

        Created groups keep their nodes; the others are queued again.
        """
        for rec in records:
            rec = {**rec, "nodes": list(rec["nodes"]), "committed": list(rec["committed"])}
            self.groups[rec["id"]] = rec
            if rec["state"] == REMOVED:
                self._removed.append(rec["id"])
                continue
            if rec["name"]:
                self.names[(rec["ns"], rec["name"])] = rec["id"]
            if rec["state"] != CREATED:
                self._queue.append(rec["id"])
        if self._queue:
            self.kick()

    # -- 2. placing ------------------------------------------------------------------------
    def kick(self) -> None:
        """Plan the queued groups soon (one pass per loop iteration, however many kicks)."""
        if self._queue and not self._pass_soon:
            self._pass_soon = True
            asyncio.get_running_loop().call_soon(self._pass)

    def resources_reported(self) -> None:
        """A node's resources changed: queued groups may fit now (rate-limited)."""
        if self._queue and self._retry_handle is None:
            loop = asyncio.get_running_loop()
            self._retry_handle = loop.call_later(RETRY_ON_REPORT_S, self._retry)

    def _retry(self) -> None:
        self._retry_handle = None
        self.kick()

    def _pass(self) -> None:
        """Plan every queued group in order; reserve the placeable ones concurrently.

        A plan takes its bundles out of the GCS's view at once, so the groups planned
        after it in the same pass do not count on the same room; raylet reports bring
        the view back to the truth.
        """
        self._pass_soon = False
        for pgid in list(self._queue):
            if pgid in self._reserving:
                continue
            rec = self.groups.get(pgid)
            if rec is None or rec["state"] in (REMOVED, CREATED):
                self._discard(pgid)
                continue
            missing = {i: rec["bundles"][i] for i, n in enumerate(rec["nodes"]) if n is None}
            placed = {i: n for i, n in enumerate(rec["nodes"]) if n is not None}
            plan = place(missing, rec["strategy"], self.gcs.view.view.nodes.values(), placed)
            if plan is None:
                self._warn_if_infeasible(rec)
                continue
            by_node: dict[bytes, list[int]] = {}
            for i, node_id in plan.items():
                by_node.setdefault(node_id, []).append(i)
            for n, indexes in by_node.items():
                self.gcs.view.deduct(n, _sum(rec["bundles"][i] for i in indexes))
            self._reserving.add(pgid)
            task = asyncio.ensure_future(self._reserve(rec, by_node))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _reserve(self, rec: dict[str, Any], by_node: dict[bytes, list[int]]) -> None:
        pgid = rec["id"]
        try:
            done = await self._two_phase(rec, by_node)
        except Exception:
            logger.exception("reserving placement group %s failed", pgid.hex())
            done = False
        finally:
            self._reserving.discard(pgid)
        if done:
            self._discard(pgid)
        else:  # refused (a stale view) or a node died: try again shortly
            self._retry_handle = self._retry_handle or asyncio.get_running_loop().call_later(
                RETRY_ON_REPORT_S, self._retry
            )

    def _discard(self, pgid: bytes) -> None:
        try:
            self._queue.remove(pgid)
        except ValueError:
            pass

    async def _two_phase(self, rec: dict[str, Any], by_node: dict[bytes, list[int]]) -> bool:
        """Reserve the planned bundles; True once the group is settled (created or removed)."""
        pgid, bundles = rec["id"], rec["bundles"]
        nodes = list(by_node)
        # a. prepare everywhere at once
        answers = await rpc.gather_settled(
            [
                self._call(n, "prepare_bundles", [pgid, [[i, bundles[i]] for i in by_node[n]]])
                for n in nodes
            ]
        )
        prepared = [n for n, ok in zip(nodes, answers, strict=True) if ok is True]
        if len(prepared) < len(nodes) or rec["state"] == REMOVED:
            for n in prepared:  # roll back: nothing of the group stays reserved
                self._notify(n, "cancel_bundles", [pgid, by_node[n]])
            return rec["state"] == REMOVED
        # b. commit everywhere; from here a node's death or a removal sees these bundles
        for n in nodes:
            for i in by_node[n]:
                rec["nodes"][i] = n
        answers = await rpc.gather_settled(
            [self._call(n, "commit_bundles", [pgid, by_node[n]]) for n in nodes]
        )
        for n, ok in zip(nodes, answers, strict=True):
            if ok is True and rec["state"] != REMOVED and n in self.gcs.raylets:
                for i in by_node[n]:
                    if rec["nodes"][i] == n:
                        rec["committed"][i] = True
                        self._totals(n, pgid, i, bundles[i], +1)
            elif ok is not True and rec["state"] != REMOVED:
                # A dead node's bundles were already reset (node_died); a live raylet
                # that failed the commit gives them back, and they are placed again.
                for i in by_node[n]:
                    if rec["nodes"][i] == n:
                        rec["nodes"][i] = None
                self._notify(n, "cancel_bundles", [pgid, by_node[n]])
        if rec["state"] == REMOVED:
            return True
        if not all(rec["committed"]):
            return False  # a node died during the commit: its bundles are placed again
        rec["state"] = CREATED
        self._warned.discard(pgid)
        self._changed(rec)
        self._wake(pgid, CREATED)
        return True

    async def _call(self, node_id: bytes, method: str, body: Any) -> Any:
        conn = self.gcs.raylet_conn(node_id)
        if conn is None or conn.is_closed:
            raise ConnectionError(f"node {node_id.hex()[:8]} is gone")
        return await conn.call(method, body)

    def _notify(self, node_id: bytes, method: str, body: Any) -> None:
        conn = self.gcs.raylet_conn(node_id)
        if conn is not None and not conn.is_closed:
            conn.notify(method, body)

    def _totals(
        self, node_id: bytes, pgid: bytes, i: int, bundle: dict[str, float], sign: int
    ) -> None:
        """Keep the GCS's node table and cluster view in step with a node's bundles."""
        group = group_resources(pgid.hex(), i, bundle)
        node = self.gcs.nodes.get(node_id)
        if node is not None:
            add(node["Resources"], group, sign)
        self.gcs.view.totals_changed(node_id, group, sign)

    def _warn_if_infeasible(self, rec: dict[str, Any]) -> None:
        pgid = rec["id"]
        if pgid in self._warned:
            return
        missing = {i: rec["bundles"][i] for i, n in enumerate(rec["nodes"]) if n is None}
        why = infeasible_reason(missing, rec["strategy"], self.gcs.view.view.nodes.values())
        if why is None:
            return
        self._warned.add(pgid)
        label = f"{rec['name']!r} ({pgid.hex()})" if rec["name"] else pgid.hex()
        message = (
            f"The placement group {label} cannot be created: {why}. "
            "It stays pending until nodes that can hold it join."
        )
        logger.warning("%s", message)
        owner = self._owners.get(pgid)
        if owner is not None and not owner.is_closed:
            owner.notify("placement_group_infeasible", message)

    # -- 3. removal ----------------------------------------------------------------------
    def handle_remove_placement_group(
        self, conn: rpc.Connection, pgid: bytes, _: list[Buffer]
    ) -> bool:
        """``remove_placement_group`` group id -> True if it existed and is now removed (its bundles
        released on every node)."""
        return self.remove(pgid)

    def remove(self, pgid: bytes) -> bool:
        rec = self.groups.get(pgid)
        if rec is None or rec["state"] == REMOVED:
            return False
        rec["state"] = REMOVED
        self._discard(pgid)
        self._owners.pop(pgid, None)
        self._warned.discard(pgid)
        if rec["name"]:
            self.names.pop((rec["ns"], rec["name"]), None)
        pg_hex = pgid.hex()
        for actor in self.gcs.actors.actors.values():  # killed below; not restarted
            if any(is_group_resource(k, pg_hex) for k in actor.hold):
                actor.no_restart = True
        by_node: dict[bytes, list[int]] = {}
        for i, n in enumerate(rec["nodes"]):
            if n is not None:
                by_node.setdefault(n, []).append(i)
                if rec["committed"][i]:
                    self._totals(n, pgid, i, rec["bundles"][i], -1)
        for n in list(self.gcs.raylets):  # every raylet: requests for it fail from now on
            self._notify(n, "cancel_bundles", [pgid, by_node.get(n, []), True])
        rec["nodes"] = [None] * len(rec["bundles"])
        rec["committed"] = [False] * len(rec["bundles"])
        self._changed(rec)
        self._wake(pgid, REMOVED)
        self._removed.append(pgid)
        while len(self._removed) > MAX_REMOVED_KEPT:
            self.groups.pop(self._removed.popleft(), None)
        self.kick()  # its resources may let a queued group in
        return True

    # -- 4. node death ---------------------------------------------------------------------
    def node_died(self, node_id: bytes) -> None:
        for rec in self.groups.values():
            if rec["state"] == REMOVED or node_id not in rec["nodes"]:
                continue
            for i, n in enumerate(rec["nodes"]):
                if n == node_id:
                    rec["nodes"][i] = None
                    rec["committed"][i] = False
            logger.warning(
                "placement group %s lost bundles on dead node %s; rescheduling them",
                rec["id"].hex()[:12],
                node_id.hex()[:8],
            )
            if rec["state"] == CREATED:
                rec["state"] = RESCHEDULING
                self._queue.appendleft(rec["id"])
            self._changed(rec)
        self.kick()

    # -- waiting and queries ---------------------------------------------------------------
    def handle_wait_placement_group(
        self, conn: rpc.Connection, body: WaitPlacementGroup, _: list[Buffer]
    ) -> str | asyncio.Future[str]:
        """Answer "CREATED", "REMOVED" or (after ``timeout`` seconds) "TIMEOUT"."""
        pgid, timeout = body
        rec = self.groups.get(pgid)
        if rec is None or rec["state"] in (CREATED, REMOVED):
            return REMOVED if rec is None else rec["state"]
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(pgid, []).append(fut)
        if timeout is not None:
            handle = asyncio.get_running_loop().call_later(
                max(0.0, float(timeout)), _settle, fut, "TIMEOUT"
            )
            fut.add_done_callback(lambda _: handle.cancel())
        return fut

    def _wake(self, pgid: bytes, state: str) -> None:
        for fut in self._waiters.pop(pgid, []):
            _settle(fut, state)

    def handle_get_placement_group(
        self, conn: rpc.Connection, body: NameNamespace, _: list[Buffer]
    ) -> dict[str, Any] | None:
        """``get_placement_group`` [name, namespace] -> the named group's public record, or None."""
        name, ns = body
        pgid = self.names.get((ns, name))
        return None if pgid is None else self._public(self.groups[pgid])

    def handle_placement_group_table(
        self, conn: rpc.Connection, pgid: bytes | None, _: list[Buffer]
    ) -> dict[str, Any] | list[dict[str, Any]] | None:
        """``placement_group_table`` group id or None -> that group's public record (None if
        unknown), or the list of every group's."""
        if pgid is not None:
            rec = self.groups.get(pgid)
            return None if rec is None else self._public(rec)
        return [self._public(rec) for rec in self.groups.values()]

    def _public(self, rec: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in rec.items() if k != "committed"}

    def _changed(self, rec: dict[str, Any]) -> None:
        for listener in self.listeners:
            listener(rec)


def _settle(fut: asyncio.Future[str], state: str) -> None:
    if not fut.done():
        fut.set_result(state)


def _sum(bundles: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    for b in bundles:
        add(out, b)
    return out
