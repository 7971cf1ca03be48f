"""The raylet's keep-or-spill decision for queued requests (spillback.py), as pure
state: a request spilled to a full node moves on to a node where it fits now (a
node the autoscaler just launched), but not when only earlier requests of the
same pass claimed the room."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from aioray.daemons.raylet.resources import NodeResources
from aioray.daemons.raylet.spillback import ANSWERED, KEEP, MAX_HOPS, MAX_MOVES, Spillback
from test_scheduling_policy import CPU1, A, B, node


def spilled_here(hops: int = 1) -> Any:
    fut = asyncio.get_running_loop().create_future()
    return SimpleNamespace(res=CPU1, strategy=None, hops=hops, placed=False, fut=fut)


def spillback(free_here: float) -> tuple[Spillback, NodeResources]:
    s = Spillback(A, "127.0.0.1", 1)
    res = NodeResources({"CPU": 2.0})
    if free_here < 2:
        res.acquire({"CPU": 2.0 - free_here})
    s.apply_view([node(B, 2, 2).to_wire()])  # a node that just joined, all free
    return s, res


async def test_a_spilled_request_on_a_full_node_moves_to_a_new_node() -> None:
    s, res = spillback(free_here=0)
    s.begin_pass(res)
    req = spilled_here()
    assert s.decide(req) == ANSWERED
    assert req.fut.result()["spill"][0] == B and req.fut.result()["hops"] == 2


async def test_room_claimed_in_this_pass_keeps_it_here() -> None:
    s, res = spillback(free_here=1)
    s.begin_pass(res)
    first, second = spilled_here(), spilled_here()
    assert s.decide(first) == KEEP  # fits: takes the free CPU
    assert s.decide(second) == KEEP  # the node had room at the pass's start: wait here


async def test_moves_stay_bounded() -> None:
    s, res = spillback(free_here=0)
    s.begin_pass(res)
    assert s.decide(spilled_here(hops=MAX_HOPS)) == ANSWERED  # it fits there now: moves
    assert s.decide(spilled_here(hops=MAX_MOVES)) == KEEP
