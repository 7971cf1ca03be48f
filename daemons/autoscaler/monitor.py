"""The autoscaler's loop (the async shell around ``planner.plan``), on the head node.

Every UPDATE_S (1 s), and at once when the GCS says the demand changed
(``demand_changed``, at most every MIN_UPDATE_S), so a task waits for no poll:

1. read the demand snapshot from the GCS (``get_demand``) and the provider's nodes;
2. match them by address: a provider node whose raylet has not registered yet is
   *launching*; one that has not joined within ``join_timeout_s`` is terminated
   and counted as a failed launch; a node is idle from the first snapshot that
   says so (no lease, no queued request, no primary copy) until one that does not;
3. plan, then launch (a type whose last launch failed waits out an exponential
   back-off, 1 s doubling to BACKOFF_MAX_S) and terminate;
4. report the state to the GCS for ``aioray status``: pending launches, recent
   failures with their reasons, idle nodes, infeasible demand.

A failing provider call is logged with its reason and shown in the status; the
loop and the cluster go on. Nodes the autoscaler did not make (joined by hand)
are never terminated and do not count against the limits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aioray.daemons.autoscaler import planner
from aioray.daemons.autoscaler.config import AutoscalingConfig
from aioray.daemons.autoscaler.node_provider import NodeProvider, ProviderError, ProviderNode

from aioray._private.rpc import rpc
from aioray._private.wire.protocol import Buffer

logger = logging.getLogger(__name__)

UPDATE_S = 1.0
MIN_UPDATE_S = 0.05
JOIN_TIMEOUT_S = 120.0
BACKOFF_MAX_S = 60.0
RECENT_FAILURES = 10


class Monitor:
    def __init__(
        self,
        config: AutoscalingConfig,
        provider: NodeProvider,
        gcs: Any,
        update_s: float = UPDATE_S,
        join_timeout_s: float = JOIN_TIMEOUT_S,
    ) -> None:
        self.config = config
        self.provider = provider
        self.gcs = gcs  # an rpc.Connection (a fake in the unit tests)
        self.update_s = update_s
        self.join_timeout_s = join_timeout_s
        self.first_seen: dict[str, float] = {}  # provider node id -> monotonic time
        self.idle_since: dict[str, float] = {}  # GCS node id (hex) -> monotonic time
        self.failures: list[list[Any]] = []  # [type, reason, wall time]
        self.backoff: dict[str, tuple[float, float]] = {}  # type -> (until, delay)
        self.last_plan = planner.Plan()
        self.updates = 0
        self._wake = asyncio.Event()

    def __repr__(self) -> str:
        return f"<Monitor updates={self.updates} failures={len(self.failures)}>"

    async def run(self, stopped: asyncio.Event) -> None:
        """Update every ``update_s`` until ``stopped``; then the provider closes."""
        try:
            while not stopped.is_set():
                try:
                    await self.update()
                except (ConnectionError, rpc.RpcError) as e:
                    logger.warning("autoscaler update failed: %s", e)
                await self._sleep(stopped)
        finally:
            await self.provider.close()

    def handle_demand_changed(self, conn: rpc.Connection, body: None, _: list[Buffer]) -> None:
        """The GCS's notice: plan now."""
        self._wake.set()

    async def _sleep(self, stopped: asyncio.Event) -> None:
        """Until the next update: ``update_s``, a demand change, or the stop."""
        await asyncio.sleep(MIN_UPDATE_S)
        waits = [asyncio.ensure_future(e.wait()) for e in (stopped, self._wake)]
        try:
            await asyncio.wait(waits, timeout=self.update_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        self._wake.clear()

    async def update(self) -> planner.Plan:
        """One round: read, match, plan, act, report."""
        snap = await self.gcs.call("get_demand")
        try:
            pnodes = await self.provider.non_terminated_nodes()
        except ProviderError as e:  # cannot tell what runs: change nothing this round
            self._failed("provider", f"listing nodes: {e}")
            self.gcs.notify("report_autoscaler_state", {"failures": self.failures})
            return planner.Plan()
        now = time.monotonic()
        states, by_gcs_id, pending = self._node_states(snap["nodes"], pnodes, now)
        await self._terminate_unjoined(pending, now)
        demand = planner.Demand(
            shapes={planner.shape_of(s): n for s, n in snap["shapes"]},
            placement_groups=[
                planner.PlacementGroupDemand(b, s) for b, s in snap["placement_groups"]
            ],
            requests=snap["requests"],
        )
        plan = planner.plan(self.config, states, demand, now)
        pending += await self._launch(plan.launch, now)
        for node_id in plan.terminate:
            pid = by_gcs_id.get(node_id, node_id)
            try:
                await self.provider.terminate_node(pid)
                logger.info("terminated idle node %s (%s)", node_id[:8], pid)
            except ProviderError as e:
                self._failed("terminate", f"terminating {pid}: {e}")
        self.last_plan = plan
        self.updates += 1
        self.gcs.notify("report_autoscaler_state", self._state(states, pending, plan))
        return plan

    def _node_states(
        self, gcs_nodes: list[dict[str, Any]], pnodes: list[ProviderNode], now: float
    ) -> tuple[list[planner.NodeState], dict[str, str], list[ProviderNode]]:
        by_ip = {n.ip: n for n in pnodes if n.ip}
        states = []
        by_gcs_id: dict[str, str] = {}  # GCS node id -> provider node id
        joined: set[str] = set()
        for info in gcs_nodes:
            nid = info["node_id"]
            p = by_ip.get(info["ip"]) if not info["is_head"] else None
            if info["idle"]:
                self.idle_since.setdefault(nid, now)
            else:
                self.idle_since.pop(nid, None)
            if p is not None:
                joined.add(p.node_id)
                by_gcs_id[nid] = p.node_id
            states.append(
                planner.NodeState(
                    nid,
                    p.node_type if p is not None else "",
                    dict(info["total"]),
                    dict(info["available"]),
                    is_head=p is None,  # the head, or a node joined by hand: never removed
                    idle_since=self.idle_since.get(nid),
                )
            )
        pending = [p for p in pnodes if p.node_id not in joined]
        for p in pnodes:
            self.first_seen.setdefault(p.node_id, now)
        for p in pending:
            t = self.config.node_types.get(p.node_type)
            res = dict(t.resources) if t is not None else {}
            states.append(planner.NodeState(p.node_id, p.node_type, res, dict(res), launching=True))
        alive = {p.node_id for p in pnodes}
        self.first_seen = {k: v for k, v in self.first_seen.items() if k in alive}
        live_ids = {info["node_id"] for info in gcs_nodes}
        self.idle_since = {k: v for k, v in self.idle_since.items() if k in live_ids}
        return states, by_gcs_id, pending

    async def _terminate_unjoined(self, pending: list[ProviderNode], now: float) -> None:
        for p in list(pending):
            if now - self.first_seen.get(p.node_id, now) < self.join_timeout_s:
                continue
            why = f"node {p.node_id} did not join the cluster within {self.join_timeout_s:g}s"
            self._failed(p.node_type, why)
            pending.remove(p)
            try:
                await self.provider.terminate_node(p.node_id)
            except ProviderError as e:
                logger.warning("terminating %s failed: %s", p.node_id, e)

    async def _launch(self, launch: dict[str, int], now: float) -> list[ProviderNode]:
        """Create the planned nodes (types in back-off wait); the nodes launched."""
        launched = []
        for name, count in launch.items():
            until, delay = self.backoff.get(name, (0.0, 0.0))
            if now < until:
                continue
            try:
                ids = await self.provider.create_node(self.config.node_types[name], count)
            except ProviderError as e:
                delay = min(BACKOFF_MAX_S, max(1.0, delay * 2))
                self.backoff[name] = (now + delay, delay)
                self._failed(name, str(e))
                continue
            self.backoff.pop(name, None)
            for node_id in ids:
                self.first_seen[node_id] = now
                launched.append(ProviderNode(node_id, name))
            logger.info("launching %d node(s) of type %s: %s", count, name, ", ".join(ids))
        return launched

    def _failed(self, node_type: str, reason: str) -> None:
        logger.warning("autoscaler: %s: %s", node_type, reason)
        self.failures = [*self.failures, [node_type, reason, time.time()]][-RECENT_FAILURES:]

    def _state(
        self, states: list[planner.NodeState], pending: list[ProviderNode], plan: planner.Plan
    ) -> dict[str, Any]:
        active: dict[str, int] = {}
        for s in states:
            if not s.launching:
                name = s.node_type or ("head" if s.is_head else "")
                active[name] = active.get(name, 0) + 1
        return {
            "active": active,
            "pending": [[p.node_id, p.node_type, p.ip, "launching"] for p in pending],
            "failures": self.failures,
            "idle": sorted(self.idle_since),
            "infeasible": plan.infeasible,
            "launched": plan.launch,
            "terminated": plan.terminate,
            "updates": self.updates,
        }
