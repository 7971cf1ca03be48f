"""Placement groups, the caller's side: validation, the handle, tasks in bundles.

The GCS reserves the bundles (daemons/gcs/placement_groups.py). A task or actor
scheduled into a group asks for its resources renamed to the bundle's
(bundle_resources.py), which exist only on the nodes holding the bundles, so the
ordinary schedulers steer it there. Tasks without a group pay one dict lookup.
A running task remembers its group (``spec["pg"]``, a ``schema.Placement``);
with ``capture`` its child tasks without a strategy of their own join the group.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from aioray._private.core import bundle_resources
from aioray._private.core.scheduling_strategies import PlacementGroupSchedulingStrategy
from aioray._private.owner.object_ref import ObjectRef
from aioray._private.owner.worker_context import ensure_connected
from aioray._private.wire import config, ids, serialization
from aioray._private.wire.protocol import Buffer
from aioray._private.wire.schema import (
    CreatePlacementGroup,
    CreatePlacementGroupReply,
    Placement,
    PlacementGroupInfo,
    Resources,
)
from aioray.exceptions import RaySystemError

if TYPE_CHECKING:
    from aioray._private.owner.core_worker import CoreWorker
    from aioray._private.rpc import rpc

logger = logging.getLogger("aioray")

VALID_PLACEMENT_GROUP_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
_EXAMPLE = 'For example: [{"CPU": 1.0}, {"GPU": 1.0}].'

# The group an actor of this process was created in (its calls run in it).
_actor_placement: Placement | None = None
# Whether a task or actor of this process ever captured its child tasks: until then
# ``.remote()`` need not look at the running task's group (the hot path stays as it was).
capturing = False
_tasks: set[asyncio.Task[None]] = set()


class PlacementGroupID:
    """A placement group's id (Ray's ``PlacementGroupID``)."""

    __slots__ = ("_id",)

    def __init__(self, binary: bytes) -> None:
        self._id = binary

    def binary(self) -> bytes:
        """The id as bytes (16)."""
        return self._id

    def hex(self) -> str:
        """The id in hexadecimal."""
        return self._id.hex()

    def is_nil(self) -> bool:
        """True for the all-zero id (the empty placement group)."""
        return not any(self._id)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PlacementGroupID) and other._id == self._id

    def __hash__(self) -> int:
        return hash(self._id)

    def __repr__(self) -> str:
        return f"PlacementGroupID({self.hex()})"


class PlacementGroup:
    """A handle to a placement group: its id and bundles; ``ready()``, ``wait()``."""

    def __init__(self, id: PlacementGroupID, bundle_cache: list[dict[str, float]] | None = None):
        self.id = id
        self.bundle_cache = bundle_cache

    @staticmethod
    def empty() -> PlacementGroup:
        """The empty placement group (nil id, no bundles): Ray's ``PlacementGroup.empty()``."""
        return PlacementGroup(PlacementGroupID(bytes(16)), [])

    @property
    def is_empty(self) -> bool:
        """True for the empty placement group."""
        return self.id.is_nil()

    @property
    def bundle_specs(self) -> list[dict[str, float]]:
        """The bundles' resources, as given at creation."""
        if self.bundle_cache is None:
            info = _gcs_call("placement_group_table", self.id.binary())
            self.bundle_cache = list(info["bundles"]) if info else []
        return self.bundle_cache

    @property
    def bundle_count(self) -> int:
        """How many bundles the group has."""
        return len(self.bundle_specs)

    def ready(self) -> ObjectRef:
        """An ObjectRef that resolves (to this group) once every bundle is reserved.

        Works with ``get``, ``wait`` and ``await``."""
        cw = ensure_connected()
        oid = ids.object_id(cw.ids.task_id(cw.job_id), 1)
        cw.owned.add(oid)
        ref = ObjectRef(oid, cw.address)
        cw.post(_start_ready, cw, oid, self)
        return ref

    def wait(self, timeout_seconds: float = 30) -> bool:
        """Wait up to ``timeout_seconds`` for the group to be created; True if it is."""
        if isinstance(timeout_seconds, bool) or not isinstance(timeout_seconds, (int, float)):
            raise ValueError(f"timeout_seconds must be a number, got {timeout_seconds!r}.")
        state = _gcs_call(
            "wait_placement_group",
            [self.id.binary(), max(0.0, float(timeout_seconds))],
            timeout=float(timeout_seconds) + config.DAEMON_START_TIMEOUT_S,
        )
        return bool(state == "CREATED")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PlacementGroup) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __reduce__(self) -> Any:
        return (_rebuild, (self.id.binary(), self.bundle_cache))

    def __repr__(self) -> str:
        return f"PlacementGroup(id={self.id.hex()}, bundles={self.bundle_cache})"


