"""The notebook view of an actor handle on an offline CoreWorker: the state the GCS
reports, and when the GCS cannot be asked, what this process learned, said as such
(a handle's record starts as PENDING_CREATION, which is not knowledge)."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from fakes import (
    OfflineCluster,
    offline_fixture,  # noqa: F401  (the fixture)
    settle,
)

from aioray import _html
from aioray._private.wire.schema import ActorMeta
from aioray.actor import ActorHandle

AID = b"\xa7" * 16
META: ActorMeta = {"cls": "A", "module": "m", "methods": {}}  # type: ignore[typeddict-item]


async def state_shown(handle: ActorHandle) -> str:
    """The State row of the view, rendered from a thread that is not the loop's (as
    Jupyter does: the view may then ask the GCS)."""
    view = await asyncio.wait_for(asyncio.to_thread(_html.actor_handle_html, handle), 10)
    await settle()
    found = re.search(r"State</th><td[^>]*>(.*?)</td>", view)
    assert found is not None, view
    return found.group(1)


def gcs_down(method: str, body: Any) -> Any:
    raise ConnectionError("the GCS is restarting")


async def test_the_view_shows_the_state_the_gcs_reports(offline: OfflineCluster) -> None:
    offline.gcs.answer = lambda method, body: {"aid": AID, "state": "ALIVE", "version": 2}
    handle = ActorHandle(AID, META)
    assert await state_shown(handle) == "ALIVE"
    assert offline.gcs.methods() == ["wait_actor"]


async def test_a_state_never_learned_shows_as_unknown_and_why(offline: OfflineCluster) -> None:
    """Not the record's PENDING_CREATION (it may be alive or dead by now), and not a bare
    "unknown": the reason, as the view's other unknowns give theirs."""
    offline.gcs.answer = gcs_down
    handle = ActorHandle(AID, META)
    assert offline.cw.actors.actors[AID].version == 0  # the handle made its record
    assert await state_shown(handle) == "<i>unknown (the GCS could not be asked)</i>"


async def test_a_learned_state_shows_as_learned_when_the_gcs_cannot_be_asked(
    offline: OfflineCluster,
) -> None:
    offline.gcs.answer = gcs_down
    handle = ActorHandle(AID, META)
    record = offline.cw.actors.actors[AID]
    record.state, record.version = "ALIVE", 3
    shown = await state_shown(handle)
    assert shown == "ALIVE <i>(as last learned here: the GCS could not be asked)</i>"
