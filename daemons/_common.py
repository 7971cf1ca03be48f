"""What every daemon shares: logging to the session, the fd limit, the lifeline, signals,
and services started on their first connection."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import signal
import socket
from collections.abc import Callable


def setup_logging(session_dir: str | None, name: str) -> None:
    level = os.environ.get("AIORAY_LOG_LEVEL", "INFO").upper()
    fmt = f"%(asctime)s %(levelname)s {name} %(process)d %(name)s: %(message)s"
    handlers: list[logging.Handler] = []
    if session_dir:
        path = os.path.join(session_dir, "logs", f"{name}.log")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        handlers.append(logging.FileHandler(path))
    if not session_dir or os.environ.get("AIORAY_LOG_TO_STDERR") == "1":
        handlers.append(logging.StreamHandler())  # aioray serve-node: the container's log
    logging.basicConfig(level=level, format=fmt, handlers=handlers)


def setup_worker_logging(session_dir: str | None) -> None:
    """A worker logs to ``<session>/logs/worker-<pid>.log``, never to its stderr: that
    is forwarded to the driver as the task's own output (``worker_output``)."""
    if not session_dir:
        return
    level = os.environ.get("AIORAY_LOG_LEVEL", "INFO").upper()
    pid = os.getpid()
    fmt = f"%(asctime)s %(levelname)s worker {pid} %(name)s: %(message)s"
    path = os.path.join(session_dir, "logs", f"worker-{pid}.log")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    logging.basicConfig(
        level=level, format=fmt, handlers=[logging.FileHandler(path, delay=True)], force=True
    )


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft limit on open files to the hard limit (a daemon holds one per
    peer); return (soft, hard) now in force. Children (workers) inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as e:  # e.g. an infinite hard limit on macOS
            logging.getLogger(__name__).warning("cannot raise the open-file limit: %s", e)
    return soft, hard


def watch_lifeline(fd: int | None, on_close: Callable[[], None]) -> None:
    """Call ``on_close`` when the parent's end of the lifeline pipe closes."""
    if fd is None:
        return
    loop = asyncio.get_running_loop()

    def readable() -> None:
        try:
            data = os.read(fd, 4096)
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(fd)
            on_close()

    loop.add_reader(fd, readable)


def install_signal_handlers(on_signal: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)


def listening_socket(fd: int | None, host: str, port: int) -> socket.socket | None:
    """The socket inherited from the launcher, if any (else the daemon binds itself)."""
    if fd is None:
        return None
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    return sock


async def wait_first_connection(sock: socket.socket, stopped: asyncio.Event) -> bool:
    """Wait until a connection waits in the listening ``sock``'s backlog (True), or until
    ``stopped`` is set (False). Nothing is accepted: whoever serves ``sock`` next does,
    so a service costs nothing until someone first asks for it."""
    loop = asyncio.get_running_loop()
    asked = asyncio.Event()
    loop.add_reader(sock.fileno(), asked.set)
    waits = [asyncio.ensure_future(asked.wait()), asyncio.ensure_future(stopped.wait())]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        loop.remove_reader(sock.fileno())
        for w in waits:
            w.cancel()
    return asked.is_set() and not stopped.is_set()