def _rebuild(binary: bytes, bundles: list[dict[str, float]] | None) -> PlacementGroup:
    return PlacementGroup(PlacementGroupID(binary), bundles)


# -- the public calls ------------------------------------------------------------------------
def validate(bundles: Any, strategy: Any, lifetime: Any) -> None:
    """Raise ValueError naming what is wrong with a placement group's arguments."""
    if not isinstance(bundles, list):
        raise ValueError(f"Placement group bundles must be a list, got {type(bundles).__name__}.")
    if not bundles:
        raise ValueError(
            f"Bundles must be a non-empty list of resource dictionaries. {_EXAMPLE} "
            "Got an empty list instead."
        )
    for i, bundle in enumerate(bundles):
        if not isinstance(bundle, dict):
            raise ValueError(
                f"Bundle {i} must be a dict of resource name to amount, got {bundle!r}. {_EXAMPLE}"
            )
        for name, amount in bundle.items():
            if not isinstance(name, str):
                raise ValueError(f"Bundle {i}: resource names must be strings, got {name!r}.")
            if isinstance(amount, bool) or not isinstance(amount, (int, float)):
                raise ValueError(
                    f"Bundle {i}: the amount of {name!r} must be a number, got {amount!r}."
                )
            if amount < 0:
                raise ValueError(
                    f"Bundle {i}: the amount of {name!r} must be non-negative, got {amount!r}."
                )
            if name == bundle_resources.BUNDLE:
                raise ValueError(
                    f"Bundle {i}: {name!r} is a system reserved resource, "
                    "which is not allowed in placement groups."
                )
        if not bundle or all(amount == 0 for amount in bundle.values()):
            raise ValueError(
                f"Bundles cannot be an empty dictionary or resources with only 0 values. "
                f"Bundle {i} is {bundle!r}."
            )
    if strategy not in VALID_PLACEMENT_GROUP_STRATEGIES:
        raise ValueError(
            f"Invalid placement group strategy {strategy!r}. "
            f"Supported strategies are: {', '.join(VALID_PLACEMENT_GROUP_STRATEGIES)}."
        )
    if lifetime not in (None, "detached"):
        raise ValueError(
            f"Placement group `lifetime` argument must be either `None` or 'detached'. "
            f"Got {lifetime!r}."
        )


def create(
    bundles: list[dict[str, float]], strategy: str, name: str, lifetime: str | None
) -> PlacementGroup:
    validate(bundles, strategy, lifetime)
    if not isinstance(name, str):
        raise ValueError(f"The placement group name must be a string, got {name!r}.")
    cw = ensure_connected()
    pgid = ids.random_id(18)
    clean = [{k: float(v) for k, v in b.items() if v > 0} for b in bundles]
    body: CreatePlacementGroup = {
        "id": pgid,
        "name": name,
        "ns": cw.namespace,
        "bundles": clean,
        "strategy": strategy,
        "detached": lifetime == "detached",
        "job": cw.job_id,
    }
    if name:  # a taken name is refused: wait for the answer
        answer: CreatePlacementGroupReply = _gcs_call("create_placement_group", body)
        if "error" in answer:
            raise ValueError(answer["error"])
    else:  # nothing to refuse once validated: the GCS reads it before any later call
        _gcs_notify(cw, "create_placement_group", body)
    return PlacementGroup(PlacementGroupID(pgid), [dict(b) for b in bundles])


