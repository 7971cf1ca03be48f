"""``aioray list|get|summary|timeline`` and ``aioray logs --actor-id/--task-id/--pid``:
Ray's state CLI over aioray.util.state, with its flags and output formats.

Formats: ``default`` and ``table`` print columns cut to the terminal's width,
``json`` and ``yaml`` print everything (YAML written here: no PyYAML needed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import aioray._private.core.state_schema as schema
from aioray.util import state

FORMATS = ("default", "json", "yaml", "table")
RESOURCE_CHOICES = [r.replace("_", "-") for r in schema.RESOURCES]
ADDRESS_HELP = (
    "the cluster's GCS host:port, or the http://host:port of its dashboard on this machine "
    "(default: $AIORAY_ADDRESS, else $RAY_ADDRESS, else this machine's cluster)"
)


def add_commands(sub: Any) -> None:
    """Add list, get, summary and timeline to the ``aioray`` parser."""
    lst = sub.add_parser("list", help="list tasks, actors, objects, nodes, jobs, workers...")
    lst.add_argument("resource", help=f"one of: {', '.join(RESOURCE_CHOICES)}")
    lst.add_argument(
        "-f",
        "--filter",
        action="append",
        default=[],
        help='a filter "key=value" or "key!=value" (repeatable; all must hold)',
    )
    lst.add_argument("--limit", type=int, default=schema.DEFAULT_LIMIT)
    lst.add_argument("--detail", action="store_true", help="every column")
    _common(lst)
    get = sub.add_parser("get", help="one task, actor, node, worker, job or placement group")
    get.add_argument("resource", help=f"one of: {', '.join(RESOURCE_CHOICES)}")
    get.add_argument("id")
    _common(get, default_format="yaml")
    summary = sub.add_parser("summary", help="tasks, actors or objects grouped and counted")
    summary.add_argument("resource", help="one of: tasks, actors, objects")
    _common(summary)
    timeline = sub.add_parser("timeline", help="write a Chrome trace of the tasks (Perfetto)")
    timeline.add_argument("--output", "-o", default=None, help="file (default: in /tmp)")
    timeline.add_argument("--address", default=None, help=ADDRESS_HELP)
    timeline.add_argument("--timeout", type=float, default=state.api.DEFAULT_TIMEOUT)


def _common(p: argparse.ArgumentParser, default_format: str = "default") -> None:
    p.add_argument("--format", choices=FORMATS, default=default_format)
    p.add_argument("--address", default=None, help=ADDRESS_HELP)
    p.add_argument("--timeout", type=float, default=state.api.DEFAULT_TIMEOUT)


def _fail(command: str, e: BaseException) -> int:
    print(f"aioray {command}: {e}", file=sys.stderr)
    return 1


def cmd_list(a: argparse.Namespace) -> int:
    try:
        resource = schema.check_resource(a.resource)
        filters = [schema.parse_filter(f) for f in a.filter]
        rows = getattr(state, f"list_{resource}")(
            address=a.address,
            filters=filters,
            limit=a.limit,
            timeout=a.timeout,
            detail=a.detail,
            raise_on_missing_output=False,
        )
    except (ValueError, ConnectionError, state.RayStateApiException) as e:
        return _fail("list", e)
    print(render(rows, a.format, schema.columns(resource, a.detail)))
    return 0


def cmd_get(a: argparse.Namespace) -> int:
    try:
        resource = schema.check_resource(a.resource)
        if resource == "objects":
            found: Any = state.get_objects(a.id, address=a.address, timeout=a.timeout)
        else:
            found = getattr(state, f"get_{resource[:-1]}")(a.id, a.address, a.timeout)
    except (ValueError, ConnectionError, state.RayStateApiException) as e:
        return _fail("get", e)
    if not found:
        return _fail("get", ValueError(f"no {resource[:-1].replace('_', ' ')} {a.id}"))
    rows = found if isinstance(found, list) else [found]
    print(render(rows, a.format, schema.columns(resource, True)))
    return 0


def cmd_timeline(a: argparse.Namespace) -> int:
    """Write every task the GCS keeps as a Chrome trace (no 10,000 cap)."""
    from aioray._private.node import chrome_trace

    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    path = a.output or os.path.join(tempfile.gettempdir(), f"aioray-timeline-{stamp}.json")
    try:
        rows = state.api.run_query(a.address, a.timeout, lambda q: q.timeline_tasks())
        chrome_trace.write(chrome_trace.chrome_events(rows), path)
    except (ValueError, ConnectionError, OSError, state.RayStateApiException) as e:
        return _fail("timeline", e)
    print(f"Trace file written to {path}: open it in https://ui.perfetto.dev or chrome://tracing")
    return 0


def cmd_summary(a: argparse.Namespace) -> int:
    try:
        resource = schema.check_resource(a.resource, schema.SUMMARY_RESOURCES)
        summary = getattr(state, f"summarize_{resource}")(address=a.address, timeout=a.timeout)
    except (ValueError, ConnectionError, state.RayStateApiException) as e:
        return _fail("summary", e)
    if a.format in ("json", "yaml"):
        print(render([summary], a.format, []))
        return 0
    print(summary_table(resource, summary["cluster"]))
    return 0


def summary_table(resource: str, cluster: dict[str, Any]) -> str:
    """Ray's ``ray summary`` layout: one row per group, its counts by state."""
    if resource == "tasks":
        head = (
            f"total_actor_scheduled: {cluster['total_actor_scheduled']}\n"
            f"total_actor_tasks: {cluster['total_actor_tasks']}\n"
            f"total_tasks: {cluster['total_tasks']}\n"
        )
        rows = [
            {"FUNC_OR_CLASS_NAME": k, "STATE_COUNTS": _counts(v["state_counts"]), "TYPE": v["type"]}
            for k, v in cluster["summary"].items()
        ]
    elif resource == "actors":
        head = f"total_actors: {cluster['total_actors']}\n"
        rows = [
            {"CLASS_NAME": k, "STATE_COUNTS": _counts(v["state_counts"])}
            for k, v in cluster["summary"].items()
        ]
    else:
        head = f"total_objects: {cluster['total_objects']}\n"
        rows = [
            {
                "CALLSITE": k,
                "TOTAL_OBJECTS": v["total_objects"],
                "TOTAL_SIZE_MB": f"{v['total_size_mb']:.3f}",
                "REF_TYPE_COUNTS": _counts(v["ref_type_counts"]),
            }
            for k, v in cluster["summary"].items()
        ]
    return "======== Summary ========\n" + head + "\n" + table(rows, list(rows[0]) if rows else [])


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))


