"""The dashboard's connection to its cluster, made on first use (an idle dashboard
costs no driver): GCS requests from the HTTP loop, and the sync API in a thread."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from aioray import api

T = TypeVar("T")
NAMESPACE = "_aioray_dashboard"


class ClusterLink:
    """Joins the cluster at ``gcs_address`` as a driver the first time it is needed."""

    def __init__(self, gcs_address: str) -> None:
        self.gcs_address = gcs_address
        self._lock = asyncio.Lock()
        self.connected = False

    def __repr__(self) -> str:
        return f"<ClusterLink {self.gcs_address} connected={self.connected}>"

    async def connect(self) -> None:
        async with self._lock:
            if not self.connected:
                await asyncio.to_thread(
                    api.init,
                    address=self.gcs_address,
                    namespace=NAMESPACE,
                    log_to_driver=False,
                    configure_logging=False,
                    _node_ip_address=self.gcs_address.rpartition(":")[0],  # the head's
                )
                self.connected = True

    async def gcs(self, method: str, body: Any = None) -> Any:
        """One GCS request, on the driver's loop, awaited from this one."""
        await self.connect()
        cw = api.driver()
        assert cw is not None

        async def call() -> Any:
            conn = await cw.gcs_connection()
            return await conn.call(method, body)

        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(call(), cw.loop))

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn`` (which uses the sync API) in a thread, connected first."""
        await self.connect()
        return await asyncio.to_thread(fn, *args, **kwargs)

    def node_id(self) -> str:
        cw = api.driver()
        return cw.node_id.hex() if cw is not None else ""

    def close(self) -> None:
        if self.connected:
            api.shutdown()
            self.connected = False
