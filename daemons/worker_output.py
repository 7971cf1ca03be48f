"""A worker's stdout and stderr, forwarded to the drivers through the raylet.

File descriptors 1 and 2 are redirected into pipes, so C extensions and
subprocesses are captured too; a reader thread per pipe hands complete lines to
the CoreWorker loop (one batched post however many lines), which sends them to
the raylet as ``worker_log [pid, ip, stream, lines, name]``. If the raylet is
gone the lines go to the original descriptors instead, so nothing is lost.

``name`` is what ran when the line was written (a task's name, or an actor's
class). The executor announces it with ``set_current_name`` before each task,
which writes a marker line into both pipes: the reader learns the new name
exactly where it falls among the bytes, so a task's last lines still carry its
own name even when they are read after the next task has started (as Ray's
``:task_name:`` markers do).
"""

from __future__ import annotations

import os
import sys
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aioray.core_worker import CoreWorker

# Written into the pipes, never forwarded: the rest of the line is the new name.
NAME_MARKER = b"\x00\x1eaioray-name:"

current_name: str | None = None
"""The display name of what this worker runs now (set by ``set_current_name``)."""

_captured: CoreWorker | None = None


def capture(cw: CoreWorker) -> None:
    """Redirect fds 1 and 2 into pipes read by threads that forward lines to ``cw``."""
    global _captured
    _captured = cw
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


def set_current_name(spec_name: str) -> None:
    """(execution thread) Label the output from now on with the task ``spec_name``.

    In a worker that hosts an actor, spec names are ``Cls.method`` and the label is
    the class, as in Ray's ``(Counter pid=…)``. Costs nothing unless the label
    changes.
    """
    global current_name
    cw = _captured
    if cw is None:  # output is not captured: nothing to label
        return
    name = display_name(spec_name, actor=cw.actor_id is not None)
    if name == current_name:
        return
    current_name = name
    marker = NAME_MARKER + name.encode("utf-8", "replace").replace(b"\n", b" ") + b"\n"
    for fd, stream in ((1, sys.stdout), (2, sys.stderr)):
        try:
            stream.flush()  # a partial line belongs to the previous name
            os.write(fd, marker)
        except (OSError, ValueError):
            pass


def display_name(spec_name: str, actor: bool) -> str:
    """``f`` for a task ``test.<locals>.f``; ``Counter`` for an actor's ``Counter.incr``."""
    if actor:
        return spec_name.rpartition(".")[0].rpartition(".")[2] or spec_name
    return spec_name.rpartition(".<locals>.")[2]


def split_names(
    lines: list[bytes], name: str | None
) -> tuple[list[tuple[str | None, list[str]]], str | None]:
    """Group ``lines`` by the name in force, consuming markers; return the groups and
    the name in force after them."""
    groups: list[tuple[str | None, list[str]]] = []

    def add(text: bytes) -> None:
        line = text.decode("utf-8", "replace")
        if groups and groups[-1][0] == name:
            groups[-1][1].append(line)
        else:
            groups.append((name, [line]))

    for raw in lines:
        at = raw.find(NAME_MARKER)
        if at < 0:
            add(raw)
            continue
        if at:  # text written without a newline before the next task began
            add(raw[:at])
        name = raw[at + len(NAME_MARKER) :].decode("utf-8", "replace")
    return groups, name


def _pump(cw: CoreWorker, r: int, original: int, stream: str) -> None:
    pending = b""
    name: str | None = None
    while True:
        try:
            chunk = os.read(r, 65536)
        except OSError:
            chunk = b""
        if not chunk:  # the worker is exiting: forward an unterminated last line
            lines, pending = ([pending] if pending else []), b""
        else:
            pending += chunk
            *lines, pending = pending.split(b"\n")
        groups, name = split_names(lines, name)
        for label, text in groups:
            cw.post(_send, cw, stream, label, text, original)
        if not chunk:
            return


def _send(cw: CoreWorker, stream: str, name: str | None, lines: list[str], original: int) -> None:
    if cw.raylet is not None and not cw.raylet.is_closed:
        cw.raylet.notify("worker_log", [os.getpid(), cw.node_ip, stream, lines, name])
    else:
        os.write(original, ("\n".join(lines) + "\n").encode())
