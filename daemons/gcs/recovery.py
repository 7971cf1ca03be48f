"""What the GCS saves to its store, and how a restarted GCS picks up where it stopped.

Saving: every actor state change (``ActorManager._set_state``), every job, every
internal-KV write, every node registration and death goes to the store
(``store.py``), committed before the reply.

Restoring, when a GCS starts on a session directory that has a database (it was
killed and restarted with the same ``--session-dir``):

1. The session id, the job counter, the internal KV and the placement-group rows
   are loaded as they were. Actors are loaded with their state, address, node and
   name, so ``get_actor(name)`` answers at once and callers reach an ALIVE actor
   directly at its worker, which never stopped. The node table too, so ``nodes()``
   answers at once as before the restart (not ``[]`` until raylets re-register),
   and a node that was dead stays dead (it is refused if its raylet comes back).
2. Raylets reconnect by themselves and register their node again under the same
   node id, listing the actors their workers still host (``reconcile_node``). An
   actor the GCS has as ALIVE there but the raylet does not list died while the
   GCS was down: it restarts or dies under ``max_restarts``. A worker hosting an
   actor the GCS does not have ALIVE there is killed.
3. Actors that were being scheduled (PENDING, RESTARTING) are scheduled again
   once a node is back.
4. Owners reconnect lazily and say who they are (``owner_reconnected``); their
   non-detached actors are tied to the new connection. After
   ``GCS_RECONNECT_TIMEOUT_S``, nodes that never came back are dead, ALIVE actors
   whose node never came back are restarted or declared dead, and non-detached
   actors whose owner never came back die with it, as they would have if the GCS
   had seen the owner go.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from aioray.daemons.gcs.actor_manager import ALIVE, DEAD, PENDING, RESTARTING, ActorRecord
from aioray.daemons.gcs.store import GcsStore

from aioray._private.rpc import rpc
from aioray._private.wire import config
from aioray._private.wire.schema import CreateActor

if TYPE_CHECKING:
    from aioray.daemons.gcs.server import GcsServer

logger = logging.getLogger(__name__)


def _state_row(rec: ActorRecord) -> dict[str, Any]:
    return {
        "state": rec.state,
        "version": rec.version,
        "addr": rec.addr,
        "node_id": rec.node_id,
        "worker_id": rec.worker_id,
        "num_restarts": rec.num_restarts,
        "created": rec.created,
        "death": rec.death,
        "no_restart": rec.no_restart,
        "pid": rec.pid,
        "gpus": rec.gpus,
        "owner_wid": rec.owner_wid,
        "unschedulable": rec.unschedulable,
    }


class Persistence:
    def __init__(self, gcs: GcsServer, store: GcsStore) -> None:
        self.gcs = gcs
        self.store = store
        self.restored = False
        self.placement_groups: dict[bytes, Any] = {}  # rows for the placement-group manager
        self._to_schedule: list[ActorRecord] = []
        self._nodes_to_return: set[bytes] = set()  # restored alive, not registered again
        self._bodies: dict[bytes, CreateActor] = {}  # creation bodies of live actors
        self._waiting_for_nodes = False  # restored, and nodes may still come back

    def __repr__(self) -> str:
        return f"<Persistence restored={self.restored} {self.store!r}>"

    # -- saving ----------------------------------------------------------------------------
    def actor_created(self, rec: ActorRecord, body: CreateActor) -> None:
        """Save the creation body and arguments once; ``actor_changed`` saves the rest."""
        if self.store.durable:
            self._bodies[rec.aid] = body
            row = {"body": body, "bufs": [bytes(b) for b in rec.buffers]}
            self.store.put("actor_specs", rec.aid, row)
            self.actor_changed(rec)

    def actor_changed(self, rec: ActorRecord) -> None:
        if not self.store.durable:
            return
        if rec.state == DEAD and rec.aid in self._bodies:
            # Its creation arguments are dropped in memory too: keep only the body.
            self.store.put("actor_specs", rec.aid, {"body": self._bodies.pop(rec.aid), "bufs": []})
        self.store.put("actors", rec.aid, _state_row(rec))

    def job_registered(self, job_id: bytes, info: dict[str, Any]) -> None:
        self.store.put("jobs", job_id, info)

    def node_changed(self, node_id: bytes, info: dict[str, Any]) -> None:
        """A node registered or died (its resource reports are not saved)."""
        self._nodes_to_return.discard(node_id)
        self.store.put("nodes", node_id, info)

    # -- restoring -------------------------------------------------------------------------
    def restore(self) -> str | None:
        """Load what a previous GCS of this session saved; return its session id."""
        meta = self.store.load("meta")
        session_id = meta.get(b"session_id")
        jobs = self.store.load("jobs")
        if jobs:
            self.gcs.next_job = max(int.from_bytes(j, "little") for j in jobs) + 1
        for packed, value in self.store.load("kv").items():
            ns, key = _unpack_kv_key(packed)
            self.gcs.kv.setdefault(ns, {})[key] = value
        self.placement_groups = self.store.load("placement_groups")
        nodes = self.store.load("nodes")
        self.gcs.nodes.update(nodes)
        self._nodes_to_return = {n for n, info in nodes.items() if info["Alive"]}
        specs = self.store.load("actor_specs")
        manager = self.gcs.actors
        for aid, row in self.store.load("actors").items():
            spec = specs.get(aid)
            if spec is None:
                continue
            rec = ActorRecord(spec["body"], spec["bufs"], None)
            for field, value in row.items():
                setattr(rec, field, value)
            manager.actors[aid] = rec
            if rec.state != DEAD:
                self._bodies[aid] = spec["body"]
            if rec.name and rec.state != DEAD:
                manager.names[(rec.namespace, rec.name)] = aid
            if rec.state in (PENDING, RESTARTING):
                self._to_schedule.append(rec)
        self.restored = bool(meta or jobs or specs or nodes)
        if self.restored:
            logger.info(
                "restored session %s: %d actors, %d jobs, %d KV namespaces",
                session_id,
                len(manager.actors),
                len(jobs),
                len(self.gcs.kv),
            )
        return session_id if isinstance(session_id, str) else None

    def save_session(self, session_id: str, session_dir: str) -> None:
        self.store.put("meta", b"session_id", session_id)
        self.store.put("meta", b"session_dir", session_dir)

    def start(self) -> None:
        """(loop) After a restart, give nodes and owners time to come back."""
        if self.restored:
            self._waiting_for_nodes = True
            asyncio.get_running_loop().call_later(config.GCS_RECONNECT_TIMEOUT_S, self._deadline)

    def defer(self, rec: ActorRecord) -> bool:
        """No node can take ``rec`` now: after a restart, wait for nodes to re-register."""
        if self._waiting_for_nodes:
            self._to_schedule.append(rec)
        return self._waiting_for_nodes

    # -- reconciling -----------------------------------------------------------------------
    def reconcile_node(self, node_id: bytes, hosted: list[bytes] | None) -> None:
        """A raylet (re)registered; ``hosted``: the actors its workers host, if it says."""
        manager = self.gcs.actors
        raylet = self.gcs.raylet_conn(node_id)
        if hosted is not None and raylet is not None:
            listed = set(hosted)
            for aid in listed:
                rec = manager.actors.get(aid)
                if rec is None or rec.state != ALIVE or rec.node_id != node_id:
                    raylet.notify("kill_actor_worker", aid)
            for rec in list(manager.actors.values()):
                if rec.node_id == node_id and rec.state == ALIVE and rec.aid not in listed:
                    manager.retry_or_die(rec, "its worker died while the GCS was unreachable")
        to_schedule, self._to_schedule = self._to_schedule, []
        for rec in to_schedule:
            if rec.state in (PENDING, RESTARTING):
                manager.schedule_soon(rec)

    def owner_reconnected(self, conn: rpc.Connection, worker_id: bytes) -> None:
        manager = self.gcs.actors
        for rec in manager.actors.values():
            if rec.owner is None and rec.owner_wid == worker_id and rec.state != DEAD:
                rec.owner = conn
                if "owner_watch" not in conn.state:
                    conn.state["owner_watch"] = True
                    conn.on_close.append(manager.owner_died)

    def _deadline(self) -> None:
        manager = self.gcs.actors
        logger.info("reconnect period over: settling actors whose node or owner is gone")
        self._waiting_for_nodes = False
        for node_id in list(self._nodes_to_return):
            # Into the view first, so that the raylets that knew it hear of its death.
            self.gcs.view.node_added(self.gcs.nodes[node_id], node_id)
            self.gcs.node_dead(node_id, "the node did not reconnect after the GCS restarted")
        for rec in list(manager.actors.values()):
            if rec.state == ALIVE and (rec.node_id is None or rec.node_id not in self.gcs.raylets):
                manager.retry_or_die(rec, "its node did not reconnect after the GCS restarted")
            elif rec.owner is None and not rec.detached and rec.state != DEAD:
                manager.kill(rec, True, "The actor's owner died.")
        to_schedule, self._to_schedule = self._to_schedule, []
        for rec in to_schedule:
            if rec.state in (PENDING, RESTARTING):
                manager.schedule_soon(rec)  # no node came back: it dies there


def kv_key(ns: str, key: bytes) -> bytes:
    return ns.encode() + b"\0" + key


def _unpack_kv_key(packed: bytes) -> tuple[str, bytes]:
    ns, _, key = packed.partition(b"\0")
    return ns.decode(), key
