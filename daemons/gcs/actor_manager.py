"""The GCS actor table: scheduling, creation, restarts, names and death.

An actor's life, driven here:

1. ``create_actor`` (from its owner) registers it (a taken name is refused;
   ``get_if_exists`` answers with the existing actor) and starts scheduling.
2. Scheduling asks a raylet for a dedicated worker lease (Ray's actor resources:
   ``res`` must fit to place it, ``hold`` is kept while it lives), then sends the
   creation spec to that worker, which runs ``__init__``. ALIVE at that address.
3. When the raylet reports the worker dead, the actor restarts (RESTARTING, then
   step 2 again) while ``max_restarts`` allows (-1: forever), unless the death
   was intentional (``exit_actor``, ``kill(no_restart=True)``). Otherwise DEAD.
   An exception in ``__init__`` is DEAD at once, with that error as the cause.
   A death (and an intentional exit) names the worker it happened to: one of an
   incarnation already replaced (its node's death restarted it first) is ignored;
   one read before the grant of that worker's lease is kept until the grant lands.
4. A non-detached actor dies with its owner (the owner's GCS connection closes).

Every change bumps ``version``; callers long-poll ``wait_actor [aid, version]``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from aioray.daemons.raylet.scheduler import UNSCHEDULABLE, strategy_from_wire

from aioray._private.rpc import rpc
from aioray._private.wire.protocol import Buffer
from aioray._private.wire.schema import (
    KILLED_BY_RAY_KILL,
    ActorExiting,
    ActorInfo,
    ActorMeta,
    ActorWorkerDied,
    Address,
    CreateActor,
    CreateActorReply,
    KillActor,
    LeaseReply,
    ListNamedActors,
    NamedActor,
    NameNamespace,
    PushReply,
    RequestLease,
    TaskSpec,
    WaitActor,
)

if TYPE_CHECKING:
    from aioray.daemons.gcs.server import GcsServer

logger = logging.getLogger(__name__)

# A raylet back after a GCS restart delivers the deaths and exits that waited before it
# registers again (so they land before the GCS settles its actors): kept per connection
# until it registers, at most this many.
EARLY_NOTICES = "early_actor_notices"
MAX_EARLY_NOTICES = 1000

PENDING, ALIVE, RESTARTING, DEAD = "PENDING_CREATION", "ALIVE", "RESTARTING", "DEAD"
MAX_PLACEMENT_ATTEMPTS = 10


class ActorRecord:
    def __init__(
        self, body: CreateActor, buffers: list[Buffer], owner: rpc.Connection | None
    ) -> None:
        self.aid: bytes = body["aid"]
        self.spec: TaskSpec = body["spec"]
        self.buffers = buffers
        self.name: str | None = body.get("name")
        self.namespace: str = body.get("ns") or ""
        self.detached: bool = body.get("detached", False)
        self.max_restarts: int = body.get("max_restarts", 0)
        self.res: dict[str, float] = body.get("res", {})
        self.hold: dict[str, float] = body.get("hold", {})
        self.env = body.get("env")
        self.strategy = strategy_from_wire(body.get("ss"))
        self.owner_node: bytes | None = body.get("node")
        self.unschedulable = False
        self.env_failed = False  # dead because its runtime env failed to set up
        self.meta: ActorMeta = body["meta"]
        self.owner = owner  # None: restored after a GCS restart, until the owner reconnects
        self.owner_wid: bytes | None = (owner.peer_info or {}).get("worker_id") if owner else None
        self.state = PENDING
        self.version = 0
        self.addr: Address | None = None
        self.node_id: bytes | None = None
        self.worker_id: bytes | None = None  # the current incarnation's worker, once leased
        # Deaths reported while a lease is being granted, by worker: read before the grant
        # (the raylet's notice can overtake its reply, or be read with it), still news.
        self.early_deaths: dict[bytes, str] = {}
        self.num_restarts = 0
        self.created = False  # ALIVE once: its creation task FINISHED
        self.death = ""
        self.no_restart = False  # an intentional exit or kill(no_restart=True)
        self.waiters: list[asyncio.Future[ActorInfo]] = []
        self.pid = 0
        self.gpus: list[int] = []

    def info(self) -> ActorInfo:
        return {
            "aid": self.aid,
            "state": self.state,
            "version": self.version,
            "addr": self.addr,
            "death": self.death,
            "meta": self.meta,
            "name": self.name,
            "namespace": self.namespace,
            "pid": self.pid,
            "num_restarts": self.num_restarts,
            "unschedulable": self.unschedulable,
            "runtime_env_failed": self.env_failed,
            "node_id": self.node_id,
        }


class ActorManager:
    def __init__(self, gcs: GcsServer) -> None:
        self.gcs = gcs
        self.actors: dict[bytes, ActorRecord] = {}
        self.names: dict[tuple[str, str], bytes] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        alive = sum(a.state == ALIVE for a in self.actors.values())
        return f"<ActorManager actors={len(self.actors)} alive={alive} named={len(self.names)}>"

    def handlers(self) -> dict[str, rpc.Handler]:
        return {
            "create_actor": self.handle_create_actor,
            "wait_actor": self.handle_wait_actor,
            "kill_actor": self.handle_kill_actor,
            "actor_worker_died": self.handle_actor_worker_died,
            "actor_exiting": self.handle_actor_exiting,
            "get_named_actor": self.handle_get_named_actor,
            "list_named_actors": self.handle_list_named_actors,
            "list_actors": self.handle_list_actors,
        }

    # -- 1. registration -------------------------------------------------------------------
    def handle_create_actor(
        self, conn: rpc.Connection, body: CreateActor, bufs: list[Buffer]
    ) -> CreateActorReply:
        """``create_actor`` {aid, spec, name?, ns?, get_if_exists?, detached, ...} + argument
        buffers, from the owner -> {aid, meta} once registered (scheduling goes on), or {error}
        if the name is taken, or the actor id is (a creation is sent once: another with the
        same id, from any peer, would take over the actor and kill it with its connection)."""
        aid = body["aid"]
        if type(aid) is not bytes:
            raise TypeError(f"create_actor: aid must be bytes, not {type(aid).__name__}")
        if aid in self.actors:
            return {"error": f"an actor with id {aid.hex()} was already created"}
        name, ns = body.get("name"), body.get("ns") or ""
        if name:
            existing = self.names.get((ns, name))
            if existing is not None and self.actors[existing].state != DEAD:
                if body.get("get_if_exists"):
                    rec = self.actors[existing]
                    return {"aid": rec.aid, "meta": rec.meta}
                return {
                    "error": f"The name {name} (namespace={ns}) is already taken. Please use "
                    "a different name or get the existing actor using "
                    f"ray.get_actor('{name}', namespace='{ns}')",
                    "exists": True,
                }
        rec = ActorRecord(body, list(bufs), conn)
        self.actors[rec.aid] = rec
        if name:
            self.names[(ns, name)] = rec.aid
        if "owner_watch" not in conn.state:
            conn.state["owner_watch"] = True
            conn.on_close.append(self.owner_died)
        self.gcs.persistence.actor_created(rec, body)
        self.schedule_soon(rec)
        return {"aid": rec.aid, "meta": rec.meta}

    def schedule_soon(self, rec: ActorRecord) -> None:
        """Lease a worker for the actor and create it there, in a task of its own."""
        self._spawn(self._schedule(rec))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- 2. scheduling and creation --------------------------------------------------------
    async def _lease(self, rec: ActorRecord) -> tuple[rpc.Connection, LeaseReply] | None:
        """A worker lease on the node the policy picks (following spills); None: dead."""
        for _ in range(MAX_PLACEMENT_ATTEMPTS):
            if not self.gcs.raylets and self.gcs.persistence.defer(rec):
                return None  # a restarted GCS waits for its nodes to re-register
            decision = self.gcs.view.pick(rec.res, rec.strategy, rec.owner_node)
            if decision.kind == UNSCHEDULABLE:
                rec.unschedulable = rec.no_restart = True
                self._set_dead(rec, decision.reason)
                return None
            body: RequestLease = {
                "res": rec.res,
                "hold": rec.hold,
                "env": rec.env,
                "actor": rec.aid,
            }
            if rec.strategy is not None:
                body["ss"] = rec.strategy
            if decision.node is not None:  # placed: that raylet grants it or waits for room
                raylet = self.gcs.raylet_conn(decision.node.node_id)
                body["hops"] = 1
                self.gcs.view.deduct(decision.node.node_id, rec.hold)
            else:  # infeasible now: wait at a raylet, which warns and spills once a node fits
                raylet = self.gcs.raylet_conn(rec.owner_node or b"") or next(
                    iter(self.gcs.raylets.values()), None
                )
            try:
                while raylet is not None:
                    lease: LeaseReply = await raylet.call("request_lease", body)
                    if "error" in lease and not lease.get("unschedulable"):
                        raise ConnectionError(lease["error"])  # that raylet is stopping
                    if "spill" not in lease:
                        return raylet, lease
                    body["hops"] = lease["hops"]
                    raylet = self.gcs.raylet_conn(lease["spill"][0])
            except ConnectionError:
                continue  # that node died first: place it again
            if not self.gcs.raylets:
                break
        self._set_dead(rec, "No alive node can host the actor.")
        return None

    async def _schedule(self, rec: ActorRecord) -> None:
        placed = await self._lease(rec)
        if placed is None:
            return
        raylet, lease = placed
        if "error" in lease or rec.state == DEAD:
            if rec.state != DEAD:
                rec.unschedulable = bool(lease.get("unschedulable"))
                rec.env_failed = bool(lease.get("runtime_env_setup_failed"))
                why = "its runtime env could not be set up" if rec.env_failed else ""
                self._set_dead(
                    rec,
                    f"The actor could not be scheduled{': ' + why if why else ''}: "
                    f"{lease.get('error')}",
                )
            elif "lid" in lease:
                raylet.notify("kill_actor_worker", rec.aid)
            return
        host, port = lease["addr"]
        rec.node_id = self.gcs.node_of(raylet)  # from here its node's death restarts it
        rec.worker_id = lease["wid"]  # and from here this worker's death does
        early, rec.early_deaths = rec.early_deaths, {}
        if rec.worker_id in early:  # it died as it was granted: not a worker to create on
            self.retry_or_die(rec, early[rec.worker_id])
            return
        spec: TaskSpec = {**rec.spec, "gpu": lease.get("gpus", []), "restarts": rec.num_restarts}
        try:
            worker, _ = await rpc.connect(host, port, hello={"role": "gcs"}, name="actor worker")
            body: PushReply
            body, bufs = await worker.call_full("create_actor", spec, rec.buffers)
            worker.close()
        except (ConnectionError, rpc.RpcError) as e:
            logger.warning("creating actor %s failed: %s", rec.aid.hex()[:8], e)
            return  # the raylet reports the worker's death; restart logic runs from there
        if body.get("error"):
            # (here: the GCS loads the unpickler, cloudpickle with it, only if it needs it)
            from aioray._private.wire import serialization

            err = serialization.deserialize(bufs[0], bufs[1:])
            rec.no_restart = True
            self._set_dead(
                rec,
                f"The actor died because of an error raised in its creation task: {err}",
                "TASK_EXECUTION_EXCEPTION",
            )
            raylet.notify("kill_actor_worker", rec.aid)
            return
        if rec.state == DEAD:  # killed while being created
            raylet.notify("kill_actor_worker", rec.aid)
            return
        rec.addr = (host, port, lease["wid"])
        rec.gpus = lease.get("gpus", [])
        rec.pid = body.get("pid", 0)
        if not rec.created:
            rec.created = True
            self.gcs.state.creation_ended(rec.spec, None)
        self._set_state(rec, ALIVE)

    # -- 3. death and restarts -------------------------------------------------------------
    def handle_actor_worker_died(
        self, conn: rpc.Connection, body: ActorWorkerDied, _: list[Buffer]
    ) -> None:
        """``actor_worker_died`` [aid, worker id, reason] (notice, from a raylet): the actor's
        worker died; restart it while max_restarts allows, else it is DEAD. Only that node's
        raylet reports it (PermissionError from any other peer)."""
        aid, worker_id, reason = body
        node = self._raylet_node(conn, "actor_worker_died", body)
        if node is None:
            return
        rec = self.actors.get(aid)
        # Why the worker id: a node that stops on purpose says so (``node_stopping``,
        # which restarts its actors at once) before it stops its workers, whose deaths
        # it reports after. Applied to the record already restarting, such a death
        # counted twice and used up the next restart (issue 14).
        if rec is None or rec.state == DEAD:
            return
        if worker_id == rec.worker_id:
            self._check_node(rec, node, "actor_worker_died")
            self.retry_or_die(rec, reason)
        elif rec.worker_id is None:  # its lease may be on its way here: see _schedule
            rec.early_deaths[worker_id] = reason

    def handle_actor_exiting(
        self, conn: rpc.Connection, body: ActorExiting, _: list[Buffer]
    ) -> None:
        """``actor_exiting`` [aid, worker id] (notice, from a raylet): the actor is exiting on
        purpose (exit_actor, __ray_terminate__): it is not restarted. Only that node's raylet
        reports it (PermissionError from any other peer)."""
        aid, worker_id = body
        node = self._raylet_node(conn, "actor_exiting", body)
        if node is None:
            return
        rec = self.actors.get(aid)
        if rec is not None and worker_id == rec.worker_id:  # not a replaced incarnation
            self._check_node(rec, node, "actor_exiting")
            rec.no_restart = True
            rec.death = "The actor exited intentionally (exit_actor or __ray_terminate__)."

    def _raylet_node(self, conn: rpc.Connection, method: str, body: Any) -> bytes | None:
        """The node whose raylet registered on ``conn``; None if none has yet: the notice is
        then kept until one does (``raylet_registered``), refused past MAX_EARLY_NOTICES."""
        node = self.gcs.node_of(conn)
        if node is None:
            early = conn.state.setdefault(EARLY_NOTICES, [])
            if len(early) >= MAX_EARLY_NOTICES:
                raise PermissionError(f"{method} is for a registered raylet to send")
            early.append((method, body))
        return node

    @staticmethod
    def _check_node(rec: ActorRecord, node: bytes, method: str) -> None:
        if rec.node_id != node:  # a raylet speaks only of the workers of its own node
            raise PermissionError(f"{method} is for the actor's own raylet to send")

    def raylet_registered(self, conn: rpc.Connection) -> None:
        """``conn`` registered its node: apply the deaths and exits it sent before."""
        handlers = self.handlers()
        for method, body in conn.state.pop(EARLY_NOTICES, []):
            try:
                handlers[method](conn, body, [])
            except Exception as e:  # (one refused notice does not undo the registration)
                logger.warning("%s sent before its registration refused: %s", method, e)

    def retry_or_die(self, rec: ActorRecord, reason: str, death: str = "") -> None:
        """The actor's worker or node is gone: restart it while it may, else it is DEAD."""
        can_restart = rec.max_restarts == -1 or rec.num_restarts < rec.max_restarts
        if rec.no_restart or not can_restart:
            self._set_dead(rec, rec.death or death or f"The actor died unexpectedly: {reason}")
            return
        rec.num_restarts += 1
        rec.addr = None
        rec.node_id = None
        rec.worker_id = None  # news of the old worker concerns a replaced incarnation
        logger.info("restarting actor %s (%d)", rec.aid.hex()[:8], rec.num_restarts)
        self._set_state(rec, RESTARTING)
        self.schedule_soon(rec)

    def handle_kill_actor(self, conn: rpc.Connection, body: KillActor, _: list[Buffer]) -> bool:
        """``kill_actor`` [aid, no_restart] -> True if the actor was alive and is being killed
        (ray.kill), False if unknown or dead."""
        aid, no_restart = body
        rec = self.actors.get(aid)
        if rec is None or rec.state == DEAD:
            return False
        self.kill(rec, no_restart, KILLED_BY_RAY_KILL)
        return True

    def kill(self, rec: ActorRecord, no_restart: bool, why: str) -> None:
        """Kill the actor's worker (``no_restart``: for good, DEAD with ``why``)."""
        if no_restart:
            rec.no_restart = True
            rec.death = why
        if rec.state in (ALIVE,) and rec.node_id is not None:
            raylet = self.gcs.raylet_conn(rec.node_id)
            if raylet is not None:
                raylet.notify("kill_actor_worker", rec.aid)
                return
        if no_restart:
            self._set_dead(rec, why)

    def owner_died(self, conn: rpc.Connection) -> None:
        """An owner's connection closed: its non-detached actors die with it."""
        for rec in list(self.actors.values()):
            if rec.owner is conn and not rec.detached and rec.state != DEAD:
                self.kill(rec, True, "The actor's owner died.")

    def _set_dead(
        self, rec: ActorRecord, death: str, error_type: str = "ACTOR_CREATION_FAILED"
    ) -> None:
        """The actor is DEAD; one that never became ALIVE failed its creation task with
        ``error_type`` (Ray's: ACTOR_CREATION_FAILED, unless ``__init__`` raised)."""
        if not rec.created and rec.state != DEAD:
            rec.created = True  # (its creation task's outcome is recorded once)
            self.gcs.state.creation_ended(rec.spec, (error_type, death))
        rec.death = death
        if rec.name and self.names.get((rec.namespace, rec.name)) == rec.aid:
            del self.names[(rec.namespace, rec.name)]
        self._set_state(rec, DEAD)
        rec.buffers = []  # the creation arguments are no longer needed

    def _set_state(self, rec: ActorRecord, state: str) -> None:
        rec.state = state
        rec.version += 1
        self.gcs.persistence.actor_changed(rec)
        waiters, rec.waiters = rec.waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(rec.info())

    def node_died(self, node_id: bytes) -> None:
        for rec in list(self.actors.values()):
            if rec.node_id == node_id and rec.state in (ALIVE, PENDING, RESTARTING):
                self.retry_or_die(rec, "its node died", "The actor died because its node has died.")

    # -- queries ---------------------------------------------------------------------------
    def handle_wait_actor(
        self, conn: rpc.Connection, body: WaitActor, _: list[Buffer]
    ) -> ActorInfo | asyncio.Future[ActorInfo]:
        """``wait_actor`` [aid, version] -> the actor's info {aid, state, version, addr?, death?}
        once its version is past ``version`` (a long poll; at once if DEAD or unknown)."""
        aid, version = body
        rec = self.actors.get(aid)
        if rec is None:
            return {"aid": aid, "state": DEAD, "version": version + 1, "death": "Unknown actor."}
        if rec.version > version or rec.state == DEAD:
            return rec.info()
        fut: asyncio.Future[ActorInfo] = asyncio.get_running_loop().create_future()
        rec.waiters.append(fut)
        return fut

    def handle_get_named_actor(
        self, conn: rpc.Connection, body: NameNamespace, _: list[Buffer]
    ) -> CreateActorReply | None:
        """``get_named_actor`` [name, namespace] -> {aid, meta} of the live actor of that name, or
        None."""
        name, ns = body
        aid = self.names.get((ns, name))
        if aid is None:
            return None
        rec = self.actors[aid]
        return {"aid": aid, "meta": rec.meta}

    def handle_list_named_actors(
        self, conn: rpc.Connection, body: ListNamedActors, _: list[Buffer]
    ) -> list[NamedActor]:
        """``list_named_actors`` [namespace, all_namespaces] -> [{name, namespace}] of the named
        actors not dead."""
        ns, all_namespaces = body
        return [
            {"name": name, "namespace": space}
            for (space, name), aid in self.names.items()
            if (all_namespaces or space == ns) and self.actors[aid].state != DEAD
        ]

    def handle_list_actors(
        self, conn: rpc.Connection, body: None, _: list[Buffer]
    ) -> list[ActorInfo]:
        """``list_actors`` (no body) -> every actor's info, dead ones too."""
        return [rec.info() for rec in self.actors.values()]
