"""The raylet service: grants worker leases against the node's resources.

Lease protocol (owner <-> raylet):
1. ``request_lease {res, env}``: answered when a worker with that runtime env is
   idle and the resources are free, with ``{lid, wid, addr}``. Requests wait in
   FIFO order, but a later request that fits may pass an earlier one that does
   not. A request no node could ever satisfy stays queued and its owner is told
   once (``lease_infeasible``) so the user sees a warning naming it.
2. The owner pushes tasks straight to the worker, then ``return_lease [lid, dead]``.
3. A worker blocked in ``get`` hands back its CPUs (``worker_blocked``) so nested
   tasks can run, once the get has waited a while (_private/core/cpu_lending.py), and takes
   them again when it wakes (possibly overcommitting for a moment, as Ray does:
   until its CPUs are back within capacity, no request fits and no lease is granted).
If the worker dies, its lease ends here; if the owner dies, its leases return.
Before a request is granted here, the cluster policy may send it to another node
(``spillback.py``: the reply is ``{"spill": [node_id, ip, port]}``); the cluster
view it decides on comes from the GCS (``cluster_view`` notices).

The node's object store (capacity, spilling, restoring) is ``StoreService``
(store_service.py); the object handlers below delegate to it.
The memory monitor (``memory_monitor.py``) kills a leased worker when the node
runs low on memory.
"""

from __future__ import annotations

import asyncio
import importlib
import itertools
import logging
import os
import socket
import time
from typing import TYPE_CHECKING

from aioray.daemons._common import (
    install_signal_handlers,
    listening_socket,
    wait_first_connection,
    watch_lifeline,
)
from aioray.daemons.raylet.bundles import BundleService
from aioray.daemons.raylet.demand_report import DemandReporter
from aioray.daemons.raylet.gcs_link import GcsLink
from aioray.daemons.raylet.memory_monitor import MemoryMonitor
from aioray.daemons.raylet.metrics_export import NodeMetrics
from aioray.daemons.raylet.object_handlers import ObjectHandlers
from aioray.daemons.raylet.object_owners import ObjectOwners
from aioray.daemons.raylet.object_transfer import ObjectTransfer
from aioray.daemons.raylet.resources import NodeResources
from aioray.daemons.raylet.runtime_env_agent import RuntimeEnvAgent, setup_failed_reply
from aioray.daemons.raylet.scheduler import strategy_from_wire
from aioray.daemons.raylet.spillback import ANSWERED, NOWHERE, Spillback
from aioray.daemons.raylet.state_handlers import StateHandlers
from aioray.daemons.raylet.store_service import SpillConfig, StoreService
from aioray.daemons.raylet.worker_pool import WorkerHandle, WorkerPool, env_key_of

from aioray._private.core.bundle_resources import is_group_resource
from aioray._private.rpc import rpc
from aioray._private.wire import config
from aioray._private.wire.protocol import Buffer
from aioray._private.wire.schema import (
    Hello,
    LeaseReply,
    NodeEntry,
    RayletHello,
    RegisterWorker,
    RequestLease,
    ReturnLease,
    RuntimeEnv,
    Strategy,
)

if TYPE_CHECKING:
    from aioray._private.rpc.http_service import HttpService

logger = logging.getLogger(__name__)


class LeaseRequest:
    __slots__ = (
        "actor",
        "conn",
        "env",
        "env_key",
        "fut",
        "hold",
        "hops",
        "placed",
        "res",
        "retriable",
        "strategy",
        "warned",
    )

    def __init__(
        self,
        conn: rpc.Connection,
        res: dict[str, float],
        env: RuntimeEnv | None,
        hold: dict[str, float] | None = None,
        actor: bytes | None = None,
    ) -> None:
        self.conn = conn
        self.res = res  # must fit to grant
        self.hold = res if hold is None else hold  # held while the lease lives
        self.actor = actor
        self.env = env
        self.env_key = env_key_of(env)
        self.fut: asyncio.Future[LeaseReply] = asyncio.get_running_loop().create_future()
        self.warned = False
        self.strategy: Strategy = None  # scheduler.py's wire form; None is DEFAULT
        self.hops = 0  # times it was spilled before reaching this raylet
        self.placed = False  # the policy chose this node
        self.retriable = False  # the task it is requested for may be retried (memory monitor)


