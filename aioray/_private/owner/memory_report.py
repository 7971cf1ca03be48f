"""``aioray memory``: every object reference in the cluster, like ``ray memory``.

Three levels answer, each from its own tables:
- a CoreWorker (``memory_summary`` on its raylet connection): the objects its
  process references, with the kind of each hold and who owns it;
- a raylet (``memory_summary``): asks every driver and worker on its node, and adds
  its store's view of each object (in shared memory or spilled, and where);
- the CLI (any driver: aioray.cli.memory_summary): asks every alive raylet through the
  GCS node table, then prints one section per process and cluster-wide totals.
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aioray._private.owner.core_worker import CoreWorker

# Ray's names for the reference types, plus BORROWED for a ref owned elsewhere.
LOCAL = "LOCAL_REFERENCE"
BORROWED = "BORROWED"
PENDING = "USED_BY_PENDING_TASK"
CAPTURED = "CAPTURED_IN_OBJECT"
PINNED = "PINNED_IN_MEMORY"


def process_summary(cw: CoreWorker) -> dict[str, Any]:
    """(loop) This process's references: [object id, size, reference type, owner, location]."""
    pending: set[bytes] = set()
    for task in cw.submitter.tasks.values():
        pending.update(task.dep_ids)
    rows = []
    for oid, holds in cw.refs.snapshot().items():
        owned = oid in cw.owned
        obj = cw.memory_store.get(oid)
        if oid in pending:
            kind = PENDING
        elif holds.get("local"):
            kind = LOCAL if owned else BORROWED
        elif holds.get("contained"):
            kind = CAPTURED
        elif holds.get("pinned") or holds.get("borrowers"):
            kind = PINNED
        else:
            kind = BORROWED
        where = "" if obj is None else ("shm" if obj.in_shm else "inline")
        size = obj.size if obj is not None else -1
        rows.append([oid, size, kind, owned, holds.get("borrowers", 0), where])
    return {
        "pid": os.getpid(),
        "ip": cw.node_ip,
        "mode": cw.mode,
        "worker_id": cw.worker_id,
        "rows": rows,
    }


async def node_summary(peers: list[Any], store_view: dict[bytes, list[Any]]) -> dict[str, Any]:
    """(raylet loop) Every local process's summary, plus the node store's view of objects."""

    async def ask(conn: Any) -> Any:
        try:
            return await asyncio.wait_for(conn.call("memory_summary"), 5.0)
        except Exception:  # a process that cannot answer is left out of the report
            return None

    answers = await asyncio.gather(*[ask(c) for c in peers])
    return {"processes": [a for a in answers if a], "store": store_view}


async def cluster_summary(cw: CoreWorker) -> list[dict[str, Any]]:
    """(loop) Ask every alive raylet in the cluster."""
    gcs = await cw.gcs_connection()
    nodes = [n for n in await gcs.call("get_nodes") if n["Alive"]]

    async def ask(n: dict[str, Any]) -> dict[str, Any] | None:
        try:
            conn = await cw.connect_peer(n["NodeManagerAddress"], n["NodeManagerPort"])
            summary: dict[str, Any] = await conn.call("memory_summary")
        except Exception:  # a node that cannot answer is left out of the report
            return None
        summary["node"] = n["NodeManagerAddress"]
        return summary

    return [s for s in await asyncio.gather(*[ask(n) for n in nodes]) if s]


def _size(n: int) -> str:
    if n < 0:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


def format_report(nodes: list[dict[str, Any]], skip_pid: int | None = None) -> str:
    """The text ``aioray memory`` prints."""
    lines = ["======== Object references status ========"]
    store: dict[bytes, list[Any]] = {}
    for n in nodes:
        store.update(n.get("store") or {})
    totals = {LOCAL: 0, BORROWED: 0, PENDING: 0, CAPTURED: 0, PINNED: 0}
    count = 0
    for n in nodes:
        for p in n.get("processes", []):
            if p["pid"] == skip_pid or not p["rows"]:
                continue
            lines.append(f"--- {p['mode']} pid={p['pid']} at {p['ip']} ---")
            lines.append(
                f"{'Object ID':<42} {'Reference Type':<22} {'Size':>10}  {'Owner':<8} "
                f"{'Borrowers':>9}  Location"
            )
            for oid, size, kind, owned, borrowers, where in p["rows"]:
                state = store.get(oid)
                if state is not None:
                    size = state[0] if size < 0 else size
                    where = f"{state[1]} on {n['node']}" + (
                        f" ({state[2]})" if state[1] == "spilled" else ""
                    )
                lines.append(
                    f"{oid.hex():<42} {kind:<22} {_size(size):>10}  "
                    f"{'this' if owned else 'other':<8} {borrowers:>9}  {where}"
                )
                totals[kind] += 1
                count += 1
    in_shm = [v for v in store.values() if v[1] != "spilled"]
    spilled = [v for v in store.values() if v[1] == "spilled"]
    lines.append("--- Aggregate ---")
    lines.append(
        f"{count} reference(s): " + ", ".join(f"{v} {k}" for k, v in totals.items() if v)
        if count
        else "no object references"
    )
    lines.append(
        f"Object store: {len(in_shm)} object(s), {_size(sum(v[0] for v in in_shm))} in shared "
        f"memory; {len(spilled)} spilled, {_size(sum(v[0] for v in spilled))} on disk"
    )
    return "\n".join(lines)
