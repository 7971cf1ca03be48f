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

Its records are in leases.py; its workers and owners coming and going in
worker_handlers.py. The node's object store (capacity, spilling, restoring) is ``StoreService``
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
from typing import TYPE_CHECKING

from aioray.daemons._common import (
    install_signal_handlers,
    listening_socket,
    wait_first_connection,
    watch_lifeline,
)
from aioray.daemons.raylet.bundles import BundleService
from aioray.daemons.raylet.demand_report import DemandReporter
from aioray.daemons.raylet.gcs_link import GCS_LINK, GcsLink, check_from_gcs
from aioray.daemons.raylet.leases import Lease as Lease
from aioray.daemons.raylet.leases import LeaseRequest as LeaseRequest
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
from aioray.daemons.raylet.worker_handlers import WorkerHandlers
from aioray.daemons.raylet.worker_pool import WorkerHandle, WorkerPool

from aioray._private.core.bundle_resources import is_group_resource
from aioray._private.rpc import rpc
from aioray._private.wire import checks, config
from aioray._private.wire.protocol import Buffer
from aioray._private.wire.schema import (
    Hello,
    LeaseReply,
    NodeEntry,
    RayletHello,
    RequestLease,
    ReturnLease,
    RuntimeEnv,
)

if TYPE_CHECKING:
    from aioray._private.rpc.http_service import HttpService

logger = logging.getLogger(__name__)

# (an exact int: 3.0 or True would find lease 3 or 1 in the table all the same)
RETURN_LEASE_FIELDS: list[checks.Field] = [("lease id", int), ("worker died", bool)]


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
        self.clients = WorkerHandlers(self)  # workers and owners coming and going
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
            **self.clients.handlers(),
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
            on_lost_start=lambda _: self.schedule(),  # start another in its place
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

    # -- leases -----------------------------------------------------------------------------------
    def handle_request_lease(
        self, conn: rpc.Connection, body: RequestLease, _: list[Buffer]
    ) -> asyncio.Future[LeaseReply]:
        """``request_lease`` {res, env?, hold?, actor?, retriable?, ss?, hops?} -> once decided: a
        grant {lid, wid, addr, gpus?}, a spill {spill: [node id, ip, port], hops} to another
        node, or {error, unschedulable?, pg_removed?}."""
        # The GCS's actor leases outlive its connection: the GCS may restart (gcs_link).
        # (Its link is known by its mark, not as ``self.gcs``: that is set only once the
        # registration's answer is read, and the GCS may ask for a lease before that.)
        if "owner_watch" not in conn.state and not conn.state.get(GCS_LINK):
            conn.state["owner_watch"] = True
            conn.on_close.append(self.clients.owner_gone)
        res = checks.resources("request_lease", "res", body["res"])
        hold, env = body.get("hold"), body.get("env")
        if env is not None and type(env) is not dict:  # (the worker pool reads it as one)
            raise TypeError(f"request_lease: env must be a map or None, not {type(env).__name__}")
        req = LeaseRequest(
            conn,
            res,
            env,
            None if hold is None else checks.resources("request_lease", "hold", hold),
            body.get("actor"),
        )
        req.retriable = bool(body.get("retriable"))
        req.strategy = strategy_from_wire(body.get("ss"))
        req.hops = body.get("hops", 0)
        self.requests.append(req)
        self.schedule()
        self.demand.changed()
        return req.fut

    def handle_return_lease(self, conn: rpc.Connection, body: ReturnLease, _: list[Buffer]) -> None:
        """``return_lease`` [lease id, worker_dead] (notice, from the lessee): the lease ends; the
        worker goes back to the pool unless it is dead. Only the connection the lease was
        granted to returns it: from any other peer (another owner's lease, an actor's) the
        notice is refused and the lease goes on."""
        lease_id, worker_dead = checks.array("return_lease", body, RETURN_LEASE_FIELDS)
        lease = self.leases.get(lease_id)
        if lease is not None and lease.conn is not conn:
            raise PermissionError(f"lease {lease_id} was not granted to this connection")
        self.end_lease(lease_id, worker_ok=not worker_dead)
        self.schedule()

    def end_lease(self, lease_id: int, worker_ok: bool, owner_dead: bool = False) -> None:
        """A lease ends: its resources and GPUs come back; its worker is reused if it can be
        (``owner_dead``: if it runs none of the dead owner's tasks, worker_pool.reclaim)."""
        lease = self.leases.pop(lease_id, None)
        if lease is None:
            return
        if not lease.blocked:
            self.resources.release(lease.res)
        self.release_gpus(lease)
        self._report()
        w = lease.worker
        if lease.actor is not None:
            assert self.pool is not None
            self.pool.end(w, 1)  # an actor's worker holds its state: never reused
        elif owner_dead and self.pool is not None:
            self.pool.reclaim(w)
        elif worker_ok and w.conn is not None and not w.conn.is_closed and self.pool is not None:
            self.pool.push_idle(w)

    def release_gpus(self, lease: Lease) -> None:
        """Give back the GPUs a lease held (a placement group bundle's, or the node's)."""
        if lease.gpus and not self.bundles.release_gpus(lease.lease_id, lease.gpus):
            self.resources.release_gpus(lease.gpus)

    def schedule(self) -> None:
        """Run a scheduling pass soon (one per loop iteration, however many ask)."""
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
        self.schedule()

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
        """``cluster_view`` [node entries] (notice, from the GCS): its batched news of other
        nodes (resources, joins, deaths). From any other peer it is refused (PermissionError):
        a live node would be taken for dead, and the owners here told so."""
        check_from_gcs(conn, "cluster_view")
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
            self.schedule()

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
