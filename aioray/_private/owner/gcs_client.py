"""A driver's or worker's connection to the GCS: opened lazily, reopened after a restart.

The GCS may be killed and restarted on the same address (it recovers its durable
tables from SQLite, see ``daemons/gcs/store.py``). A process that was connected
before then reconnects on its next GCS call, retrying with backoff for up to
``config.GCS_RECONNECT_TIMEOUT_S``; a first connection fails at once with the
reason, so a wrong address is reported within seconds. On a reconnection the
process tells the GCS which worker it is (``owner_reconnected``), so the actors it
owns are tied to the new connection again (they die with it, as before).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from aioray._private.owner.placement_groups import GCS_HANDLERS as PG_HANDLERS
from aioray._private.rpc import rpc
from aioray._private.wire import config

if TYPE_CHECKING:
    from aioray._private.owner.interfaces import GcsClientHost

logger = logging.getLogger(__name__)


class GcsClient:
    def __init__(self, cw: GcsClientHost) -> None:
        self.cw = cw
        self._lock: asyncio.Lock | None = None
        self._connected_once = False

    async def connection(self) -> rpc.Connection:
        cw = self.cw
        if cw.gcs is not None and not cw.gcs.is_closed:
            return cw.gcs
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if cw.gcs is None or cw.gcs.is_closed:
                if cw.gcs_address is None:
                    raise ConnectionError("this process does not know the GCS address")
                cw.gcs = await self._connect(cw.gcs_address)
        return cw.gcs

    async def _connect(self, address: tuple[str, int]) -> rpc.Connection:
        cw = self.cw
        deadline = time.monotonic() + config.GCS_RECONNECT_TIMEOUT_S
        delay = 0.05
        while True:
            try:
                conn, _ = await rpc.connect(
                    *address,
                    handlers={"lease_infeasible": cw.handle_lease_infeasible, **PG_HANDLERS},
                    hello={"role": cw.mode, "worker_id": cw.worker_id},
                    timeout=config.CONNECT_TIMEOUT_S,
                    name="gcs",
                )
            except ConnectionError:
                if not self._connected_once or cw.closing or time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(delay)  # the GCS is restarting: retry with backoff
                delay = min(delay * 2, 1.0)
                continue
            if self._connected_once:
                logger.info("reconnected to the GCS at %s:%d", *address)
                conn.notify("owner_reconnected", cw.worker_id)
                if cw.mode == "driver" and cw.job_id:  # its job still runs (ray_running_jobs)
                    conn.notify("job_reconnected", cw.job_id)
            self._connected_once = True
            return conn
