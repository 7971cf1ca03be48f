"""The raylet's demand report to the GCS, for the autoscaler: queued shapes, counted.

``report_demand [node_id, [[res, count], ...], idle]``: the resource shapes of the
lease requests queued here, one entry per distinct shape (not per request), and
whether the node is idle (no lease, no queued request, no resources reserved
for placement-group bundles, no primary object copy: a node holding the only
copy of an object must not be removed). Sent only when it
changed: soon after the queue changes (DEMAND_REPORT_DELAY_S, so a burst is one
report), then every DEMAND_REPORT_S while anything is queued or the node is busy,
so the GCS learns when the queue drains and the node goes idle. Requests for
placement-group bundles are left out: the GCS counts pending groups itself.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from aioray._private.core.bundle_resources import is_group_resource
from aioray._private.wire import config

if TYPE_CHECKING:
    from aioray.daemons.raylet.server import Raylet


class DemandReporter:
    def __init__(self, raylet: Raylet) -> None:
        self.raylet = raylet
        self._timer: asyncio.TimerHandle | None = None
        self._last: Any = None

    def __repr__(self) -> str:
        return f"<DemandReporter last={self._last!r}>"

    def changed(self) -> None:
        """The queue changed (a request queued, granted or spilled): report soon.

        One bool check when a report is already due."""
        if self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(config.DEMAND_REPORT_DELAY_S, self._report)

    def start(self) -> None:
        """The first report (the node is idle), and the periodic check after it."""
        self._report()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def snapshot(self) -> tuple[list[list[Any]], bool]:
        """The queued shapes with their counts, and whether the node is idle."""
        r = self.raylet
        counts: dict[tuple[tuple[str, float], ...], int] = {}
        for req in r.requests:
            if req.fut.done() or any(map(is_group_resource, req.res)):
                continue
            key = tuple(sorted(req.res.items()))
            counts[key] = counts.get(key, 0) + 1
        shapes = [[dict(k), n] for k, n in counts.items()]
        idle = (
            not r.requests
            and not r.leases
            and not _reserved(r.resources.total, r.resources.available)
            and not r.store.holds_primaries()
        )
        return shapes, idle

    def _report(self) -> None:
        self._timer = None
        r = self.raylet
        if r.stopping:
            return
        shapes, idle = self.snapshot()
        body = [r.node_id, shapes, idle]
        if body != self._last:
            self._last = body
            r.gcs_link.notify("report_demand", body)
        if shapes or not idle or r.requests:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(config.DEMAND_REPORT_S, self._report)


def _reserved(total: dict[str, float], available: dict[str, float]) -> bool:
    """Whether some of the node's own resources are taken (by a bundle, say)."""
    return any(
        available.get(k, 0.0) < v - 1e-9 for k, v in total.items() if not is_group_resource(k)
    )
