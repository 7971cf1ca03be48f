"""The event loop implementation every aioray process uses: uvloop when available."""

from __future__ import annotations

import asyncio
from typing import Any

uvloop: Any
try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency; stay usable without it
    uvloop = None


def new_event_loop() -> asyncio.AbstractEventLoop:
    if uvloop is not None:
        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run(main: object) -> object:
    """asyncio.run with uvloop."""
    if uvloop is not None:
        return uvloop.run(main)
    return asyncio.run(main)  # type: ignore[arg-type]
