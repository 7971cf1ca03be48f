"""The dashboard's own metrics history: cluster figures sampled every ``INTERVAL_S``
for the last hour, in memory (no Prometheus needed), for the Metrics page."""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any

from aiohttp import web

from aioray.dashboard.cluster_link import ClusterLink

INTERVAL_S = 10.0
KEEP = 360  # one hour of samples


class TimeSeries:
    """Samples the GCS's node table while the dashboard is joined to the cluster."""

    def __init__(self, link: ClusterLink) -> None:
        self.link = link
        self.samples: collections.deque[dict[str, Any]] = collections.deque(maxlen=KEEP)
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<TimeSeries samples={len(self.samples)}>"

    async def sample(self) -> None:
        total: dict[str, float] = {}
        used: dict[str, float] = {}
        for n in await self.link.gcs("get_nodes"):
            if not n.get("Alive"):
                continue
            for k, v in n["Resources"].items():
                total[k] = total.get(k, 0.0) + v
                used[k] = used.get(k, 0.0) + v - n.get("Available", {}).get(k, v)
        actors = await self.link.gcs("list_actors")
        alive = sum(a["state"] == "ALIVE" for a in actors)
        self.samples.append(
            {
                "t": time.time(),
                "cpu_used": used.get("CPU", 0.0),
                "cpu_total": total.get("CPU", 0.0),
                "memory_used": used.get("memory", 0.0),
                "object_store_used": used.get("object_store_memory", 0.0),
                "object_store_total": total.get("object_store_memory", 0.0),
                "actors_alive": alive,
            }
        )

    async def _run(self) -> None:
        while True:
            try:
                await self.sample()
            except Exception:  # the cluster is stopping: keep what we have
                pass
            await asyncio.sleep(INTERVAL_S)

    def routes(self) -> list[web.RouteDef]:
        async def series(request: web.Request) -> web.Response:
            if self._task is None:  # first look at the Metrics page: start sampling
                await self.sample()
                self._task = asyncio.create_task(self._run())
            return web.json_response({"result": True, "msg": "", "data": list(self.samples)})

        return [web.get("/api/dashboard/time_series", series)]

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
