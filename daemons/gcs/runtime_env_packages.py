"""The GCS's side of runtime envs: eager installs relayed to raylets, and the jobs'
references on uploaded packages.

A driver pins its job's package URIs (``pin_runtime_env_uris``) before uploading
them. When the driver is gone (its connection closed and, ``PACKAGE_GRACE_S`` later,
no connection of the same worker id is back), each package no other live driver
pins and no live actor's env names is deleted from the key-value store (as Ray
deletes a job's packages with it). A package nobody pinned (uploaded by a tool for
task-level use) stays; so does any package after a GCS restart (pins are not
persisted): when in doubt, keep.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING

from aioray._private.node.runtime_env_packaging import KV_NAMESPACE, package_uris
from aioray._private.rpc import rpc
from aioray._private.wire import config
from aioray._private.wire.protocol import Buffer
from aioray._private.wire.schema import RuntimeEnv

if TYPE_CHECKING:
    from aioray.daemons.gcs.server import GcsServer

logger = logging.getLogger(__name__)

# How long after its driver's connection closed a job's packages wait before deletion.
PACKAGE_GRACE_S = config.env_float("RUNTIME_ENV_PACKAGE_GRACE_S", 10.0)


class RuntimeEnvPackages:
    def __init__(self, gcs: GcsServer) -> None:
        self.gcs = gcs
        self.pins: dict[str, set[bytes]] = {}  # package URI -> ids of the jobs using it

    def __repr__(self) -> str:
        return f"<RuntimeEnvPackages pinned={len(self.pins)}>"

    def handlers(self) -> dict[str, rpc.Handler]:
        return rpc.handlers_of(self)

    def handle_prepare_runtime_env(
        self, conn: rpc.Connection, env: RuntimeEnv, _: list[Buffer]
    ) -> int:
        """``eager_install``: every live node prepares a job's runtime env now."""
        raylets = [c for c in self.gcs.raylets.values() if not c.is_closed]
        for raylet in raylets:
            raylet.notify("prepare_runtime_env", env)
        return len(raylets)

    def handle_pin_runtime_env_uris(
        self, conn: rpc.Connection, uris: list[str], _: list[Buffer]
    ) -> bool:
        """The connection's driver (its job) uses these packages until it goes."""
        driver = (conn.peer_info or {}).get("worker_id")
        if not driver:
            return False
        for uri in uris:
            self.pins.setdefault(uri, set()).add(driver)
        self._watch(conn, driver)
        return True

    def _watch(self, conn: rpc.Connection, driver: bytes) -> None:
        if not conn.state.get("pins_packages"):
            conn.state["pins_packages"] = True
            conn.on_close.append(lambda _: self._driver_gone(driver))

    def _driver_gone(self, driver: bytes) -> None:
        # After a grace period: a driver that only reconnected (a blip, a GCS restart
        # elsewhere in its path) is found again by its worker id and keeps its pins.
        asyncio.get_running_loop().call_later(PACKAGE_GRACE_S, self._check_driver, driver)

    def _check_driver(self, driver: bytes) -> None:
        for conn in self.gcs.server.connections:
            if not conn.is_closed and (conn.peer_info or {}).get("worker_id") == driver:
                self._watch(conn, driver)
                return
        self.job_ended(driver)

    def job_ended(self, driver: bytes) -> None:
        in_use = {
            uri
            for rec in self.gcs.actors.actors.values()
            if rec.state != "DEAD"
            for uri in package_uris(rec.env)
        }
        for uri, drivers in list(self.pins.items()):
            drivers.discard(driver)
            if not drivers:
                del self.pins[uri]
                if uri not in in_use:
                    self.delete(uri)

    def delete(self, uri: str) -> None:
        """Remove a package: its header first (it is then absent), then its chunks."""
        header = self.gcs.kv_delete(KV_NAMESPACE, uri.encode())
        if header is None:
            return
        for i in range(json.loads(bytes(header))["chunks"]):
            self.gcs.kv_delete(KV_NAMESPACE, f"{uri}#{i}".encode())
        logger.info("deleted runtime env package %s (its last job ended)", uri)
