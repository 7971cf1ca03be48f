"""The State API's resources, their columns (Ray's names) and filters: pure functions.

Shared by the sources that answer queries (the GCS filters its tables before the
limit) and by the clients (the Python API, the CLI, the dashboard's routes),
so a bad query fails the same way everywhere, before anything is sent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from aioray._private.wire.schema import StateListReply

# Ray's RAY_MAX_LIMIT_FROM_API_SERVER: the largest ``limit`` a query may ask for.
MAX_LIMIT = 10_000
DEFAULT_LIMIT = 100
PREDICATES = ("=", "!=")

# resource -> columns: (name, filterable, detail only), in Ray's order (StateSchema).
COLUMNS: dict[str, tuple[tuple[str, bool, bool], ...]] = {
    "tasks": (
        ("task_id", True, False),
        ("attempt_number", True, False),
        ("name", True, False),
        ("state", True, False),
        ("job_id", True, False),
        ("actor_id", True, False),
        ("type", True, False),
        ("func_or_class_name", True, False),
        ("parent_task_id", True, False),
        ("node_id", True, False),
        ("worker_id", True, False),
        ("worker_pid", True, False),
        ("error_type", True, False),
        ("language", True, True),
        ("required_resources", False, True),
        ("runtime_env_info", False, True),
        ("placement_group_id", True, True),
        ("events", False, True),
        ("profiling_data", False, True),
        ("creation_time_ms", False, True),
        ("start_time_ms", False, True),
        ("end_time_ms", False, True),
        ("task_log_info", False, True),
        ("error_message", False, True),
        ("is_debugger_paused", True, True),
    ),
    "actors": (
        ("actor_id", True, False),
        ("class_name", True, False),
        ("state", True, False),
        ("job_id", True, False),
        ("name", True, False),
        ("node_id", True, False),
        ("pid", True, False),
        ("ray_namespace", True, False),
        ("serialized_runtime_env", False, True),
        ("required_resources", False, True),
        ("death_cause", False, True),
        ("is_detached", False, True),
        ("placement_group_id", True, True),
        ("repr_name", True, True),
        ("num_restarts", False, True),
        ("num_restarts_due_to_lineage_reconstruction", False, True),
    ),
    "placement_groups": (
        ("placement_group_id", True, False),
        ("name", True, False),
        ("creator_job_id", True, False),
        ("state", True, False),
        ("bundles", False, True),
        ("is_detached", True, True),
        ("stats", False, True),
    ),
    "nodes": (
        ("node_id", True, False),
        ("node_ip", True, False),
        ("is_head_node", True, False),
        ("state", True, False),
        ("state_message", False, False),
        ("node_name", True, False),
        ("resources_total", False, False),
        ("resources_available", False, True),
        ("labels", False, False),
        ("start_time_ms", False, True),
        ("end_time_ms", False, True),
    ),
    "jobs": (
        ("job_id", True, False),
        ("submission_id", True, False),
        ("entrypoint", False, False),
        ("type", True, False),
        ("status", True, False),
        ("message", False, False),
        ("error_type", False, False),
        ("driver_info", False, False),
        ("start_time", False, True),
        ("end_time", False, True),
        ("metadata", False, True),
        ("runtime_env", False, True),
    ),
    "workers": (
        ("worker_id", True, False),
        ("is_alive", True, False),
        ("worker_type", True, False),
        ("exit_type", True, False),
        ("node_id", True, False),
        ("ip", True, False),
        ("pid", True, False),
        ("exit_detail", False, True),
        ("worker_launch_time_ms", False, True),
        ("worker_launched_time_ms", False, True),
        ("start_time_ms", False, True),
        ("end_time_ms", False, True),
        ("debugger_port", True, True),
        ("num_paused_threads", True, True),
    ),
    "objects": (
        ("object_id", True, False),
        ("object_size", True, False),
        ("task_status", True, False),
        ("reference_type", True, False),
        ("call_site", True, False),
        ("type", True, False),
        ("pid", True, False),
        ("ip", True, False),
    ),
}
RESOURCES = tuple(COLUMNS)
SUMMARY_RESOURCES = ("tasks", "actors", "objects")
# The id column ``get_<resource>(id)`` looks up.
ID_COLUMN = {
    "tasks": "task_id",
    "actors": "actor_id",
    "placement_groups": "placement_group_id",
    "nodes": "node_id",
    "jobs": "job_id",
    "workers": "worker_id",
    "objects": "object_id",
}

Filter = tuple[str, str, str]  # (column, "=" or "!=", lower-cased text)
StateRow = Mapping[str, object]  # one row of a resource: column -> value (Ray's JSON)


def check_resource(resource: str, choices: Sequence[str] = RESOURCES) -> str:
    """``resource`` normalized ("placement-groups" is "placement_groups"); ValueError if unknown."""
    name = str(resource).replace("-", "_").lower()
    if name not in choices:
        raise ValueError(
            f"Unknown resource {resource!r}. Valid choices: "
            f"{', '.join(c.replace('_', '-') for c in choices)}."
        )
    return name


def filterable_columns(resource: str) -> list[str]:
    return [name for name, filterable, _ in COLUMNS[resource] if filterable]


def columns(resource: str, detail: bool) -> list[str]:
    return [name for name, _, only_detail in COLUMNS[resource] if detail or not only_detail]


def check_query(resource: str, filters: Iterable[object] | None, limit: object) -> list[Filter]:
    """Validate a list query (the caller's filters and limit, as given); return its filters
    as (column, predicate, lower-cased text)."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 0 < limit <= MAX_LIMIT:
        raise ValueError(
            f"limit must be an integer between 1 and {MAX_LIMIT} (the maximum, as Ray's "
            f"RAY_MAX_LIMIT_FROM_API_SERVER), got {limit!r}."
        )
    out: list[Filter] = []
    valid = filterable_columns(resource)
    for f in filters or ():
        if not isinstance(f, (tuple, list)) or len(f) != 3:
            raise ValueError(f"A filter is a (key, predicate, value) tuple, got {f!r}.")
        key, predicate, value = f
        if predicate not in PREDICATES:
            raise ValueError(
                f"Unsupported filter predicate {predicate!r} is given. "
                f"Available predicates: {', '.join(PREDICATES)}."
            )
        if key not in valid:
            raise ValueError(
                f"The given filter column {key!r} is not supported for {resource}. "
                f"Supported filter columns: {', '.join(valid)}."
            )
        out.append((str(key), str(predicate), text(value)))
    return out


def text(value: object) -> str:
    """How a value compares in a filter: its text, case-insensitively (None is "")."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).lower()


def matcher(
    filters: list[Filter], get: Callable[[StateRow, str], object] = lambda row, key: row.get(key)
) -> Callable[[StateRow], bool]:
    """A predicate true for rows that pass every filter (``get(row, column)`` reads one)."""
    if not filters:
        return lambda row: True

    def match(row: StateRow) -> bool:
        for key, predicate, value in filters:
            equal = text(get(row, key)) == value
            if equal != (predicate == "="):
                return False
        return True

    return match


def project(row: StateRow, resource: str, detail: bool) -> dict[str, object]:
    """The row with the resource's columns (all with ``detail``), missing ones None."""
    return {name: row.get(name) for name in columns(resource, detail)}


def parse_filter(text_filter: str) -> Filter:
    """A CLI filter ``key=value`` or ``key!=value`` as a (key, predicate, value) tuple."""
    for predicate in ("!=", "="):
        key, sep, value = text_filter.partition(predicate)
        if sep and key:
            return (key.strip(), predicate, value.strip())
    raise ValueError(
        f"Invalid filter {text_filter!r}: expected key=value or key!=value "
        f"(e.g. --filter 'state=RUNNING')."
    )


def filter_rows(
    rows: Iterable[StateRow],
    resource: str,
    filters: list[Filter],
    limit: int,
    detail: bool,
    match: Callable[[StateRow], bool] | None = None,
) -> StateListReply:
    """Ray's list response over ``rows``: every row filtered, then the first ``limit``."""
    match = match or matcher(filters)
    total = matched = 0
    result = []
    for row in rows:
        total += 1
        if match(row):
            matched += 1
            if matched <= limit:
                result.append(project(row, resource, detail))
    return {
        "total": total,
        "num_after_truncation": total,
        "num_filtered": matched,
        "result": result,
    }
