"""The fork server: a warm template that forks workers in milliseconds.

It imports what a worker needs (and freezes it: see main), then waits on its control
socket for one JSON line per worker: ``{"args": {...}, "env": {...}, "runtime_env":
{...}, "cwd": ..., "path": [...]}`` (the last three from the node's runtime-env
agent); it forks, answers
``{"pid": N}``, and the child becomes a worker. The server holds no threads and
no event loop, so forking is safe. Children are reaped by the kernel
(SIGCHLD ignored); a child restores default signal handling first.
"""

# ruff: noqa: E402  (the collector is disabled before the imports)

from __future__ import annotations

import gc

# No collection while the template is built: one would leave freed holes in the pages
# the workers share, and write to every object's header (main freezes them all).
gc.disable()

import argparse
import importlib
import json
import os
import signal
import socket
import sys
from typing import Any

# Imported here so that every forked worker starts with them loaded.
import cloudpickle  # noqa: F401
import msgpack  # noqa: F401
import numpy
import numpy.random  # (numpy loads it on first use: otherwise in each worker, privately)
from aioray.daemons import worker

from aioray._private.owner import worker_context

# The public API, which tasks use: ``import aioray`` loads it on first use of a name. It
# is named, not imported: the daemons sit below it, the user's code above it.
USER_API = ("aioray", "init")


def main() -> None:
    p = argparse.ArgumentParser(prog="aioray.daemons.forkserver")
    p.add_argument("--control-fd", type=int, required=True)
    p.add_argument("--session-dir", default="")
    a = p.parse_args()
    module, name = USER_API
    getattr(importlib.import_module(module), name)
    control = socket.socket(fileno=a.control_fd)
    stream = control.makefile("rwb")
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    signal.signal(
        signal.SIGINT, signal.SIG_IGN
    )  # Ctrl-C in the driver's terminal is for the driver
    for line in _requests(stream):
        try:
            request = json.loads(line)
            if not isinstance(request, dict) or not isinstance(request.get("args"), dict):
                raise ValueError("no worker arguments")
        except ValueError as e:
            _answer(stream, {"error": f"malformed fork request {line[:80]!r}: {e!r}"})
            continue
        # Every object so far moves to the permanent generation: a worker's collections
        # never write to their headers, so the pages holding them stay shared.
        gc.freeze()
        pid = os.fork()
        if pid == 0:
            stream.close()
            control.close()
            _become_worker(request)  # never returns
        _answer(stream, {"pid": pid})
    sys.exit(0)


def _answer(stream: Any, reply: dict[str, Any]) -> None:
    try:
        stream.write(json.dumps(reply).encode() + b"\n")
        stream.flush()
    except (BrokenPipeError, ConnectionResetError):
        os._exit(0)  # the raylet is gone (shutting down): so are we, without a flush


def _requests(stream: Any) -> Any:
    """The raylet's request lines until it goes; a reset (it closed with our answer
    unread) is a close too, not an error to print on the user's terminal."""
    try:
        yield from stream
    except ConnectionResetError:
        return


def _become_worker(request: dict[str, Any]) -> None:
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        gc.enable()  # (the template's objects stay frozen)
        os.environ.update(request.get("env") or {})
        worker_context.job_runtime_env = dict(request.get("runtime_env") or {})  # inherited
        if request.get("path"):  # the runtime env's working_dir first, then its py_modules
            sys.path[:0] = request["path"]
        if request.get("cwd"):
            os.chdir(request["cwd"])
        numpy.random.seed()  # forked children would otherwise share one RNG state
        worker.main(request["args"])
        code = 0
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    main()
