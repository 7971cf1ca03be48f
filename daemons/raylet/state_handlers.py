"""A raylet's part of the State API: its workers and drivers, its log files (and the
workers' lines written to them), ``aioray memory``'s view, ``get_state``, and the
lease requests waiting for resources (``aioray status``'s demand).

``state_workers`` lists the processes connected to this raylet (Ray's WorkerState
rows); ``list_logs`` names the files in the session's log directory; ``read_log``
returns the last lines of one of them, or the bytes after an offset (to follow it).
Only plain file names inside the log directory are served: never a path.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any, BinaryIO

from aioray._private.owner import memory_report
from aioray._private.rpc import rpc
from aioray._private.wire.protocol import Buffer
from aioray._private.wire.schema import ReadLog, ReadLogReply, WorkerLog

if TYPE_CHECKING:
    from aioray.daemons.raylet.server import Raylet

logger = logging.getLogger(__name__)

MAX_READ_BYTES = 4 * 1024 * 1024  # one read_log answer at most


class StateHandlers:
    def __init__(self, raylet: Raylet) -> None:
        self.raylet = raylet
        self.started = time.time()

    def handlers(self) -> dict[str, rpc.Handler]:
        return {
            "state_workers": self.handle_state_workers,
            "list_logs": self.handle_list_logs,
            "read_log": self.handle_read_log,
            "pending_demand": self.handle_pending_demand,
            "worker_log": self.handle_worker_log,
            "memory_summary": self.handle_memory_summary,
            "get_state": self.handle_get_state,
            "ping": self.handle_ping,
        }

    def handle_ping(self, conn: rpc.Connection, body: None, _: list[Buffer]) -> bool:
        """No body; reply: True. An owner whose leased worker's connection dropped asks
        this: no answer means the worker's node died (NodeDiedError), not just the worker
        (Ray's GetWorkerFailureCause)."""
        return True

    def handle_state_workers(
        self, conn: rpc.Connection, body: None, _: list[Buffer]
    ) -> list[dict[str, Any]]:
        """No body; reply: a row per worker process connected to this raylet (Ray's
        WorkerState fields)."""
        raylet = self.raylet
        rows = []
        for c in raylet.server.connections:
            info = c.peer_info or {}
            role = info.get("role")
            # (a process's own raylet knows its port; other raylets it only follows)
            if role not in ("driver", "worker") or "port" not in info or c.is_closed:
                continue
            rows.append(
                {
                    "worker_id": info.get("worker_id", b"").hex(),
                    "is_alive": True,
                    "worker_type": "DRIVER" if role == "driver" else "WORKER",
                    "exit_type": None,
                    "node_id": raylet.node_id.hex(),
                    "ip": raylet.node_ip,
                    "pid": info.get("pid"),
                    "exit_detail": None,
                    "worker_launch_time_ms": None,
                    "worker_launched_time_ms": None,
                    "start_time_ms": None,
                    "end_time_ms": None,
                    "debugger_port": None,
                    "num_paused_threads": None,
                }
            )
        return rows

    def handle_pending_demand(
        self, conn: rpc.Connection, body: None, _: list[Buffer]
    ) -> list[list[Any]]:
        """Lease requests waiting here, per resource shape: [shape, count, infeasible]."""
        shapes: dict[tuple[Any, ...], list[Any]] = {}
        for req in self.raylet.requests:
            if req.fut.done():
                continue
            key = (tuple(sorted(req.res.items())), req.warned)
            entry = shapes.setdefault(key, [dict(req.res), 0, bool(req.warned)])
            entry[1] += 1
        return list(shapes.values())

    def _log_dir(self) -> str:
        return os.path.join(self.raylet.session_dir or "", "logs")

    def handle_list_logs(self, conn: rpc.Connection, body: None, _: list[Buffer]) -> list[str]:
        """No body; reply: the file names in this node's log directory."""
        try:
            return sorted(os.listdir(self._log_dir()))
        except OSError:
            return []

    def handle_read_log(self, conn: rpc.Connection, body: ReadLog, _: list[Buffer]) -> ReadLogReply:
        """[name, tail lines (-1: all), offset or None] -> {"data", "offset"}."""
        name, tail, offset = body
        if not isinstance(name, str) or os.path.basename(name) != name or name in ("", ".", ".."):
            raise ValueError(f"not a log file name: {name!r}")
        path = os.path.join(self._log_dir(), name)
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            start = min(int(offset), size) if offset is not None else max(0, size - MAX_READ_BYTES)
            f.seek(start)
            data = f.read(MAX_READ_BYTES)
        if offset is None and tail is not None and tail >= 0:
            lines = data.splitlines(keepends=True)
            data = b"".join(lines[-tail:]) if tail else b""
        return {"data": data, "offset": start + len(data) if offset is not None else size}

    def handle_worker_log(self, conn: rpc.Connection, body: WorkerLog, _: list[Buffer]) -> None:
        """Append a worker's lines to its log file, and forward them to drivers that want them."""
        pid, _ip, stream, lines = body[:4]
        f = self._worker_log_file(conn, pid, stream) if lines else None  # sync notices: no text
        if f is not None:
            try:
                f.write(("\n".join(lines) + "\n").encode("utf-8", "replace"))
            except OSError as e:  # a full disk must not stop the forwarding
                logger.warning("cannot write worker pid %d's log: %s", pid, e)
        for peer in self.raylet.server.connections:
            info = peer.peer_info or {}
            if info.get("role") == "driver" and info.get("logs", True) and not peer.is_closed:
                peer.notify("worker_log", body)

    def _worker_log_file(self, conn: rpc.Connection, pid: int, stream: str) -> BinaryIO | None:
        """``<session>/logs/worker-<pid>.out|.err``, opened once, closed with the connection."""
        files: dict[str, BinaryIO | None] = conn.state.setdefault("log_files", {})
        if stream in files:
            return files[stream]
        files[stream] = None  # no session dir, or it cannot be opened: skip, once
        if self.raylet.session_dir:
            suffix = "err" if stream == "stderr" else "out"
            path = os.path.join(self.raylet.session_dir, "logs", f"worker-{pid}.{suffix}")
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                f = files[stream] = open(path, "ab", buffering=0)  # noqa: SIM115 - closed below
            except OSError as e:
                logger.warning("cannot open %s: %s", path, e)
            else:
                conn.on_close.append(lambda _: f.close())
        return files[stream]

    async def handle_memory_summary(
        self, conn: rpc.Connection, body: None, _: list[Buffer]
    ) -> dict[str, Any]:
        """``aioray memory``: every local process's references and this store's view."""
        peers = [
            c
            for c in self.raylet.server.connections
            if (c.peer_info or {}).get("role") in ("driver", "worker") and not c.is_closed
        ]
        store = {
            oid: [
                e.size,
                "spilled" if e.state == "SPILLED" else "in shared memory",
                e.spill_path or "",
            ]
            for oid, e in self.raylet.store.manager.entries.items()
        }
        return await memory_report.node_summary(peers, store)

    def handle_get_state(self, conn: rpc.Connection, body: None, _: list[Buffer]) -> dict[str, Any]:
        """``get_state`` (no body) -> the raylet's state for tests and ``aioray status``: resources,
        workers, leases, queued requests, CPU lendings, object store and transfer stats, its
        cluster view, OOM kills, GCS reconnects."""
        assert self.raylet.pool is not None
        return {
            "node_id": self.raylet.node_id,
            "available": self.raylet.resources.snapshot(),
            "total": self.raylet.resources.total,
            "workers": len(self.raylet.pool.workers),
            "leases": len(self.raylet.leases),
            "queued": len(self.raylet.requests),
            "lendings": self.raylet.lendings,
            "objects": len(self.raylet.store.manager.entries),
            "object_store": self.raylet.store.stats(),
            "transfer": self.raylet.transfer.stats(),
            "view": {
                **{n.node_id.hex(): n.available for n in self.raylet.spillback.view.nodes.values()},
                self.raylet.node_id.hex(): self.raylet.resources.snapshot(),
            },
            "oom_kills": self.raylet.memory_monitor.kills,
            "gcs_reconnects": self.raylet.gcs_link.reconnects,
            "metrics": self.raylet.metrics.stats(),
            "runtime_env": self.raylet.pool.agent.stats()
            if self.raylet.pool.agent is not None
            else {},
            "idle_workers": {"reaped": self.raylet.pool.reaped, "kept": self.raylet.pool.kept_idle},
        }
