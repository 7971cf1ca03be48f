"""The event loop implementation every aioray process uses: uvloop when available."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
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


INTERRUPT_SLICE_S = 0.25


def result_interruptibly(fut: concurrent.futures.Future[Any], timeout: float | None) -> Any:
    """fut.result(timeout), but in the main thread wait in slices: a SIGINT that lands
    just before a lock wait begins would otherwise never be acted on (Ctrl-C, or a
    notebook's interrupt button, must always get through a blocked get)."""
    if threading.current_thread() is not threading.main_thread():
        return fut.result(timeout)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = INTERRUPT_SLICE_S if deadline is None else deadline - time.monotonic()
        try:
            return fut.result(max(0.0, min(INTERRUPT_SLICE_S, left)))
        except concurrent.futures.TimeoutError:
            if deadline is not None and time.monotonic() >= deadline:
                raise


def acquire_interruptibly(lock: Any, timeout: float | None) -> bool:
    """lock.acquire(timeout=...) (False when it timed out), in the main thread in slices
    as ``result_interruptibly``, so a Ctrl-C always gets through."""
    if threading.get_ident() != threading.main_thread().ident:
        return bool(lock.acquire(True, -1 if timeout is None else timeout))
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = INTERRUPT_SLICE_S if deadline is None else deadline - time.monotonic()
        if lock.acquire(True, max(0.0, min(INTERRUPT_SLICE_S, left))):
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return False