def remove(placement_group: PlacementGroup) -> None:
    if not isinstance(placement_group, PlacementGroup):
        raise TypeError(
            f"remove_placement_group() expects a PlacementGroup, got "
            f"{type(placement_group).__name__}."
        )
    _gcs_notify(ensure_connected(), "remove_placement_group", placement_group.id.binary())


def get_by_name(name: str) -> PlacementGroup:
    if not isinstance(name, str) or not name:
        raise ValueError("Please supply a non-empty value to get_placement_group")
    cw = ensure_connected()
    info = _gcs_call("get_placement_group", [name, cw.namespace])
    if info is None:
        raise ValueError(f"Failed to look up placement group with name: {name}")
    return PlacementGroup(PlacementGroupID(info["id"]), list(info["bundles"]))


def table(placement_group: PlacementGroup | None = None) -> dict[str, Any]:
    """Ray's placement_group_table(): one group's state, or every group's by id hex."""
    if placement_group is not None:
        info = _gcs_call("placement_group_table", placement_group.id.binary())
        return _ray_format(info) if info else {}
    return {rec["id"].hex(): _ray_format(rec) for rec in _gcs_call("placement_group_table")}


def _ray_format(rec: PlacementGroupInfo) -> dict[str, object]:
    nodes = rec["nodes"]
    return {
        "placement_group_id": rec["id"].hex(),
        "name": rec["name"],
        "bundles": dict(enumerate(rec["bundles"])),
        "bundles_to_node_id": {i: n.hex() for i, n in enumerate(nodes) if n is not None},
        "strategy": rec["strategy"],
        "state": rec["state"],
        "is_detached": rec["detached"],
        "stats": {"scheduling_state": rec["state"]},
    }


def current() -> PlacementGroup | None:
    """The group the calling task or actor runs in (None in a driver or outside one)."""
    cw = ensure_connected()
    ctx = cw.task_context.__dict__.get("pg") or _actor_placement
    if not ctx:
        return None
    return PlacementGroup(PlacementGroupID(ctx[0]), ctx[3] if len(ctx) > 3 else None)


# -- tasks and actors in a group -----------------------------------------------------------
def placement_of(cw: CoreWorker, opts: dict[str, Any]) -> Placement | None:
    """``[pg id, bundle index, capture, bundles]`` a task with ``opts`` runs in, or None."""
    strategy = opts.get("scheduling_strategy")
    if isinstance(strategy, PlacementGroupSchedulingStrategy):
        pg = strategy.placement_group
        index = strategy.placement_group_bundle_index
        capture = strategy.placement_group_capture_child_tasks
    elif strategy is None and opts.get("placement_group") not in (None, "default"):
        pg = opts["placement_group"]  # the legacy options
        index = opts.get("placement_group_bundle_index", -1)
        capture = opts.get("placement_group_capture_child_tasks")
    elif strategy is None:
        if not capturing:
            return None
        # __dict__: a missing attribute of a thread-local costs an exception (~1.5 µs).
        parent = cw.task_context.__dict__.get("pg") or _actor_placement
        if parent and parent[2]:  # the parent captures its child tasks
            return (parent[0], -1, True, parent[3] if len(parent) > 3 else None)
        return None
    else:
        return None
    if pg is None:
        return None
    if not isinstance(pg, PlacementGroup):
        raise ValueError(f"placement_group must be a PlacementGroup, got {type(pg).__name__}.")
    if pg.is_empty:
        return None
    check_index(pg, index)
    return (pg.id.binary(), index, bool(capture), pg.bundle_specs)


