"""A CoreWorker joining its cluster: its RPC server, its hello to the local raylet,
a driver's job registered with the GCS; and the loop thread a driver runs it on.

Owner floor. Each runs once per process, so nothing here is on a hot path. It sets
up most of the CoreWorker, so it takes it whole (as ``memory_report`` does).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import shlex
import sys
import threading
from typing import TYPE_CHECKING

from aioray._private.core.metrics_registry import MetricsReporter, Report
from aioray._private.owner import memory_report
from aioray._private.rpc import rpc
from aioray._private.rpc.loop import new_event_loop
from aioray._private.wire import job_records
from aioray._private.wire.schema import Hello, RayletHelloReply, RegisterJob, RegisterJobReply
from aioray.exceptions import LocalRayletDiedError

if TYPE_CHECKING:
    from aioray._private.owner.core_worker import CoreWorker

logger = logging.getLogger("aioray")

# Tasks pending on a driver's stopped loop: cancelled, then given this long to end, in
# up to this many rounds (each may start more, e.g. a cancelled wait_for's inner call).
LEFTOVER_WAIT_S = 1.0
LEFTOVER_ROUNDS = 3


class Lifecycle:
    """Starts a CoreWorker on its loop (``start``), or on a thread of its own."""

    def __init__(self, cw: CoreWorker) -> None:
        self.cw = cw
        self.thread: threading.Thread | None = None  # a driver's loop thread

    def __repr__(self) -> str:
        return f"<Lifecycle thread={self.thread.name if self.thread else None}>"

    async def start(self) -> RayletHelloReply:
        """(loop) Start the owner's RPC server and register with the local raylet (and,
        in a driver, the job with the GCS)."""
        cw = self.cw
        handlers = {
            **rpc.handlers_of(cw),
            "borrow": cw.borrowing.handle_borrow,
            **rpc.handlers_of(cw.owner_service),
            **cw.extra_handlers,
        }
        cw.server = rpc.Server(handlers)
        await cw.server.start(cw.node_ip, 0)
        cw.address = (cw.node_ip, cw.server.port, cw.worker_id)
        raylet_handlers: dict[str, rpc.Handler] = {
            "lease_infeasible": cw.handle_lease_infeasible,
            "worker_log": cw.handle_worker_log,
            "worker_oom_killed": cw.submitter.handle_worker_oom_killed,
            "memory_summary": lambda c, b, _: memory_report.process_summary(cw),
            "node_event": cw.submitter.remote_raylets.handle_node_event,
            **cw.extra_handlers,
        }
        hello: Hello = {
            "role": cw.mode,
            "worker_id": cw.worker_id,
            "pid": os.getpid(),
            "port": cw.server.port,
            "logs": cw.log_to_driver,
        }
        info: RayletHelloReply
        cw.raylet, info = await rpc.connect(
            *cw.raylet_address, handlers=raylet_handlers, hello=hello, name="raylet"
        )
        cw.node_id = info["node_id"]
        cw.session_id = info["session_id"]
        # object_store_memory, and its free bytes at the last answer (store_client)
        cw.store_capacity, cw.store_room = int(info.get("object_store_memory") or 0), 0
        if cw.gcs_address is None and info.get("gcs_address"):
            host, port = info["gcs_address"]
            cw.gcs_address = (host, int(port))
        cw.raylet.on_close.append(self._raylet_lost)
        cw.metrics_reporter = MetricsReporter(cw.loop, self._send_metrics)
        # ("driver": core_worker.DRIVER, which imports this module)
        if cw.mode == "driver" and cw.gcs_address is not None:
            gcs = await cw.gcs_connection()
            body: RegisterJob = {"pid": os.getpid(), "ns": cw.namespace, "ip": cw.node_ip}
            body["cmd"] = shlex.join(sys.orig_argv)  # Ray's entrypoint of a driver job
            body["sid"] = os.environ.get(job_records.SUBMISSION_ID_ENV)  # in a submitted job
            job: RegisterJobReply = await gcs.call("register_job", body)
            cw.job_id = job["job_id"]
            cw.namespace = cw.namespace or job["namespace"]
            if "task_events_ms" in job:  # the cluster's setting wins
                cw.event_buffer.set_interval(job["task_events_ms"])
        cw.event_buffer.start()
        return info

    def start_in_thread(self, timeout: float) -> RayletHelloReply:
        """Run the loop in a daemon thread (driver mode) and start the CoreWorker on it."""
        loop = new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            ready.set()
            run_until_stopped(loop)

        self.thread = threading.Thread(target=run, name="aioray-core-worker", daemon=True)
        self.thread.start()
        ready.wait()
        # An empty context: run_coroutine_threadsafe copies the caller's contextvars into
        # all the loop does; in Jupyter they route output to the init cell (prints land there).
        fut = contextvars.Context().run(asyncio.run_coroutine_threadsafe, self.cw.start(), loop)
        try:
            return fut.result(timeout)
        except BaseException:
            self.stop_thread()
            raise

    def stop_thread(self) -> None:
        """Stop the CoreWorker, then its loop and the thread running it (driver mode)."""
        if self.thread is None:
            return
        loop = self.cw.loop or None
        if loop is not None and loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(self.cw.stop(), loop).result(5)
            except Exception:
                logger.debug("core worker stop failed", exc_info=True)
            loop.call_soon_threadsafe(loop.stop)
        self.thread.join(5)
        self.thread = None

    def _send_metrics(self, report: Report) -> None:
        if not self.cw.raylet.is_closed:
            self.cw.raylet.notify("report_metrics", report)

    def _raylet_lost(self, conn: rpc.Connection) -> None:
        if not self.cw.closing:
            logger.error("lost the connection to the local raylet")
            self.cw.submitter.fail_all(LocalRayletDiedError())


def run_until_stopped(loop: asyncio.AbstractEventLoop) -> None:
    """Run a driver's loop until ``stop``, end the work still pending on it, close it."""
    try:
        loop.run_forever()
        _end_leftovers(loop)
    finally:
        # Its descriptors (epoll, eventfd, self-pipe, io_uring) would otherwise
        # stay open: six more per init/shutdown cycle of a long-lived driver.
        loop.close()


def _end_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel the tasks still pending on a stopped loop and let them end, as asyncio.run
    does. The stop lands at whatever turn the loop has reached: the connections
    ``CoreWorker.stop`` closed go on failing calls and starting tasks over the next
    turns (an owner asking a dead worker's raylet about its node), and a task never
    stepped leaves its coroutine unawaited (the collector's "coroutine ... was never
    awaited"). Callbacks queued in the last turn run first: they may start tasks."""
    for _ in range(LEFTOVER_ROUNDS):
        loop.run_until_complete(asyncio.sleep(0))
        tasks = asyncio.all_tasks(loop)
        if not tasks:
            return
        for task in tasks:
            task.cancel()
        done, _ = loop.run_until_complete(asyncio.wait(tasks, timeout=LEFTOVER_WAIT_S))
        for task in done:  # (retrieved: an error while cancelled is not news at shutdown)
            if not task.cancelled() and task.exception() is not None:
                logger.debug("a task ended with an error as the loop closed: %r", task)
    logger.debug("tasks still pending as the loop closes: %s", asyncio.all_tasks(loop))
