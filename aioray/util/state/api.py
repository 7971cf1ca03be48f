"""Ray's ``ray.util.state`` functions: list, get and summarize a cluster's state; logs.

Each call opens a short connection to the cluster's GCS (``address``: None or "auto"
for this driver's cluster, else the one ``AIORAY_ADDRESS`` or ``RAY_ADDRESS`` names,
else this machine's; the GCS "host:port"; or the ``http://host:port`` of a dashboard
on this machine), runs one
``StateQuery`` (query.py) under ``timeout`` and closes it. Rows are dicts whose keys
are also attributes (``task.state`` or ``task["state"]``, as Ray's dataclasses allow).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable, Coroutine, Iterator
from functools import partial
from typing import Any

import aioray._private.core.state_schema as schema
from aioray._private.node import node
from aioray._private.node.state_query import StateQuery
from aioray._private.rpc import loop as _loop
from aioray._private.wire import auth
from aioray.exceptions import RayError

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 30


class RayStateApiException(RayError):
    """A State API query failed or its answer is incomplete (Ray's name)."""


class StateRow(dict[str, Any]):
    """One row: a dict whose keys read as attributes too."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class TaskState(StateRow):
    """Ray's TaskState."""


class ActorState(StateRow):
    """Ray's ActorState."""


class ObjectState(StateRow):
    """Ray's ObjectState."""


class NodeState(StateRow):
    """Ray's NodeState."""


class JobState(StateRow):
    """Ray's JobState."""


class WorkerState(StateRow):
    """Ray's WorkerState."""


class PlacementGroupState(StateRow):
    """Ray's PlacementGroupState."""


ROW_TYPES: dict[str, type[StateRow]] = {
    "tasks": TaskState,
    "actors": ActorState,
    "objects": ObjectState,
    "nodes": NodeState,
    "jobs": JobState,
    "workers": WorkerState,
    "placement_groups": PlacementGroupState,
}


def gcs_address_of(address: str | None) -> str:
    """The GCS "host:port" a State API ``address`` names."""
    if address in (None, "auto"):
        import aioray.api as api
        from aioray._private.owner import worker_context

        if api.connected_gcs_address():
            return api.connected_gcs_address()
        cw = worker_context.core_worker
        if cw is not None and cw.gcs_address is not None:  # inside a worker
            return f"{cw.gcs_address[0]}:{cw.gcs_address[1]}"
    return node.find_gcs_address(address)


def run_query(
    address: str | None, timeout: float, fn: Callable[[StateQuery], Coroutine[Any, Any, Any]]
) -> Any:
    """Run ``fn(query)`` against the cluster; ConnectionError or RayStateApiException
    within ``timeout`` seconds if it cannot be reached or does not answer."""
    gcs = gcs_address_of(address)
    token = node.token_for(gcs) if auth.enabled() else None

    async def main() -> Any:
        async with StateQuery(gcs, token, timeout) as query:
            return await fn(query)

    async def bounded() -> Any:
        try:
            return await asyncio.wait_for(main(), timeout)
        except asyncio.TimeoutError:
            raise RayStateApiException(
                f"The State API query to the cluster at {gcs} timed out after {timeout}s."
            ) from None

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _loop.run(bounded())
    # Called from a running loop (a notebook): run the query on a thread of its own.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(_loop.run, bounded()).result()


def _list(
    resource: str,
    address: str | None,
    filters: list[tuple[str, str, Any]] | None,
    limit: int,
    timeout: float,
    detail: bool,
    raise_on_missing_output: bool,
) -> list[StateRow]:
    schema.check_query(schema.check_resource(resource), filters, limit)  # fail before connecting
    answer = run_query(
        address, timeout, lambda q: q.list_resource(resource, filters, limit, detail)
    )
    check_complete(resource, answer, raise_on_missing_output)
    row_type = ROW_TYPES[resource]
    return [row_type(r) for r in answer["result"]]


def check_complete(resource: str, answer: dict[str, Any], raise_on_missing_output: bool) -> None:
    """Ray's behaviour on an incomplete answer: raise, or warn and go on."""
    problems = []
    if answer.get("partial_failure_warning"):
        problems.append(f"some nodes did not answer ({answer['partial_failure_warning']})")
    if answer["num_after_truncation"] < answer["total"]:
        problems.append(
            f"{answer['total'] - answer['num_after_truncation']} {resource} are missing: "
            f"{answer.get('num_tasks_evicted', 0)} evicted from the GCS past "
            f"task_events_max_num_task_in_gcs, {answer.get('num_status_task_events_dropped', 0)} "
            f"events dropped by full worker buffers"
        )
    if problems:
        text = f"Incomplete list of {resource}: " + "; ".join(problems) + "."
        if raise_on_missing_output:
            raise RayStateApiException(
                text + " Pass raise_on_missing_output=False to get the rows that remain."
            )
        logger.warning(text)
    returned, matched = len(answer["result"]), answer["num_filtered"]
    if returned < matched:
        logger.warning(
            "Limit last %d entries (Total %d). Use `--filter` to reduce the amount of data "
            "to return or setting a higher limit with `--limit` to see all data.",
            returned,
            matched,
        )


def _make_list(resource: str) -> Callable[..., list[StateRow]]:
    def list_fn(
        address: str | None = None,
        filters: list[tuple[str, str, Any]] | None = None,
        limit: int = schema.DEFAULT_LIMIT,
        timeout: float = DEFAULT_TIMEOUT,
        detail: bool = False,
        raise_on_missing_output: bool = True,
        _explain: bool = False,
    ) -> list[StateRow]:
        return _list(resource, address, filters, limit, timeout, detail, raise_on_missing_output)

    list_fn.__name__ = list_fn.__qualname__ = f"list_{resource}"
    list_fn.__doc__ = (
        f"List {resource.replace('_', ' ')} in the cluster (Ray's list_{resource}): at most "
        f"``limit`` rows passing every ``(key, '=' | '!=', value)`` filter."
    )
    return list_fn


list_tasks = _make_list("tasks")
list_actors = _make_list("actors")
list_objects = _make_list("objects")
list_nodes = _make_list("nodes")
list_jobs = _make_list("jobs")
list_workers = _make_list("workers")
list_placement_groups = _make_list("placement_groups")


def _get(resource: str, ident: str, address: str | None, timeout: float) -> list[StateRow]:
    if not isinstance(ident, str) or not ident:
        raise ValueError(f"get_{resource} takes an id as a hex string, got {ident!r}")
    rows = run_query(address, timeout, lambda q: q.get(resource, ident))
    return [ROW_TYPES[resource](r) for r in rows]


def get_task(
    id: str, address: str | None = None, timeout: float = DEFAULT_TIMEOUT, **_: Any
) -> TaskState | list[TaskState] | None:
    """The task with this id (its attempts as a list when it was retried), or None."""
    rows = _get("tasks", id, address, timeout)
    if not rows:
        return None
    return rows[0] if len(rows) == 1 else rows  # type: ignore[return-value]


def _get_one(resource: str) -> Callable[..., StateRow | None]:
    def get_fn(
        id: str, address: str | None = None, timeout: float = DEFAULT_TIMEOUT, **_: Any
    ) -> StateRow | None:
        rows = _get(resource, id, address, timeout)
        return rows[0] if rows else None

    name = resource[:-1]
    get_fn.__name__ = get_fn.__qualname__ = f"get_{name}"
    get_fn.__doc__ = f"The {name.replace('_', ' ')} with this id, or None (Ray's get_{name})."
    return get_fn


get_actor = _get_one("actors")
get_node = _get_one("nodes")
get_worker = _get_one("workers")
get_job = _get_one("jobs")
get_placement_group = _get_one("placement_groups")


def get_objects(
    id: str, address: str | None = None, timeout: float = DEFAULT_TIMEOUT, **_: Any
) -> list[ObjectState]:
    """Every reference to the object with this id, across the cluster."""
    return _get("objects", id, address, timeout)  # type: ignore[return-value]


def _summarize(resource: str, address: str | None, timeout: float) -> dict[str, Any]:
    summary = run_query(address, timeout, lambda q: q.summarize(resource))
    return {"cluster": summary}


def summarize_tasks(
    address: str | None = None, timeout: float = DEFAULT_TIMEOUT, **_: Any
) -> dict[str, Any]:
    """Tasks per function and state (Ray's TaskSummaries, under "cluster")."""
    return _summarize("tasks", address, timeout)


def summarize_actors(
    address: str | None = None, timeout: float = DEFAULT_TIMEOUT, **_: Any
) -> dict[str, Any]:
    """Actors per class and state (Ray's ActorSummaries, under "cluster")."""
    return _summarize("actors", address, timeout)


def summarize_objects(
    address: str | None = None, timeout: float = DEFAULT_TIMEOUT, **_: Any
) -> dict[str, Any]:
    """Object references grouped by call site (Ray's ObjectSummaries, under "cluster")."""
    return _summarize("objects", address, timeout)


def list_logs(
    address: str | None = None,
    node_id: str | None = None,
    node_ip: str | None = None,
    glob_filter: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> dict[str, list[str]]:
    """Log file names per node id (one node with ``node_id``/``node_ip``)."""

    async def fn(q: StateQuery) -> dict[str, list[str]]:
        nid = node_id or await _node_of_ip(q, node_ip)
        return await q.list_logs(nid, glob_filter)

    return dict(run_query(address, timeout, fn))


async def _node_of_ip(q: StateQuery, ip: str | None) -> str | None:
    if ip is None:
        return None
    for n in await q.nodes():
        if n["Alive"] and n["NodeManagerAddress"] == ip:
            return str(n["NodeID"])
    raise ValueError(f"no alive node at {ip}")


def get_log(
    address: str | None = None,
    node_id: str | None = None,
    node_ip: str | None = None,
    filename: str | None = None,
    actor_id: str | None = None,
    task_id: str | None = None,
    pid: int | None = None,
    follow: bool = False,
    tail: int = -1,
    timeout: float = DEFAULT_TIMEOUT,
    suffix: str = "out",
    encoding: str | None = "utf-8",
    errors: str | None = "strict",
    submission_id: str | None = None,
    attempt_number: int = 0,
    _interval: float | None = None,
) -> Iterator[str]:
    """Yield a log's text: a file of a node, or the worker of an actor, task or pid
    (its ``.out``, or ``.err`` with ``suffix="err"``). ``follow``: keep yielding."""
    if suffix not in ("out", "err"):
        raise ValueError(f"Invalid suffix: {suffix}. Must be one of 'out' or 'err'.")
    if not (filename or actor_id or task_id or pid):
        raise ValueError(
            "None of actor_id, task_id, pid or filename is provided. "
            "At least one of them is required to fetch logs."
        )

    async def locate(q: StateQuery) -> tuple[str, str]:
        nid = node_id or await _node_of_ip(q, node_ip)
        if filename:
            if nid is None:
                raise ValueError("node_id or node_ip is required with filename")
            return nid, filename
        where = await _worker_of(q, actor_id, task_id, attempt_number, pid, nid)
        return where[0], f"worker-{where[1]}.{suffix}"

    nid, name = run_query(address, timeout, locate)
    read = run_query(address, timeout, lambda q: q.read_log(nid, name, tail))
    yield read["data"].decode(encoding or "utf-8", errors or "strict")
    offset = read["offset"]
    while follow:
        time.sleep(_interval or 0.5)
        read = run_query(address, timeout, partial(_read_from, nid, name, offset))
        offset = read["offset"]
        if read["data"]:
            yield read["data"].decode(encoding or "utf-8", errors or "strict")


async def _read_from(node_id: str, name: str, offset: int, q: StateQuery) -> dict[str, Any]:
    return await q.read_log(node_id, name, -1, offset)


async def _worker_of(
    q: StateQuery,
    actor_id: str | None,
    task_id: str | None,
    attempt: int,
    pid: int | None,
    node_id: str | None,
) -> tuple[str, int]:
    """(node id, pid) of the worker that hosts an actor, ran a task, or has ``pid``."""
    if actor_id:
        rows = await q.get("actors", actor_id)
        if not rows or not rows[0]["pid"]:
            raise ValueError(f"actor {actor_id} is unknown or has no worker yet")
        return rows[0]["node_id"], rows[0]["pid"]
    if task_id:
        rows = [r for r in await q.get("tasks", task_id) if r["attempt_number"] == attempt]
        if not rows or not rows[0]["worker_pid"]:
            raise ValueError(f"task {task_id} (attempt {attempt}) is unknown or has not run")
        return rows[0]["node_id"], rows[0]["worker_pid"]
    answer = await q.list_resource("workers", [("pid", "=", pid)], schema.MAX_LIMIT, False)
    rows = [r for r in answer["result"] if node_id is None or r["node_id"] == node_id]
    if rows:
        return rows[0]["node_id"], int(pid or 0)
    if node_id is None:
        raise ValueError(f"no live worker with pid {pid}; pass node_id to read a dead one's log")
    return node_id, int(pid or 0)


def timeline(filename: str | None = None) -> list[dict[str, Any]] | None:
    """Ray's ``ray.timeline``: the tasks the GCS keeps as Chrome trace events (one row
    per node, one per worker; no 10,000 cap); returned, or written to ``filename``."""
    from aioray._private.node import chrome_trace

    events = chrome_trace.chrome_events(run_query(None, 60, lambda q: q.timeline_tasks()))
    if filename is None:
        return events
    chrome_trace.write(events, filename)
    return None
