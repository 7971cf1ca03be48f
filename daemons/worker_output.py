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

Ordering with results: a task's prints travel worker -> raylet -> driver while its
result goes worker -> owner, so a driver's ``get`` could return before the lines
arrive (and in a notebook they would land in the next cell). When a task wrote to
``sys.stdout``/``sys.stderr`` the executor calls ``sync()``: a numbered marker goes
into both pipes; each reader, on reaching it, forwards an empty ``worker_log`` that
carries the number (behind the task's lines, in stream order), and the execution
thread waits until both readers got there. The reply carries the number too, and
the driver's ``get`` waits (bounded) until it has seen that notice on both streams.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import TYPE_CHECKING, Any, Protocol

from aioray._private.owner.interfaces import Posts

if TYPE_CHECKING:
    from aioray._private.rpc import rpc


class OutputHost(Posts, Protocol):
    """What forwarding a worker's output uses of its CoreWorker: the raylet, on the loop."""

    @property
    def raylet(self) -> rpc.Connection: ...
    @property
    def node_ip(self) -> str: ...
    @property
    def actor_id(self) -> bytes | None: ...


# Written into the pipes, never forwarded: the rest of the line is the new name.
NAME_MARKER = b"\x00\x1eaioray-name:"
# Written into the pipes, never forwarded: the readers have reached it (see sync()).
SYNC_MARKER = b"\x00\x1eaioray-sync:"
SYNC_TIMEOUT_S = 1.0

current_name: str | None = None
"""The display name of what this worker runs now (set by ``set_current_name``)."""

_captured: OutputHost | None = None
_sync = threading.Condition()
_synced: dict[str, int] = {"stdout": 0, "stderr": 0}  # last sync marker each reader passed
_sync_seq = 0


class _CountingStream:
    """sys.stdout/sys.stderr, counting writes so a task that printed can be told apart."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return int(self._stream.write(text))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def writes() -> int:
    """How many times Python code has written to stdout/stderr in this worker."""
    out, err = sys.stdout, sys.stderr
    return getattr(out, "writes", 0) + getattr(err, "writes", 0)


def sync() -> int:
    """(execution thread) Wait until every line written so far has been forwarded;
    return the sync number the driver will see after those lines."""
    global _sync_seq
    if _captured is None:
        return 0
    with _sync:
        _sync_seq += 1
        seq = _sync_seq
    marker = SYNC_MARKER + str(seq).encode() + b"\n"
    for fd, stream in ((1, sys.stdout), (2, sys.stderr)):
        try:
            stream.flush()
            os.write(fd, marker)
        except (OSError, ValueError):
            pass
    with _sync:
        _sync.wait_for(lambda: min(_synced.values()) >= seq, SYNC_TIMEOUT_S)
    return seq


def capture(cw: OutputHost) -> None:
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
        setattr(sys, name, _CountingStream(stream))
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


def _pump(cw: OutputHost, r: int, original: int, stream: str) -> None:
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
        reached = 0
        if SYNC_MARKER in chunk or any(SYNC_MARKER in ln for ln in lines):
            kept = []
            for ln in lines:
                at = ln.find(SYNC_MARKER)
                if at < 0:
                    kept.append(ln)
                    continue
                if at:
                    kept.append(ln[:at])
                reached = max(reached, int(ln[at + len(SYNC_MARKER) :] or 0))
            lines = kept
        groups, name = split_names(lines, name)
        for label, text in groups:
            cw.post(_send, cw, stream, label, text, original)
        if reached:  # everything before the marker is posted: the notice follows it
            cw.post(_send_sync, cw, stream, reached)
            with _sync:
                _synced[stream] = reached
                _sync.notify_all()
        if not chunk:
            return


def _send_sync(cw: OutputHost, stream: str, seq: int) -> None:
    if cw.raylet is not None and not cw.raylet.is_closed:
        cw.raylet.notify("worker_log", [os.getpid(), cw.node_ip, stream, [], None, seq])


def _send(cw: OutputHost, stream: str, name: str | None, lines: list[str], original: int) -> None:
    if cw.raylet is not None and not cw.raylet.is_closed:
        cw.raylet.notify("worker_log", [os.getpid(), cw.node_ip, stream, lines, name])
    else:
        os.write(original, ("\n".join(lines) + "\n").encode())
