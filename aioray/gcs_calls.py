"""The public API's calls the GCS answers: nodes and their resources, named actors,
``kill``; and ``gcs_call``, one request to the GCS from any thread of this process.

Public floor, under ``api``, which re-exports every name here (Ray's paths are
``ray.nodes``, ``ray.get_actor``, ...). Cold code: each call is one round trip.
"""

from __future__ import annotations

from typing import Any

from aioray._private.owner import worker_context
from aioray._private.owner.worker_context import ensure_connected
from aioray._private.wire import config
from aioray._private.wire.schema import KILLED_BY_RAY_KILL
from aioray.exceptions import ActorHandleNotFoundError


def gcs_call(method: str, body: Any = None) -> Any:
    """One request to the GCS from this process (any thread but the CoreWorker's loop): its
    reply, ``body`` being the method's message (wire/schema.py); connects first if needed."""
    cw = ensure_connected()

    async def call() -> Any:
        gcs = await cw.gcs_connection()
        return await gcs.call(method, body)

    return cw.run_sync(call(), config.DAEMON_START_TIMEOUT_S)


def kill(actor: Any, *, no_restart: bool = True) -> None:
    """Kill an actor at once; with ``no_restart=False`` it may restart (max_restarts)."""
    from aioray.actor import ActorHandle

    if not isinstance(actor, ActorHandle):
        raise ValueError(f"ray.kill() only supports actors; got {type(actor).__name__}.")
    cw = worker_context.core_worker
    if actor._cw is not cw:  # made before a shutdown(): Ray's handles are per session too
        now = cw.job_id.hex() if cw is not None else "(none: not connected)"
        raise ActorHandleNotFoundError(
            "ActorHandle objects are not valid across Ray sessions. The actor handle was "
            f"created in job {actor._cw.job_id.hex()}, but the current job is {now}. This "
            "typically happens when you try to use an actor handle from a previous session "
            "after calling ray.shutdown() and ray.init(). Please create a new actor handle in "
            "the current session."
        )
    if gcs_call("kill_actor", [actor._actor_id, no_restart]) and no_restart:
        # Calls made from here on fail, as in Ray, though the worker may still be exiting
        # (posted: it runs before any call this thread submits next).
        cw.actors.doom(actor._actor_id)  # (no call of this thread may overtake the post)
        cw.post(cw.actors.killed, actor._actor_id, KILLED_BY_RAY_KILL)


def get_actor(name: str, namespace: str | None = None) -> Any:
    """The handle of the named actor in ``namespace`` (default: this job's)."""
    from aioray.actor import ActorHandle

    if not isinstance(name, str) or not name:
        raise ValueError(f"Please supply a non-empty actor name, got {name!r}.")
    cw = ensure_connected()
    ns = namespace if namespace is not None else cw.namespace
    info = gcs_call("get_named_actor", [name, ns])
    if info is None:
        raise ValueError(f"Failed to look up actor with name '{name}' in namespace '{ns}'.")
    return ActorHandle(info["aid"], info["meta"])


def list_named_actors(all_namespaces: bool = False) -> list[Any]:
    """Names of live named actors: this namespace's, or dicts for all namespaces."""
    cw = ensure_connected()
    found = gcs_call("list_named_actors", [cw.namespace, all_namespaces])
    if all_namespaces:
        return [{"name": a["name"], "namespace": a["namespace"]} for a in found]
    return [a["name"] for a in found]


def nodes() -> list[dict[str, Any]]:
    """One dict per node, with Ray's keys (NodeID, Alive, Resources, ...)."""
    return list(gcs_call("get_nodes"))


def cluster_resources() -> dict[str, float]:
    """Total resources of all alive nodes."""
    return _sum_resources("Resources")


def available_resources() -> dict[str, float]:
    """Resources not currently in use, over all alive nodes."""
    return _sum_resources("Available")


def _sum_resources(key: str) -> dict[str, float]:
    total: dict[str, float] = {}
    for n in nodes():
        if n["Alive"]:
            for k, v in n[key].items():
                total[k] = total.get(k, 0.0) + v
    return {k: v for k, v in total.items() if v > 0 or key == "Resources"}
