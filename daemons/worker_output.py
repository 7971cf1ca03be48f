"""A worker's stdout and stderr, forwarded to the drivers through the raylet.

File descriptors 1 and 2 are redirected into pipes, so C extensions and
subprocesses are captured too; a reader thread per pipe hands complete lines to
the CoreWorker loop (one batched post however many lines), which sends them to
the raylet as ``worker_log``. If the raylet is gone the lines go to the original
descriptors instead, so nothing is lost.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aioray.core_worker import CoreWorker


def capture(cw: CoreWorker) -> None:
    for fd, name in ((1, "stdout"), (2, "stderr")):
        original = os.dup(fd)
        r, w = os.pipe()
        os.dup2(w, fd)
        os.close(w)
        stream = getattr(sys, name)
        stream.reconfigure(line_buffering=True)  # a print reaches the driver at once
        threading.Thread(
            target=_pump, args=(cw, r, original, name), name=f"aioray-{name}", daemon=True
        ).start()


def _pump(cw: CoreWorker, r: int, original: int, name: str) -> None:
    pending = b""
    while True:
        try:
            chunk = os.read(r, 65536)
        except OSError:
            return
        if not chunk:
            return
        pending += chunk
        *lines, pending = pending.split(b"\n")
        if lines:
            text = [ln.decode("utf-8", "replace") for ln in lines]
            cw.post(_send, cw, name, text, original)


def _send(cw: CoreWorker, name: str, lines: list[str], original: int) -> None:
    if cw.raylet is not None and not cw.raylet.is_closed:
        cw.raylet.notify("worker_log", [os.getpid(), cw.node_ip, name, lines])
    else:
        os.write(original, ("\n".join(lines) + "\n").encode())
