"""A worker's gets that block: after LEND_CPUS_AFTER_S of waiting the worker tells its
raylet it is blocked, so its CPUs can run nested tasks; when the get ends it takes
them back, on the loop, before the caller's thread resumes. A get that ends sooner
sends nothing. The policy (when to lend, when to reclaim) is ``core.cpu_lending``."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aioray._private.core.cpu_lending import CpuLending, Lend
from aioray._private.owner import object_waits
from aioray._private.wire import config

if TYPE_CHECKING:
    from aioray._private.core.memory_store import StoredObject
    from aioray._private.owner.interfaces import BlockedGetsHost
    from aioray._private.owner.object_ref import ObjectRef


class BlockedGets:
    def __init__(self, cw: BlockedGetsHost) -> None:
        self.cw = cw
        self.lending = CpuLending()
        self._timer: asyncio.TimerHandle | None = None

    async def fetch(self, missing: list[ObjectRef]) -> dict[bytes, StoredObject]:
        """(loop) ``object_waits.fetch_many``, lending this worker's CPUs while it waits."""
        if self.lending.get_started() is Lend.ARM:
            self._timer = self.cw.loop.call_later(config.LEND_CPUS_AFTER_S, self._lend)
        try:
            return await object_waits.fetch_many(self.cw, missing)
        finally:
            action = self.lending.get_finished()
            if action is Lend.RECLAIM:
                self._tell_raylet(False)
            elif action is Lend.DISARM and self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def _lend(self) -> None:
        self._timer = None
        if self.lending.delay_passed() is Lend.LEND:
            self._tell_raylet(True)

    def _tell_raylet(self, blocked: bool) -> None:
        if not self.cw.raylet.is_closed:
            self.cw.raylet.notify("worker_blocked", blocked)