class Lease:
    __slots__ = (
        "actor",
        "blocked",
        "conn",
        "gpus",
        "granted_at",
        "lease_id",
        "res",
        "retriable",
        "worker",
    )

    def __init__(
        self, lease_id: int, worker: WorkerHandle, res: dict[str, float], conn: rpc.Connection
    ) -> None:
        self.lease_id = lease_id
        self.worker = worker
        self.res = res
        self.conn = conn
        self.blocked = False
        self.gpus: list[tuple[int, float]] = []
        self.actor: bytes | None = None
        self.retriable = False
        self.granted_at = time.monotonic()


class Raylet:
    def __init__(
        self,
        *,
        node_ip: str,
        gcs_address: tuple[str, int],
        resources: dict[str, float],
        object_store_memory: int,
        session_dir: str,
        head: bool,
        labels: dict[str, str],
        prestart: int,
        spill: SpillConfig | None = None,
        metrics_export_port: int = 0,
    ) -> None:
        self.node_id = os.urandom(16)
        self.node_ip = node_ip
        self.gcs_address = gcs_address
        self.resources = NodeResources(resources)
        self.object_store_memory = object_store_memory
        self.session_dir = session_dir
        self.session_id = ""
        self.head = head
        self.labels = labels
        self.prestart = prestart
        self.gcs: rpc.Connection | None = None
        self.bundles = BundleService(self)  # placement-group reservations
        self.metrics = NodeMetrics(self)  # Prometheus, on the node's HTTP service
        self.http: HttpService | None = None  # started after start-up: _serve_http
        self.metrics_export_port = metrics_export_port
        self.server_handlers = self._handlers()  # also serves other raylets' connections
        self.gcs_link = GcsLink(self)  # registration; reconnects after a GCS restart
        self.server = rpc.Server(
            self.server_handlers, hello_check=self._hello, on_connect=self._on_connect
        )
        self.owners = ObjectOwners()
        self.pool: WorkerPool | None = None
        self.requests: list[LeaseRequest] = []
        self.leases: dict[int, Lease] = {}
        self.lendings = 0  # leases whose worker lent its CPUs (blocked in get), ever
        self.store = StoreService(object_store_memory, spill or SpillConfig(), self._report_later)
        self.transfer = ObjectTransfer(self)
        self._lease_ids = itertools.count(1)
        self.spillback = Spillback(self.node_id, node_ip, 0)
        self._schedule_soon = False
        self._report_soon = False
        self._store_report_soon = False
        self._stopped = asyncio.Event()
        self.memory_monitor = MemoryMonitor(self, *config.memory_monitor_settings())
        self.demand = DemandReporter(self)  # queued shapes and idleness, for the autoscaler

    def __repr__(self) -> str:
        return (
            f"<Raylet node={self.node_id.hex()[:8]} leases={len(self.leases)} "
            f"queued={len(self.requests)} {self.store!r} {self.pool!r}>"
        )

    def _handlers(self) -> dict[str, rpc.Handler]:
        return {
            **rpc.handlers_of(self),
            **self.bundles.handlers(),
            "report_metrics": self.metrics.handle_report_metrics,
            **StateHandlers(self).handlers(),
            **ObjectHandlers(self).handlers(),
        }

    def _hello(self, body: Hello) -> RayletHello:
        # The cluster token was checked before this (rpc, auth).
        return {
            "node_id": self.node_id,
            "session_id": self.session_id,
            "session_dir": self.session_dir,
            "gcs_address": self.gcs_address,
            "object_store_memory": self.object_store_memory,
            "metrics_export_port": self.metrics_export_port,
        }

    # -- lifecycle -------------------------------------------------------------------------
    async def run(
        self,
        listen_fd: int | None,
        port: int,
        lifeline_fd: int | None,
        metrics_fd: int | None = None,
        forkserver_fd: int | None = None,
    ) -> None:
        """Serve until stopped. ``forkserver_fd``: the control channel of a fork server
        started beside this raylet (else it starts its own)."""
        watch_lifeline(lifeline_fd, self._stopped.set)
        install_signal_handlers(self._stopped.set)
        self.pool = WorkerPool(
            {"node_ip": self.node_ip, "raylet_port": 0, "session_dir": self.session_dir},
            self.session_dir,
            on_lost_start=lambda _: self._schedule(),  # start another in its place
        )
        self.pool.on_setup_failed = self._runtime_env_failed
        fork_server = asyncio.ensure_future(self.pool.start(forkserver_fd))
        sock = listening_socket(listen_fd, self.node_ip, port)
        if sock is None:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.node_ip, port))
            sock.setblocking(False)
        self.port = sock.getsockname()[1]
        self.spillback.local.port = self.port
        self.pool.worker_args["raylet_port"] = self.port
        msock = listening_socket(metrics_fd, self.node_ip, self.metrics_export_port)
        msock = msock or _bind(self.node_ip, self.metrics_export_port)
        self.metrics_export_port = msock.getsockname()[1]  # registered with the GCS below
        info = await self.gcs_link.connect()
        self.session_id = info["session_id"]
        self.session_dir = self.session_dir or info["session_dir"]
        self.pool.worker_args["session_dir"] = self.session_dir
        self.pool.set_agent(
            RuntimeEnvAgent.for_node(self.session_dir, self.node_id, self.gcs_link.call)
        )
        self.store.start(self.session_id, self.session_dir, self.node_id)
        await self.server.start(sock=sock)
        logger.info("raylet %s listening on %s:%d", self.node_id.hex()[:8], self.node_ip, self.port)
        await fork_server
        self.memory_monitor.start()
        self.demand.start()
        for _ in range(min(self.prestart, int(self.resources.total.get("CPU", 0)))):
            self.pool.spawn(None)
        http = asyncio.ensure_future(self._serve_http(msock))
        await self._stopped.wait()
        await asyncio.wait([http])
        await self.stop()

    async def _serve_http(self, sock: socket.socket) -> None:
        """Serve /metrics on the node's bound socket from its first connection on (until
        then connections wait in its backlog).

        aiohttp is imported only then, in a thread: its import (~0.1 s of CPU, ~8 MiB)
        would otherwise delay the raylet's first answer, and so every ``init()``, and a
        node nobody scrapes would carry it for nothing."""
        try:
            if not await wait_first_connection(sock, self._stopped):
                sock.close()
                return
            module = await asyncio.to_thread(
                importlib.import_module, "aioray._private.rpc.http_service"
            )
            if self.stopping:
                sock.close()
                return
            http = module.HttpService()
            http.add_routes(self.metrics.routes())
            await http.start(sock)
            self.http = http
        except Exception:
            logger.exception("cannot serve metrics on port %d", self.metrics_export_port)
            sock.close()

    def _runtime_env_failed(self, env_key: str, message: str) -> None:
        """The env cannot be set up here: its waiting lease requests fail with why."""
        for req in [r for r in self.requests if r.env_key == env_key]:
            self.requests.remove(req)
            if not req.fut.done():
                req.fut.set_result(setup_failed_reply(message))

    def handle_prepare_runtime_env(
        self, conn: rpc.Connection, env: RuntimeEnv, _: list[Buffer]
    ) -> None:
        """``eager_install``: prepare a job's env now, before its first task needs it."""
        assert self.pool is not None
        self.pool.prepare_eagerly(env)

    @property
    def stopping(self) -> bool:
        return self._stopped.is_set()

    def request_stop(self) -> None:
        self._stopped.set()

    def report_resources(self) -> None:
        self._report()

    async def stop(self) -> None:
        logger.info("raylet stopping")
        self.memory_monitor.stop()
        self.demand.stop()
        if self.gcs is not None and not self.gcs.is_closed:
            self.gcs.notify("node_stopping", [self.node_id, "the raylet was stopped"])
        for req in self.requests:
            if not req.fut.done():
                req.fut.set_result({"error": "the raylet is shutting down"})
        await self.server.stop()
        if self.http is not None:
            await self.http.stop()
        self.transfer.close()
        if self.pool is not None:
            await self.pool.stop()
        self.store.stop(every_segment=self.head)
        if self.gcs is not None:
            self.gcs.close()

    # -- connections --------------------------------------------------------------------------
    def handle_register_worker(
        self, conn: rpc.Connection, body: RegisterWorker, _: list[Buffer]
    ) -> bool:
        """``register_worker`` {worker_id, port} from a worker this raylet started -> True; the
        worker joins the pool (ValueError for an unknown worker id)."""
        assert self.pool is not None
        w = self.pool.register(body["worker_id"], body["port"], conn)
        if w is None:
            raise ValueError("unknown worker id")
        conn.state["worker"] = w
        conn.on_close.append(lambda _: self._worker_dead(w))
        self._schedule()
        return True

    def handle_register_client(self, conn: rpc.Connection, body: object, _: list[Buffer]) -> bool:
        """``register_client`` (any body) from a driver or owner -> True; its leases are returned if
        its connection closes."""
        conn.on_close.append(self._owner_gone)
        return True

    def _worker_dead(self, w: WorkerHandle) -> None:
        assert self.pool is not None
        self.pool.remove(w.worker_id)
        oom = self.memory_monitor.worker_dead(w)
        if w.lease_id is not None:
            lease = self.leases.pop(w.lease_id, None)
            if lease is not None:
                self._release_gpus(lease)
                if not lease.blocked:
                    self.resources.release(lease.res)
                if lease.actor is not None:
                    why = oom or f"worker pid {w.pid} died"
                    # Named by worker: the GCS ignores the death of a replaced incarnation.
                    self.gcs_link.notify("actor_worker_died", [lease.actor, w.worker_id, why])
                self._report()
        if not self._stopped.is_set():
            logger.info("worker %s (pid %d) exited", w.worker_id.hex()[:8], w.pid)
            self._schedule()

    def _owner_gone(self, conn: rpc.Connection) -> None:
        for req in [r for r in self.requests if r.conn is conn]:
            self.requests.remove(req)
        for lease in [x for x in self.leases.values() if x.conn is conn]:
            self._end_lease(lease.lease_id, worker_ok=True)
        self._schedule()

    # -- leases -----------------------------------------------------------------------------------
    def handle_request_lease(
        self, conn: rpc.Connection, body: RequestLease, _: list[Buffer]
    ) -> asyncio.Future[LeaseReply]:
        """``request_lease`` {res, env?, hold?, actor?, retriable?, ss?, hops?} -> once decided: a
        grant {lid, wid, addr, gpus?}, a spill {spill: [node id, ip, port], hops} to another
        node, or {error, unschedulable?, pg_removed?}."""
        # The GCS's actor leases outlive its connection: the GCS may restart (gcs_link).
        if "owner_watch" not in conn.state and conn is not self.gcs:
            conn.state["owner_watch"] = True
            conn.on_close.append(self._owner_gone)
        hold = body.get("hold")
        req = LeaseRequest(
            conn,
            {k: float(v) for k, v in body["res"].items()},
            body.get("env"),
            None if hold is None else {k: float(v) for k, v in hold.items()},
            body.get("actor"),
        )
        req.retriable = bool(body.get("retriable"))
        req.strategy = strategy_from_wire(body.get("ss"))
        req.hops = body.get("hops", 0)
        self.requests.append(req)
        self._schedule()
        self.demand.changed()
        return req.fut

    def handle_return_lease(self, conn: rpc.Connection, body: ReturnLease, _: list[Buffer]) -> None:
        """``return_lease`` [lease id, worker_dead] (notice, from the lessee): the lease ends; the
        worker goes back to the pool unless it is dead."""
        lease_id, worker_dead = body
        self._end_lease(lease_id, worker_ok=not worker_dead)
        self._schedule()

    def _end_lease(self, lease_id: int, worker_ok: bool) -> None:
        lease = self.leases.pop(lease_id, None)
        if lease is None:
            return
        if not lease.blocked:
            self.resources.release(lease.res)
        self._release_gpus(lease)
        self._report()
        w = lease.worker
        if lease.actor is not None:
            assert self.pool is not None
            self.pool.end(w, 1)  # an actor's worker holds its state: never reused
        elif worker_ok and w.conn is not None and not w.conn.is_closed and self.pool is not None:
            self.pool.push_idle(w)

    def _release_gpus(self, lease: Lease) -> None:
        if lease.gpus and not self.bundles.release_gpus(lease.lease_id, lease.gpus):
            self.resources.release_gpus(lease.gpus)

    def handle_worker_blocked(self, conn: rpc.Connection, blocked: bool, _: list[Buffer]) -> None:
        """``worker_blocked`` bool (notice, from a leased worker): it is blocked in get (True: lend
        its CPUs to other tasks) or runs again (False: take them back)."""
        w = conn.state.get("worker")
        lease = self.leases.get(w.lease_id) if w is not None and w.lease_id else None
        if lease is None or lease.blocked == blocked:
            return
        lease.blocked = blocked
        # A placement group's CPUs too, so nested tasks in one bundle cannot deadlock.
        cpu = {k: v for k, v in lease.res.items() if k == "CPU" or k.startswith("CPU_group_")}
        if blocked:
            self.lendings += 1
            self.resources.release(cpu)
        else:
            self.resources.acquire(cpu)
        self._report()
        self._schedule()

    def _schedule(self) -> None:
        if not self._schedule_soon:
            self._schedule_soon = True
            asyncio.get_running_loop().call_soon(self._run_scheduler)

    def _run_scheduler(self) -> None:
        self._schedule_soon = False
        assert self.pool is not None
        needed: dict[str, int] = {}
        waiting: list[dict[str, float]] = []
        self.spillback.begin_pass(self.resources)
        queued = len(self.requests)
        for req in list(self.requests):
            if req.fut.done():  # the owner went away
                self.requests.remove(req)
                continue
            where = self.spillback.decide(req)
            if where == ANSWERED:  # spilled to another node, or unschedulable
                self.requests.remove(req)
                continue
            if where == NOWHERE or not self.resources.feasible(req.res):
                if self.bundles.removed and self.bundles.refuse(req):
                    self.requests.remove(req)
                    continue
                if not req.warned:
                    req.warned = True
                    # A task waiting for its placement group is not infeasible (Ray: no warning).
                    if not req.conn.is_closed and not any(map(is_group_resource, req.res)):
                        req.conn.notify(
                            "lease_infeasible", {"res": req.res, "total": self.resources.total}
                        )
                continue
            if not self.resources.fits(req.res):
                continue
            if req.env_key and self.pool.agent is not None:
                failed = self.pool.agent.failure(req.env_key)
                if failed is not None:  # remembered: no new attempt for every task
                    self.requests.remove(req)
                    req.fut.set_result(setup_failed_reply(failed))
                    continue
            worker = self.pool.pop_idle(req.env_key)
            if worker is None:
                needed[req.env_key] = needed.get(req.env_key, 0) + 1
                # Held for this pass, so later requests do not each start a worker
                # for the same free CPUs (10 queued requests used to start 10).
                self.resources.acquire(req.res)
                waiting.append(req.res)
                continue
            self.requests.remove(req)
            self._grant(req, worker)
        for res in waiting:
            self.resources.release(res)
        if len(self.requests) != queued:
            self.demand.changed()
        for env_key, n in needed.items():
            missing = n - self.pool.starting.get(env_key, 0)
            env = next(r.env for r in self.requests if r.env_key == env_key)
            for _ in range(max(0, missing)):
                self.pool.spawn(env)

    def _grant(self, req: LeaseRequest, worker: WorkerHandle) -> None:
        lease_id = next(self._lease_ids)
        self.resources.acquire(req.hold)
        worker.lease_id = lease_id
        lease = self.leases[lease_id] = Lease(lease_id, worker, req.hold, req.conn)
        lease.actor = req.actor
        lease.retriable = req.retriable
        lease.gpus = self.resources.assign_gpus(req.res.get("GPU", 0.0))
        if not lease.gpus and self.bundles.gpu_pools:  # a placement group bundle's GPUs
            lease.gpus = self.bundles.assign_gpus(lease_id, req.res)
        req.fut.set_result(
            {
                "lid": lease_id,
                "wid": worker.worker_id,
                "addr": (self.node_ip, worker.port),
                "gpus": [i for i, _ in lease.gpus],
            }
        )
        self._report()

    def resources_changed(self) -> None:
        """The node's resources changed outside a lease (placement-group bundles)."""
        self._report()
        self._schedule()

    def _report(self) -> None:
        if not self._report_soon:
            self._report_soon = True
            asyncio.get_running_loop().call_soon(self._send_report)

    def _report_later(self) -> None:
        # Object store usage changes with every put: report it at most every
        # RESOURCE_REPORT_S instead of once per object.
        if not self._store_report_soon:
            self._store_report_soon = True
            asyncio.get_running_loop().call_later(config.RESOURCE_REPORT_S, self._store_changed)

    def _store_changed(self) -> None:
        self._store_report_soon = False
        self._report()

    def _send_report(self) -> None:
        self._report_soon = False
        if self.gcs is not None and not self.gcs.is_closed:
            avail = self.resources.snapshot()
            avail["object_store_memory"] = float(self.store.manager.available)
            # Totals are not reported: the GCS adds placement-group bundles to them itself.
            self.gcs.notify("report_resources", [self.node_id, avail])

    def handle_cluster_view(
        self, conn: rpc.Connection, entries: list[NodeEntry], _: list[Buffer]
    ) -> None:
        """The GCS's batched news of other nodes (resources, joins, deaths)."""
        joined, died = self.spillback.apply_view(entries)
        for dead in died:
            self.transfer.node_died(dead.node_id)
        # Owners here may have tasks or actors on a dead node whose connections stay
        # silent (a frozen or cut-off node): tell them, so they retry elsewhere. Drivers
        # connect to a new node's raylet to hear its workers' output.
        news = [["added", n.node_id, n.ip, n.port] for n in joined]
        news += [["dead", n.node_id, n.ip, n.port, self.spillback.ip_shared(n)] for n in died]
        for peer in self.server.connections if news else ():
            role = (peer.peer_info or {}).get("role")
            if role in ("driver", "worker") and not peer.is_closed:
                for event in news:
                    peer.notify("node_event", event)
        if self.requests:
            self._schedule()

    def handle_kill_actor_worker(self, conn: rpc.Connection, aid: bytes, _: list[Buffer]) -> None:
        """``kill_actor_worker`` aid (notice, from the GCS): end the worker hosting that actor
        here (told to exit, it sends its last task events first; SIGKILLed if it does not)."""
        assert self.pool is not None
        for lease in self.leases.values():
            if lease.actor == aid:
                self.pool.end(lease.worker, 1)

    def handle_actor_exiting(self, conn: rpc.Connection, aid: bytes, _: list[Buffer]) -> None:
        """``actor_exiting`` aid (notice, from the actor's worker): forwarded to the GCS with the
        worker id, before the worker's death is reported, so the actor is not restarted."""
        # Forwarded before the worker's death is reported: the GCS will not restart it.
        w = conn.state.get("worker")
        if w is not None:
            self.gcs_link.notify("actor_exiting", [aid, w.worker_id])

    # -- objects (their handlers: object_handlers.py) ------------------------------------
    def _on_connect(self, conn: rpc.Connection) -> None:
        conn.on_close.append(self._peer_gone)

    def _peer_gone(self, conn: rpc.Connection) -> None:
        self.store.pool.process_exited()  # its mappings are gone: held segments may be free
        owner = (conn.peer_info or {}).get("worker_id")
        if owner and not self._stopped.is_set():
            orphans = self.owners.owner_died(owner)
            if orphans:  # their owner died: nobody can read them any more, anywhere
                self.free_here(orphans)

    def free_here(self, oids: list[bytes]) -> None:
        """Free this node's copies, and (for its primaries) the copies pulled from here."""
        for oid in oids:
            self.owners.freed(oid)
        self.store.free_objects(oids)
        self.transfer.freed(oids)


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)  # scrapers wait here until the HTTP service takes the socket
    return sock