def check_index(pg: PlacementGroup, index: Any) -> None:
    count = pg.bundle_count
    if isinstance(index, bool) or not isinstance(index, int) or not -1 <= index < count:
        raise ValueError(
            f"placement group bundle index {index} is invalid. "
            f"Valid placement group indexes: 0 to {count - 1}."
        )


def rewrite(placement: Placement, request: Resources, name: str) -> Resources:
    """``request`` as resources of the group's bundle; ValueError if no bundle can hold it."""
    pgid, index, _, bundles = placement
    if bundles:
        candidates = [bundles[index]] if index >= 0 else bundles
        if not any(all(b.get(k, 0.0) + 1e-9 >= v for k, v in request.items()) for b in candidates):
            where = f"bundle {index}" if index >= 0 else "any bundle"
            raise ValueError(
                f"Cannot schedule {name} with the placement group because the resource "
                f"request {request} cannot fit into {where} of the placement group, {bundles}."
            )
    return bundle_resources.task_resources(pgid.hex(), index, request)


def set_actor_placement(placement: Placement | None) -> None:
    """(worker) This process hosts an actor created in ``placement``."""
    global _actor_placement
    _actor_placement = placement
    task_placement(placement)


def task_placement(placement: Placement | None) -> None:
    """(worker) A task runs in ``placement``: note whether it captures its children."""
    global capturing
    if placement and placement[2]:
        capturing = True


def handle_infeasible(conn: rpc.Connection, message: str, _: list[Buffer]) -> None:
    """The GCS says a group this job created cannot be placed: warn once (it does so once)."""
    logger.warning("%s", message)


# What a CoreWorker's GCS connection handles for placement groups.
GCS_HANDLERS: dict[str, rpc.Handler] = {"placement_group_infeasible": handle_infeasible}


# -- helpers -------------------------------------------------------------------------------------
def _start_ready(cw: CoreWorker, oid: bytes, pg: PlacementGroup) -> None:
    task = asyncio.ensure_future(_resolve_ready(cw, oid, pg))
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


async def _resolve_ready(cw: CoreWorker, oid: bytes, pg: PlacementGroup) -> None:
    try:
        gcs = await cw.gcs_connection()
        state = await gcs.call("wait_placement_group", [pg.id.binary(), None])
        if state == "CREATED":
            so = serialization.serialize(pg)
        else:
            err = RaySystemError(f"The placement group {pg.id.hex()} was removed before ready.")
            so = serialization.serialize(err, is_error=True)
    except Exception as e:  # the GCS went away
        so = serialization.serialize(RaySystemError(f"placement group ready(): {e}"), is_error=True)
    cw.store_result(oid, cw.store_serialized(oid, so, copy=False))


def _gcs_notify(cw: CoreWorker, method: str, body: Any) -> None:
    """Send a one-way message to the GCS, ordered before this thread's later GCS calls."""

    def send() -> None:
        gcs = cw.gcs
        if gcs is not None and not gcs.is_closed:
            gcs.notify(method, body)
        else:  # a worker's first GCS message: connect first
            task = asyncio.ensure_future(_connect_and_notify(cw, method, body))
            _tasks.add(task)
            task.add_done_callback(_tasks.discard)

    cw.post(send)


async def _connect_and_notify(cw: CoreWorker, method: str, body: Any) -> None:
    try:
        gcs = await cw.gcs_connection()
    except ConnectionError as e:
        logger.warning("cannot reach the GCS to send %s: %s", method, e)
        return
    gcs.notify(method, body)


def _gcs_call(method: str, body: Any = None, timeout: float | None = None) -> Any:
    cw = ensure_connected()

    async def call() -> Any:
        gcs = await cw.gcs_connection()
        return await gcs.call(method, body)

    return cw.run_sync(call(), timeout or config.DAEMON_START_TIMEOUT_S)
