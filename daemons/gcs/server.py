"""The GCS service: node table, jobs, internal key-value store.

One per cluster. Raylets register their node and report resources; drivers
register jobs and query cluster state. A node whose connection drops is marked
dead at once (its raylet is gone), one that stops heartbeating after a timeout
(``node_health.py``). The resource view goes out to the raylets from
``cluster_view.py``. The actor table, placement groups and pub/sub hang off this
service in their own modules. Durable tables are written through to SQLite in the
session directory (``store.py``); a GCS restarted on the same session directory
recovers them (``recovery.py``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import Any

from aioray.daemons._common import install_signal_handlers, listening_socket, watch_lifeline
from aioray.daemons.gcs.actor_manager import ActorManager
from aioray.daemons.gcs.cluster_view import ClusterViewPublisher
from aioray.daemons.gcs.dashboard_process import DashboardProcess
from aioray.daemons.gcs.demand import DemandTable
from aioray.daemons.gcs.metrics_view import MetricsView
from aioray.daemons.gcs.node_health import NodeHealth
from aioray.daemons.gcs.placement_groups import PlacementGroupManager
from aioray.daemons.gcs.recovery import Persistence, kv_key
from aioray.daemons.gcs.runtime_env_packages import RuntimeEnvPackages
from aioray.daemons.gcs.state_service import StateService
from aioray.daemons.gcs.store import GcsStore

from aioray._private.rpc import rpc
from aioray._private.wire import checks, config
from aioray._private.wire.job_records import DASHBOARD_KV
from aioray._private.wire.protocol import Buffer
from aioray._private.wire.schema import (
    GcsHello,
    Hello,
    KvKey,
    KvPut,
    LeaseInfeasible,
    NodeStopping,
    RegisterJob,
    RegisterJobReply,
    RegisterNode,
    RegisterNodeReply,
    ReportResources,
)

logger = logging.getLogger(__name__)

# The KV store's bodies (schema.KvPut, schema.KvKey), checked before anything is stored:
# a value of another type would be handed to every later reader.
KV_PUT_FIELDS: list[checks.Field] = [
    ("namespace", str),
    ("key", bytes),
    ("value", bytes),
    ("overwrite", bool),
]
KV_KEY_FIELDS: list[checks.Field] = [("namespace", str), ("key", bytes)]
KV_PREFIX_FIELDS: list[checks.Field] = [("namespace", str), ("prefix", bytes)]


class GcsServer:
    def __init__(self, session_dir: str, session_id: str) -> None:
        self.session_dir = session_dir
        self.nodes: dict[bytes, dict[str, Any]] = {}
        self.next_job = 1
        self.kv: dict[str, dict[bytes, bytes]] = {}
        self.raylets: dict[bytes, rpc.Connection] = {}
        self.actors = ActorManager(self)
        self.view = ClusterViewPublisher(self)
        self.health = NodeHealth(self)
        self.metrics = MetricsView(self)  # figures for the head's exporter; file_sd
        self.store = GcsStore(session_dir)
        self.persistence = Persistence(self, self.store)
        self.session_id = self.persistence.restore() or session_id or os.urandom(4).hex()
        self.placement_groups = PlacementGroupManager(self)
        self.demand = DemandTable(self)  # for the autoscaler
        self.placement_groups.listeners.append(
            lambda rec: self.store.put("placement_groups", rec["id"], rec)
        )
        self.state = StateService(self)  # task events and the State API
        self.runtime_envs = RuntimeEnvPackages(self)
        handlers = {
            **rpc.handlers_of(self),
            **self.state.handlers(),
            **self.actors.handlers(),
            **self.placement_groups.handlers(),
            **self.metrics.handlers(),
            **self.runtime_envs.handlers(),
            **self.demand.handlers(),
        }
        self.server = rpc.Server(handlers, hello_check=self._hello)
        self._stopped = asyncio.Event()

    def __repr__(self) -> str:
        alive = sum(n["Alive"] for n in self.nodes.values())
        return f"<GcsServer nodes={alive}/{len(self.nodes)} jobs={self.next_job - 1}>"

    def _hello(self, body: Hello) -> GcsHello:
        # The cluster token was checked before this (rpc, auth).
        return {"session_id": self.session_id, "session_dir": self.session_dir}

    async def run(
        self,
        host: str,
        port: int,
        listen_fd: int | None,
        lifeline_fd: int | None,
        dashboard_fd: int | None = None,
    ) -> None:
        """Serve until the lifeline closes or SIGTERM. ``dashboard_fd``: the dashboard's
        listening socket, which starts the dashboard when first connected to."""
        await self.server.start(host, port, sock=listening_socket(listen_fd, host, port))
        logger.info("GCS listening on %s:%d", self.server.host, self.server.port)
        dashboard = None  # it runs until we stop, and stops the dashboard if it started it
        if dashboard_fd is not None:
            address = f"{self.server.host}:{self.server.port}"
            sock = socket.socket(fileno=dashboard_fd)
            # Where clients given only this GCS's address find the dashboard (Ray's key:
            # the job SDK reads it), in memory only: a restarted GCS writes it again.
            dash_host, dash_port = sock.getsockname()[:2]
            self.kv.setdefault(DASHBOARD_KV[0], {})[DASHBOARD_KV[1]] = (
                f"{dash_host}:{dash_port}".encode()
            )
            starter = DashboardProcess(sock, address, self.session_dir, lifeline_fd)
            dashboard = asyncio.ensure_future(starter.run(self._stopped))
        self.persistence.save_session(self.session_id, self.session_dir)
        self.persistence.start()
        if self.persistence.placement_groups:  # a restart: take the saved groups back
            self.placement_groups.load(list(self.persistence.placement_groups.values()))
        watch_lifeline(lifeline_fd, self._stopped.set)
        install_signal_handlers(self._stopped.set)
        await self._stopped.wait()
        logger.info("GCS stopping")
        if dashboard is not None:
            await dashboard
        self.health.stop()
        await self.server.stop()
        self.store.close()

    # -- nodes ----------------------------------------------------------------------------
    def handle_register_node(
        self, conn: rpc.Connection, body: RegisterNode, _: list[Buffer]
    ) -> RegisterNodeReply:
        """``register_node`` {node_id, ip, port, resources, hostname?, labels?, head?, actors?} from
        a raylet -> {session_id, session_dir}, or {refused} for a node already declared dead. The
        node joins the cluster view."""
        node_id = body["node_id"]
        known = self.nodes.get(node_id)
        if known is not None and not known["Alive"]:  # a dead node never comes back as itself
            why = known.get("DeathReason", "")
            return {"refused": f"node {node_id.hex()[:8]} was declared dead ({why})"}
        self.nodes[node_id] = {
            "NodeID": node_id.hex(),
            "Alive": True,
            "NodeManagerAddress": body["ip"],
            "NodeManagerPort": body["port"],
            "MetricsExportPort": body.get("metrics_export_port", 0),
            "NodeManagerHostname": body.get("hostname", ""),
            "NodeName": body["ip"],
            "Resources": body["resources"],
            "Available": dict(body["resources"]),
            "Labels": body.get("labels", {}),
            "IsHead": body.get("head", False),
            "StartTime": time.time(),
            "alive": True,
        }
        self.raylets[node_id] = conn
        conn.on_close.append(
            lambda _: self.node_dead(node_id, "the raylet died (its connection to the GCS dropped)")
        )
        self.persistence.node_changed(node_id, self.nodes[node_id])
        self.view.node_added(self.nodes[node_id], node_id)
        self.health.watch(node_id)
        self.placement_groups.kick()  # a pending group may fit on the new node
        logger.info("node %s registered at %s:%s", node_id.hex()[:8], body["ip"], body["port"])
        self.actors.raylet_registered(conn)  # (before its actors are settled)
        self.persistence.reconcile_node(node_id, body.get("actors"))
        self.metrics.nodes_changed()
        return {"session_id": self.session_id, "session_dir": self.session_dir}

    def node_dead(self, node_id: bytes, why: str, expected: bool = False) -> None:
        node = self.nodes.get(node_id)
        if node is not None and node["Alive"]:
            node["Alive"] = node["alive"] = False
            node["Available"] = {}
            # Ray's NodeDeathInfo.Reason: 1 EXPECTED_TERMINATION, 2 UNEXPECTED_TERMINATION.
            node["DeathReason"] = 1 if expected else 2
            node["DeathReasonMessage"] = why
            node["EndTime"] = time.time()
            self.persistence.node_changed(node_id, node)
            self.raylets.pop(node_id, None)
            self.health.forget(node_id)
            logger.warning("node %s is dead (%s)", node_id.hex()[:8], why)
            self.view.node_dead(node_id)
            self.demand.node_dead(node_id)
            self.actors.node_died(node_id)
            self.placement_groups.node_died(node_id)
            self.metrics.nodes_changed()

    def raylet_conn(self, node_id: bytes) -> rpc.Connection | None:
        return self.raylets.get(node_id)

    def check_from_raylet_of(self, conn: rpc.Connection, node_id: bytes, method: str) -> None:
        """Refuse ``method`` (PermissionError) unless ``conn`` is the connection that node's
        raylet registered on: what only a node's raylet may say of it (it stops, its
        resources) is refused from any other peer, however well formed."""
        if self.raylets.get(node_id) is not conn:
            raise PermissionError(f"{method} is for that node's own raylet to send")

    def node_of(self, conn: rpc.Connection) -> bytes | None:
        return next((n for n, c in self.raylets.items() if c is conn), None)

    def handle_lease_infeasible(
        self, conn: rpc.Connection, body: LeaseInfeasible, _: list[Buffer]
    ) -> None:
        """``lease_infeasible`` {res, total} (notice, from a raylet): an actor's lease cannot be
        placed; passed on to the owners of pending actors."""
        # An actor's lease cannot be placed: tell the owners of pending actors.
        for rec in self.actors.actors.values():
            if rec.state == "PENDING_CREATION" and rec.owner and not rec.owner.is_closed:
                rec.owner.notify("lease_infeasible", body)

    def handle_report_resources(
        self, conn: rpc.Connection, body: ReportResources, _: list[Buffer]
    ) -> None:
        """``report_resources`` [node id, available, total?] (notice, from a raylet): the node's
        free (and, when changed, total) resources; it also counts as a heartbeat. A live
        node's figures from any peer but its raylet are refused (PermissionError)."""
        node_id, available = body[:2]
        total = body[2] if len(body) > 2 else None  # only when the node's totals changed
        node = self.nodes.get(node_id)
        if node is not None and node["Alive"]:
            self.check_from_raylet_of(conn, node_id, "report_resources")
            node["Available"] = available
            if total is not None:
                node["Resources"] = total
            self.view.resources_changed(node_id, available, total)
            self.health.seen(node_id)
            self.placement_groups.resources_reported()

    def handle_node_stopping(
        self, conn: rpc.Connection, body: NodeStopping, _: list[Buffer]
    ) -> None:
        """``node_stopping`` [node id, reason] (notice, from that node's raylet): it stops on
        purpose (Ray: EXPECTED_TERMINATION) and is dead from now on. From any other peer it
        is refused (PermissionError): a live node would be declared dead for good."""
        node_id, why = body
        self.check_from_raylet_of(conn, node_id, "node_stopping")
        self.node_dead(node_id, why, expected=True)

    def handle_heartbeat(self, conn: rpc.Connection, node_id: bytes, _: list[Buffer]) -> None:
        """``heartbeat`` node id (notice, from that node's raylet): the node is alive
        (node_health). From any other peer it is refused (PermissionError): it would keep a
        hung node seen as alive."""
        self.check_from_raylet_of(conn, node_id, "heartbeat")
        self.health.seen(node_id)

    def handle_get_nodes(
        self, conn: rpc.Connection, body: None, _: list[Buffer]
    ) -> list[dict[str, Any]]:
        """``get_nodes`` (no body) -> every node's record (Ray's ``ray.nodes()`` fields), dead ones
        too."""
        return list(self.nodes.values())

    # -- jobs -----------------------------------------------------------------------------
    def handle_register_job(
        self, conn: rpc.Connection, body: RegisterJob, _: list[Buffer]
    ) -> RegisterJobReply:
        """``register_job`` {pid, ns?, ip?, cmd?, sid? (the job submission it runs)} from a driver
        -> {job_id (4 bytes), namespace} (an anonymous namespace if none was given)."""
        job = self.next_job
        self.next_job += 1
        # Like Ray, a job without a namespace gets an anonymous one of its own.
        namespace = body.get("ns") or f"anonymous-{os.urandom(8).hex()}"
        conn.state["job_id"] = job.to_bytes(4, "little")  # its placement groups die with it
        self.metrics.job_started(conn, conn.state["job_id"])
        info = {"pid": body.get("pid", 0), "namespace": namespace, "start": time.time()}
        self.persistence.job_registered(conn.state["job_id"], info)
        driver = {
            "ip": body.get("ip", ""),
            "sid": body.get("sid"),
            "entrypoint": body.get("cmd", ""),
        }
        self.state.job_started(conn.state["job_id"], conn, {**info, **driver})
        return {
            "job_id": conn.state["job_id"],
            "namespace": namespace,
            "task_events_ms": config.TASK_EVENTS_REPORT_INTERVAL_MS,
        }

    # -- internal key-value store -----------------------------------------------------------
    def handle_kv_put(self, conn: rpc.Connection, body: KvPut, _: list[Buffer]) -> bool:
        """``kv_put`` [namespace, key, value, overwrite] -> True if stored, False if the key exists
        and overwrite is false."""
        ns, key, value, overwrite = checks.array("kv_put", body, KV_PUT_FIELDS)
        table = self.kv.setdefault(ns, {})
        if key in table and not overwrite:
            return False
        table[key] = value
        self.store.put("kv", kv_key(ns, key), value)
        return True

    def handle_kv_get(self, conn: rpc.Connection, body: KvKey, _: list[Buffer]) -> bytes | None:
        """``kv_get`` [namespace, key] -> the value, or None."""
        ns, key = checks.array("kv_get", body, KV_KEY_FIELDS)
        return self.kv.get(ns, {}).get(key)

    def handle_kv_del(self, conn: rpc.Connection, body: KvKey, _: list[Buffer]) -> bool:
        """``kv_del`` [namespace, key] -> True if the key existed."""
        ns, key = checks.array("kv_del", body, KV_KEY_FIELDS)
        return self.kv_delete(ns, key) is not None

    def kv_delete(self, ns: str, key: bytes) -> bytes | None:
        """Delete a key (durably); its value, None if it was not there."""
        self.store.delete("kv", kv_key(ns, key))
        return self.kv.get(ns, {}).pop(key, None)

    def handle_kv_keys(self, conn: rpc.Connection, body: KvKey, _: list[Buffer]) -> list[bytes]:
        """``kv_keys`` [namespace, prefix] -> the keys that start with ``prefix``."""
        ns, prefix = checks.array("kv_keys", body, KV_PREFIX_FIELDS)
        return [k for k in self.kv.get(ns, {}) if k.startswith(prefix)]

    def handle_owner_reconnected(
        self, conn: rpc.Connection, worker_id: bytes, _: list[Buffer]
    ) -> None:
        """``owner_reconnected`` worker id (notice, from an owner after a GCS restart): its actors'
        owner connection is this one again."""
        self.persistence.owner_reconnected(conn, worker_id)
