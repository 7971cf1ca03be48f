"""``progress(refs)``: a get that shows a progress bar while the refs complete.

Built on ``wait`` and ``get``: ``wait`` reports refs as they become ready, the bar
advances, and a final ``get`` returns the values in order (raising the first error,
as ``get`` does). The bar is tqdm's when tqdm is installed (the ``progress`` extra),
the notebook widget when ipywidgets is too; otherwise one plain line on stderr.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Protocol, TextIO

import aioray.api as api

# The plain bar redraws at most this often (it is a line of text, not a widget).
PLAIN_REFRESH_S = 0.1


class _Bar(Protocol):
    def update(self, n: int) -> Any: ...

    def close(self) -> Any: ...


class PlainBar:
    """The fallback bar: ``desc: 7/20 (35%)`` redrawn in place on ``file``."""

    def __init__(self, total: int, desc: str | None = None, file: TextIO | None = None) -> None:
        self.total = total
        self.n = 0
        self.desc = desc or "aioray.get"
        self.file = file if file is not None else sys.stderr
        self._last_draw = 0.0
        self._drawn = -1  # the count on screen
        self._draw()

    def __repr__(self) -> str:
        return f"<PlainBar {self.desc!r} {self.n}/{self.total}>"

    def update(self, n: int) -> None:
        """Advance by ``n``; redrawn at most every PLAIN_REFRESH_S, and at the end."""
        self.n += n
        now = time.monotonic()
        if self.n >= self.total or now - self._last_draw >= PLAIN_REFRESH_S:
            self._draw()

    def close(self) -> None:
        """Draw the final count and end the line."""
        if self._drawn != self.n:
            self._draw()
        self._write("\n")

    def _draw(self) -> None:
        self._last_draw = time.monotonic()
        self._drawn = self.n
        pct = 100 * self.n // self.total if self.total else 100
        self._write(f"\r{self.desc}: {self.n}/{self.total} ({pct}%)")

    def _write(self, text: str) -> None:
        try:
            self.file.write(text)
            self.file.flush()
        except (OSError, ValueError):  # a closed stream must not break the get
            pass


def _in_notebook() -> bool:
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def make_bar(total: int, desc: str | None = None) -> _Bar:
    """tqdm's notebook widget, tqdm's text bar, or a PlainBar, whichever is available."""
    try:
        from tqdm import tqdm
    except ImportError:
        return PlainBar(total, desc)
    if _in_notebook():
        try:
            import ipywidgets  # noqa: F401  (tqdm.notebook needs it)
            from tqdm.notebook import tqdm as notebook_tqdm

            bar: _Bar = notebook_tqdm(total=total, desc=desc)
            return bar
        except ImportError:
            pass
    # A text bar on stderr; Jupyter redraws it in place (it understands "\r").
    bar = tqdm(total=total, desc=desc, file=sys.stderr)
    return bar


def progress(object_refs: Any, desc: str | None = None, *, timeout: float | None = None) -> Any:
    """Like ``aioray.get(object_refs)``, showing a progress bar until every ref is ready.

    ``object_refs`` is one ObjectRef or a list of them; the values come back in the
    same shape and order. ``timeout`` bounds the whole wait (GetTimeoutError).
    """
    refs, _ = api.check_refs(object_refs, "get")  # get's own TypeErrors
    pending = list(dict.fromkeys(refs))  # wait needs unique refs; duplicates count once
    deadline = None if timeout is None else time.monotonic() + timeout
    bar = make_bar(len(pending), desc)
    try:
        while pending:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, pending = api.wait(pending, num_returns=1, timeout=left)
            if not ready:
                break  # timed out: get below raises GetTimeoutError
            # Take every other ref that is ready by now, so a burst is one update.
            if pending:
                more, pending = api.wait(pending, num_returns=len(pending), timeout=0)
                ready += more
            bar.update(len(ready))
    finally:
        bar.close()
    left = None if deadline is None else max(0.0, deadline - time.monotonic())
    return api.get(object_refs, timeout=left)


api.progress_bar = progress
