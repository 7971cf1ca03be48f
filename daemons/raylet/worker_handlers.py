"""A raylet's clients coming and going: a worker registering (it joins the pool),
blocked in get (its CPUs lent to other tasks) and running again, exiting or dying
(its lease ends, an actor's death goes to the GCS), an actor's worker ended; a driver
or owner registering and leaving (its requests dropped, its leases returned: a worker
still running its task is ended)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from aioray.daemons.raylet.gcs_link import check_from_gcs

from aioray._private.rpc import rpc
from aioray._private.wire.protocol import Buffer
from aioray._private.wire.schema import RegisterWorker

if TYPE_CHECKING:
    from aioray.daemons.raylet.server import Raylet
    from aioray.daemons.raylet.worker_pool import WorkerHandle

logger = logging.getLogger("aioray.daemons.raylet.server")  # (where these lived: one log name)


class WorkerHandlers:
    def __init__(self, raylet: Raylet) -> None:
        self.raylet = raylet

    def handlers(self) -> dict[str, rpc.Handler]:
        """The messages about workers and owners this raylet answers, by name."""
        return {
            "register_worker": self.handle_register_worker,
            "register_client": self.handle_register_client,
            "worker_blocked": self.handle_worker_blocked,
            "kill_actor_worker": self.handle_kill_actor_worker,
            "actor_exiting": self.handle_actor_exiting,
        }

    def handle_register_worker(
        self, conn: rpc.Connection, body: RegisterWorker, _: list[Buffer]
    ) -> bool:
        """``register_worker`` {worker_id, port} from a worker this raylet started -> True; the
        worker joins the pool (ValueError for an unknown worker id). Once only: a peer that
        registers a worker again is refused (PermissionError), else it would take the
        worker's place (its leases' tasks sent to that peer, its death reported at its leaving)."""
        raylet = self.raylet
        assert raylet.pool is not None
        known = raylet.pool.workers.get(body["worker_id"])
        if known is not None and known.registered:
            raise PermissionError("register_worker: that worker is registered already")
        w = raylet.pool.register(body["worker_id"], body["port"], conn)
        if w is None:
            raise ValueError("unknown worker id")
        conn.state["worker"] = w
        conn.on_close.append(lambda _: self._worker_dead(w))
        raylet.schedule()
        return True

    def handle_register_client(self, conn: rpc.Connection, body: object, _: list[Buffer]) -> bool:
        """``register_client`` (any body) from a driver or owner -> True; its leases are returned if
        its connection closes."""
        conn.on_close.append(self.owner_gone)
        return True

    def _worker_dead(self, w: WorkerHandle) -> None:
        raylet = self.raylet
        assert raylet.pool is not None
        raylet.pool.remove(w.worker_id)
        oom = raylet.memory_monitor.worker_dead(w)
        if w.lease_id is not None:
            lease = raylet.leases.pop(w.lease_id, None)
            if lease is not None:
                raylet.release_gpus(lease)
                if not lease.blocked:
                    raylet.resources.release(lease.res)
                if lease.actor is not None:
                    why = oom or f"worker pid {w.pid} died"
                    # Named by worker: the GCS ignores the death of a replaced incarnation.
                    raylet.gcs_link.notify("actor_worker_died", [lease.actor, w.worker_id, why])
                raylet.report_resources()
        if not raylet.stopping:
            logger.info("worker %s (pid %d) exited", w.worker_id.hex()[:8], w.pid)
            raylet.schedule()

    def owner_gone(self, conn: rpc.Connection) -> None:
        """A driver's or owner's connection closed: drop its requests, end its leases (a
        worker still running the owner's task is ended, an idle one goes back to the pool)."""
        raylet = self.raylet
        for req in [r for r in raylet.requests if r.conn is conn]:
            raylet.requests.remove(req)
        for lease in [x for x in raylet.leases.values() if x.conn is conn]:
            raylet.end_lease(lease.lease_id, worker_ok=True, owner_dead=True)
        raylet.schedule()

    def handle_worker_blocked(self, conn: rpc.Connection, blocked: bool, _: list[Buffer]) -> None:
        """``worker_blocked`` bool (notice, from a leased worker): it is blocked in get (True: lend
        its CPUs to other tasks) or runs again (False: take them back)."""
        raylet = self.raylet
        w = conn.state.get("worker")
        lease = raylet.leases.get(w.lease_id) if w is not None and w.lease_id else None
        if lease is None or lease.blocked == blocked:
            return
        lease.blocked = blocked
        # A placement group's CPUs too, so nested tasks in one bundle cannot deadlock.
        cpu = {k: v for k, v in lease.res.items() if k == "CPU" or k.startswith("CPU_group_")}
        if blocked:
            raylet.lendings += 1
            raylet.resources.release(cpu)
        else:
            raylet.resources.acquire(cpu)
        raylet.report_resources()
        raylet.schedule()

    def handle_kill_actor_worker(self, conn: rpc.Connection, aid: bytes, _: list[Buffer]) -> None:
        """``kill_actor_worker`` aid (notice, from the GCS): end the worker hosting that actor
        here (told to exit, it sends its last task events first; SIGKILLed if it does not).
        From any other peer it is refused (PermissionError): only the GCS ends actors."""
        check_from_gcs(conn, "kill_actor_worker")
        raylet = self.raylet
        assert raylet.pool is not None
        for lease in raylet.leases.values():
            if lease.actor == aid:
                raylet.pool.end(lease.worker, 1)

    def handle_actor_exiting(self, conn: rpc.Connection, aid: bytes, _: list[Buffer]) -> None:
        """``actor_exiting`` aid (notice, from the actor's worker): forwarded to the GCS with the
        worker id, before the worker's death is reported, so the actor is not restarted."""
        # Forwarded before the worker's death is reported: the GCS will not restart it.
        w = conn.state.get("worker")
        if w is not None:
            self.raylet.gcs_link.notify("actor_exiting", [aid, w.worker_id])