# -- rendering ----------------------------------------------------------------------------------
def render(rows: Sequence[dict[str, Any]], fmt: str, columns: list[str]) -> str:
    if fmt == "json":
        return json.dumps([dict(r) for r in rows], indent=2, default=str)
    if fmt == "yaml":
        return "\n".join(to_yaml(dict(r)) if len(rows) == 1 else to_yaml([dict(r)]) for r in rows)
    return table([dict(r) for r in rows], [c for c in columns if any(c in r for r in rows)])


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """Columns sized to their contents, the widest cut so the table fits the terminal."""
    if not rows:
        return "(no rows)"
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    heads = [c.upper() for c in columns]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(heads)]
    room = shutil.get_terminal_size((160, 24)).columns - 2 * (len(columns) - 1)
    while sum(widths) > room and max(widths) > 8:
        widest = widths.index(max(widths))
        widths[widest] = max(8, widths[widest] - (sum(widths) - room))
    lines = ["  ".join(h[:w].ljust(w) for h, w in zip(heads, widths, strict=True)).rstrip()]
    for row in cells:
        lines.append(
            "  ".join(_cut(v, w).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
        )
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return str(value)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def to_yaml(value: Any, indent: int = 0) -> str:
    """Block-style YAML of JSON-like data (strings quoted when YAML would misread them)."""
    pad = " " * indent
    if isinstance(value, dict):
        if not value:
            return pad + "{}"
        out = []
        for k, v in value.items():
            if isinstance(v, (dict, list)) and v:
                out.append(f"{pad}{_scalar(str(k))}:\n{to_yaml(v, indent + 2)}")
            else:
                out.append(f"{pad}{_scalar(str(k))}: {_scalar(v)}")
        return "\n".join(out)
    if isinstance(value, list):
        if not value:
            return pad + "[]"
        out = []
        for v in value:
            if isinstance(v, (dict, list)) and v:
                inner = to_yaml(v, indent + 2)
                out.append(f"{pad}- {inner.lstrip()}")
            else:
                out.append(f"{pad}- {_scalar(v)}")
        return "\n".join(out)
    return pad + _scalar(value)


def _scalar(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (dict, list)):
        return "{}" if isinstance(v, dict) else "[]"
    text = str(v)
    plain = text and text.strip() == text and not any(ch in text for ch in ":#{}[],&*!|>'\"%@`\n")
    special = text.lower() in ("null", "true", "false", "yes", "no", "on", "off", "~")
    if plain and not special and not _looks_numeric(text):
        return text
    return json.dumps(text)  # a JSON string is a valid YAML double-quoted scalar


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# -- logs ---------------------------------------------------------------------------------------
def add_log_options(logs: argparse.ArgumentParser) -> None:
    """Ray's ``ray logs`` selectors, on top of ``aioray logs``' file names."""
    logs.add_argument("--actor-id", help="the log of the worker hosting this actor")
    logs.add_argument("--task-id", help="the log of the worker that ran this task")
    logs.add_argument("--pid", type=int, help="the log of the worker with this pid")
    logs.add_argument("--node-id", help="the node (with a file name or --pid)")
    logs.add_argument("--err", action="store_true", help="the worker's .err, not its .out")
    logs.add_argument("--address", default=None, help=ADDRESS_HELP)


def wants_state_logs(a: argparse.Namespace) -> bool:
    return bool(a.actor_id or a.task_id or a.pid or a.node_id)


def cmd_state_logs(a: argparse.Namespace) -> int:
    """``aioray logs --actor-id/--task-id/--pid/--node-id [name] [-n N] [-f]``."""
    try:
        if a.node_id and not (a.actor_id or a.task_id or a.pid) and not a.name:
            for nid, names in state.list_logs(address=a.address, node_id=a.node_id).items():
                print(f"Node {nid}:")
                for name in names:
                    print(f"  {name}")
            return 0
        chunks = state.get_log(
            address=a.address,
            node_id=a.node_id,
            filename=a.name,
            actor_id=a.actor_id,
            task_id=a.task_id,
            pid=a.pid,
            follow=a.follow,
            tail=a.lines,
            suffix="err" if a.err else "out",
            errors="replace",
        )
        for chunk in chunks:
            sys.stdout.write(chunk)
            sys.stdout.flush()
    except (ValueError, ConnectionError, OSError, state.RayStateApiException) as e:
        return _fail("logs", e)
    except KeyboardInterrupt:
        pass
    return 0
