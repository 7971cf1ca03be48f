"""The GCS's part in metrics: cluster figures for the head's exporter, and service discovery.

``metrics_snapshot`` answers the head raylet's scrape with what only the GCS knows
(actors by state, class and job; active nodes; running jobs; its own USS). The
Prometheus ``file_sd`` file lists every alive node's metrics address; it is
rewritten (atomically) when a node joins or dies, so a Prometheus pointed at it
follows the cluster. It is written in the session directory, and, as Ray writes
``/tmp/ray/prom_metrics_service_discovery.json``, also in the session root (the
parent directory: a fixed path, the latest head's on this machine).
"""

from __future__ import annotations

import json
import logging
import os
from typing import TYPE_CHECKING, Any

from aioray._private.rpc import rpc
from aioray._private.wire.protocol import Buffer

if TYPE_CHECKING:
    from aioray.daemons.gcs.server import GcsServer

logger = logging.getLogger(__name__)

SD_FILE = "prom_metrics_service_discovery.json"  # in the session directory


class MetricsView:
    def __init__(self, gcs: GcsServer) -> None:
        self.gcs = gcs
        self.running_jobs: set[bytes] = set()

    def __repr__(self) -> str:
        return f"<MetricsView running_jobs={len(self.running_jobs)}>"

    def handlers(self) -> dict[str, rpc.Handler]:
        return {
            "metrics_snapshot": self.handle_metrics_snapshot,
            "job_reconnected": self.handle_job_reconnected,
        }

    def job_started(self, conn: rpc.Connection, job_id: bytes) -> None:
        """A driver registered a job: it runs until its connection closes."""
        self.running_jobs.add(job_id)
        conn.on_close.append(lambda _: self.running_jobs.discard(job_id))

    def handle_job_reconnected(self, conn: rpc.Connection, job_id: bytes, _: list[Buffer]) -> None:
        """A driver reconnected after a GCS restart: its job is running again."""
        self.job_started(conn, job_id)

    def handle_metrics_snapshot(
        self, conn: rpc.Connection, body: None, _: list[Buffer]
    ) -> dict[str, Any]:
        """``metrics_snapshot`` (no body), from a raylet's metrics export -> the cluster-wide
        figures only the GCS knows: {actors: [[state, class, job id, count], ...],
        active_nodes: {head|worker: count}, running_jobs, gcs_uss}."""
        actors: dict[tuple[str, str, str], int] = {}
        for rec in self.gcs.actors.actors.values():
            job = rec.spec.get("job") or b""
            key = (rec.state, str(rec.meta.get("cls", "")), job.hex())
            actors[key] = actors.get(key, 0) + 1
        active: dict[str, int] = {}
        for node in self.gcs.nodes.values():
            if node["Alive"]:
                kind = "head" if node["IsHead"] else "worker"
                active[kind] = active.get(kind, 0) + 1
        import psutil  # (here: on the first scrape, not in every GCS)

        try:
            uss = float(psutil.Process().memory_full_info().uss)
        except (psutil.Error, OSError):
            uss = 0.0
        return {
            "actors": [[*key, n] for key, n in actors.items()],
            "active_nodes": active,
            "running_jobs": len(self.running_jobs),
            "gcs_uss": uss,
        }

    # -- Prometheus service discovery ------------------------------------------------------
    def nodes_changed(self) -> None:
        """Rewrite the file_sd file with the alive nodes' metrics addresses."""
        session_dir = self.gcs.session_dir
        if not session_dir:
            return
        targets = [
            f"{n['NodeManagerAddress']}:{n['MetricsExportPort']}"
            for n in self.gcs.nodes.values()
            if n["Alive"] and n.get("MetricsExportPort")
        ]
        content = json.dumps([{"labels": {"job": "ray"}, "targets": targets}])
        for directory in (session_dir, os.path.dirname(os.path.abspath(session_dir))):
            _write_atomically(os.path.join(directory, SD_FILE), content)


def _write_atomically(path: str, content: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"  # another head on this machine may write the root's
    try:
        with open(tmp, "w") as f:
            f.write(content)
        os.replace(tmp, path)  # Prometheus never reads a half-written file
    except OSError as e:
        logger.warning("cannot write %s: %s", path, e)
