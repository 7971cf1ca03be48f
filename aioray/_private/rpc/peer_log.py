"""Warnings a peer can cause (malformed frames, refused handshakes), rate-limited.

A hostile or broken peer can make a process warn once per connection it opens;
thousands of connections must not flood a log file, the disk, or a driver's
terminal. Each kind of warning is written at most ``burst`` times per window;
the rest are counted, and when the window ends one line
``N more such warnings (kind) in the last 60 s`` stands for them. Floor 1: no
asyncio; the caller schedules ``flush`` at the delay ``warning`` returns.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

BURST = 10
WINDOW_S = 60.0


@dataclass
class _Window:
    start: float
    written: int = 0
    suppressed: int = 0


class RateLimitedLog:
    """Per-kind budget of warnings on one logger, with a summary of what was held back."""

    def __init__(
        self,
        logger: logging.Logger,
        burst: int = BURST,
        window_s: float = WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.burst = burst
        self.window_s = window_s
        self.clock = clock
        self._windows: dict[str, _Window] = {}

    def warning(self, kind: str, msg: str, *args: Any) -> float | None:
        """Write the warning, or count it if ``kind`` used its budget in this window.

        Returns the delay after which ``flush`` is due when this call is the first
        held back in its window (the caller schedules it), else None."""
        now = self.clock()
        w = self._windows.get(kind)
        if w is None or now >= w.start + self.window_s:
            if w is not None:
                self._summarise(kind, w)
            w = self._windows[kind] = _Window(now)
        if w.written < self.burst:
            w.written += 1
            self.logger.warning(msg, *args)
            return None
        w.suppressed += 1
        if w.suppressed == 1:
            return max(0.0, w.start + self.window_s - now)
        return None

    def flush(self) -> float | None:
        """Summarise and close every window that has ended. Returns the delay after which
        ``flush`` is due again when a window holding warnings back has not ended yet (a
        timer can fire a little early: uvloop's run to the millisecond), else None."""
        now = self.clock()
        due: float | None = None
        for kind, w in list(self._windows.items()):
            end = w.start + self.window_s
            if now >= end:
                self._summarise(kind, w)
                del self._windows[kind]
            elif w.suppressed:
                due = end - now if due is None else min(due, end - now)
        return due

    def reset(self) -> None:
        """Forget every window (tests)."""
        self._windows.clear()

    def _summarise(self, kind: str, w: _Window) -> None:
        if w.suppressed:
            self.logger.warning(
                "%d more such warnings (%s) in the last %.0f s",
                w.suppressed,
                kind,
                self.window_s,
            )
