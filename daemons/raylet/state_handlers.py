"""A raylet's part of the State API: its workers and drivers, its log files, and the
lease requests waiting for resources (``aioray status``'s demand).

``state_workers`` lists the processes connected to this raylet (Ray's WorkerState
rows); ``list_logs`` names the files in the session's log directory; ``read_log``
returns the last lines of one of them, or the bytes after an offset (to follow it).
Only plain file names inside the log directory are served: never a path.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from aioray._private.rpc import rpc

if TYPE_CHECKING:
    from aioray.daemons.raylet.server import Raylet

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
        }

    def handle_state_workers(self, conn: rpc.Connection, body: Any, _: Any) -> list[dict[str, Any]]:
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

    def handle_pending_demand(self, conn: rpc.Connection, body: Any, _: Any) -> list[list[Any]]:
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

    def handle_list_logs(self, conn: rpc.Connection, body: Any, _: Any) -> list[str]:
        """No body; reply: the file names in this node's log directory."""
        try:
            return sorted(os.listdir(self._log_dir()))
        except OSError:
            return []

    def handle_read_log(self, conn: rpc.Connection, body: list[Any], _: Any) -> dict[str, Any]:
        """[name, tail lines (-1: all), offset or None] -> {"data", "offset"}."""
        name, tail, offset = body
        if not isinstance(name, str) or os.path.basename(name) != name or name in ("", ".", ".."):
            raise ValueError(f"not a log file name: {name!r}")
        path = os.path.join(self._log_dir(), name)
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            follow = offset is not None
            start = min(int(offset), size) if follow else max(0, size - MAX_READ_BYTES)
            f.seek(start)
            data = f.read(MAX_READ_BYTES)
        if offset is None and tail is not None and tail >= 0:
            lines = data.splitlines(keepends=True)
            data = b"".join(lines[-tail:]) if tail else b""
        return {"data": data, "offset": start + len(data) if offset is not None else size}
