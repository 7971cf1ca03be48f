"""The task table as Chrome trace events (Perfetto, chrome://tracing), for
``aioray.timeline()`` and ``aioray timeline``.

One process row per node, one thread row per worker (by pid), and one complete ("X")
event per task execution, ``task::<function>``, from its RUNNING to its FINISHED or
FAILED time, with the task's ids in ``args``. Every task the GCS keeps is included
(``task_events_max_num_task_in_gcs``; no 10,000 cap).
"""

from __future__ import annotations

import json
from typing import Any

from aioray._private.owner.task_events import FAILED, FINISHED, RUNNING


def chrome_events(tasks: list[list[Any]]) -> list[dict[str, Any]]:
    """Trace events from the GCS's ``state_list_all_tasks`` rows."""
    nodes: dict[str, int] = {}
    threads: set[tuple[int, int]] = set()
    out: list[dict[str, Any]] = []
    for task_id, attempt, name, kind, node_id, pid, state, events in tasks:
        times = {rank: t for rank, t in events}
        start = times.get(RUNNING)
        end = times.get(FINISHED, times.get(FAILED))
        if start is None:
            continue
        row = nodes.setdefault(node_id, len(nodes) + 1)
        if (row, pid) not in threads:
            threads.add((row, pid))
            out.append(_meta("thread_name", row, f"worker {pid}", pid))
        out.append(
            {
                "name": f"task::{name}",
                "cat": kind.lower(),
                "ph": "X",
                "ts": start * 1e6,
                "dur": max(0.0, (end - start) * 1e6) if end is not None else 0.0,
                "pid": row,
                "tid": pid,
                "args": {"task_id": task_id, "attempt_number": attempt, "state": state},
            }
        )
    meta = [_meta("process_name", row, f"Node {node_id}") for node_id, row in nodes.items()]
    return meta + out


def _meta(kind: str, pid: int, name: str, tid: int = 0) -> dict[str, Any]:
    return {"name": kind, "ph": "M", "pid": pid, "tid": tid, "args": {"name": name}}


def write(events: list[dict[str, Any]], filename: str) -> None:
    with open(filename, "w") as f:
        json.dump(events, f)
