"""HTML views for notebooks: ``_repr_html_`` of the init context, ObjectRef, ActorHandle.

Jupyter calls these to display an object, so they must never raise and never
block for long. Every live query is guarded: a failure (or a handle left over from
a previous session) turns into a word in the table instead of an error. No view
starts a cluster: each asks only the CoreWorker the object was made with.

The views render through the public API, above the classes they show: importing this
module (aioray does) gives those classes their ``_repr_html_``.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from typing import Any

import aioray.api as api
from aioray._private.owner import worker_context
from aioray._private.owner.object_ref import ObjectRef
from aioray.actor import ActorHandle

# How long a view may wait for the GCS before it says "unknown".
QUERY_TIMEOUT_S = 2.0

_STYLE = "text-align:left;padding:1px 8px 1px 0"


def _table(title: str, rows: Iterable[tuple[str, str]]) -> str:
    """A two-column table; keys are escaped here, values arrive as HTML."""
    body = "".join(
        f'<tr><th style="{_STYLE}">{html.escape(k)}</th><td style="{_STYLE}">{v}</td></tr>'
        for k, v in rows
    )
    return f'<div class="aioray-repr"><b>{title}</b><table>{body}</table></div>'


def _code(text: object) -> str:
    return f"<code>{html.escape(str(text))}</code>"


def _current_core_worker() -> Any:
    """This process's CoreWorker (driver or worker), or None when not connected."""
    return worker_context.core_worker


def _live(cw: Any) -> bool:
    """True when ``cw`` is this process's current, running CoreWorker."""
    return cw is not None and cw is _current_core_worker() and not cw.closing


def _gcs_query(cw: Any, method: str, body: Any = None) -> Any:
    """One GCS call with a short timeout; raises on any failure (callers guard)."""

    async def call() -> Any:
        gcs = await cw.gcs_connection()
        return await gcs.call(method, body)

    return cw.run_sync(call(), QUERY_TIMEOUT_S)


def _format_amount(name: str, value: float) -> str:
    if "memory" in name.lower():
        return _format_bytes(value)
    return f"{value:g}"


def _format_bytes(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} B"
    scaled, unit = n / 1024, "KiB"
    for bigger in ("MiB", "GiB"):
        if scaled < 1024:
            break
        scaled, unit = scaled / 1024, bigger
    return f"{scaled:.1f} {unit}"


# -- the init context -------------------------------------------------------------------------
def _resources_html() -> str:
    try:
        total = api.cluster_resources()
        available = api.available_resources()
    except Exception as e:
        return f"<i>unavailable ({html.escape(type(e).__name__)})</i>"
    if not total:
        return "<i>none</i>"
    items = []
    for name in sorted(total):
        if name.startswith("node:"):
            continue  # one per node, for affinity; noise in a summary
        free = _format_amount(name, available.get(name, 0.0))
        items.append(
            f"{html.escape(name)}: {html.escape(free)} free of "
            f"{html.escape(_format_amount(name, total[name]))}"
        )
    return "<br>".join(items)


def _dashboard_html(url: str | None) -> str:
    if not url:
        return "<i>no dashboard</i>"
    href = url if "://" in url else f"http://{url}"
    return f'<a href="{html.escape(href, quote=True)}" target="_blank">{html.escape(url)}</a>'


def context_html(ctx: Any) -> str:
    """The cluster an ``init`` context names: addresses, resources, dashboard link."""
    try:
        info: dict[str, Any] = dict(ctx.address_info)
        cw = _current_core_worker()
        connected = _live(cw) and info.get("session_id") == getattr(cw, "session_id", None)
        rows = [
            ("GCS address", _code(info.get("gcs_address"))),
            ("Raylet address", _code(info.get("raylet_address"))),
            ("Node", _code(str(info.get("node_id") or "")[:16])),
            ("Session", _code(info.get("session_dir") or info.get("session_id") or "")),
            ("Dashboard", _dashboard_html(getattr(ctx, "dashboard_url", None))),
        ]
        if connected:
            rows.insert(0, ("Status", "connected"))
            rows.append(("Namespace", _code(getattr(cw, "namespace", ""))))
            rows.append(("Resources", _resources_html()))
        else:
            rows.insert(0, ("Status", "<i>not connected (shut down)</i>"))
        return _table("aioray cluster", rows)
    except Exception as e:
        return f"<b>aioray cluster</b> <i>(view failed: {html.escape(repr(e))})</i>"


# -- ObjectRef --------------------------------------------------------------------------------
def _object_state(ref: Any) -> str:
    cw = getattr(ref, "_cw", None)
    if cw is None or not _live(cw):
        return "<i>unknown (not connected to the session that made it)</i>"
    try:
        ready, _ = api.wait([ref], timeout=0)
    except Exception as e:
        return f"<i>unknown ({html.escape(type(e).__name__)})</i>"
    if not ready:
        return "pending"
    obj = cw.memory_store.get(ref.binary())  # a dict lookup, safe from any thread
    if obj is None:
        return "ready"
    if obj.is_error:
        return "ready (the task failed; <code>get</code> raises its error)"
    where = "shared memory" if obj.in_shm else "inline"
    size = f", {_format_bytes(obj.size)}" if obj.size else ""
    return f"ready ({where}{html.escape(size)})"


def object_ref_html(ref: Any) -> str:
    """One object: its id, the task that makes it, and whether it is ready."""
    try:
        owner = ref.owner_address
        rows = [
            ("Object id", _code(ref.hex())),
            ("Task id", _code(ref.task_id())),
            ("Owner", _code(f"{owner[0]}:{owner[1]}") if owner else "<i>unknown</i>"),
            ("State", _object_state(ref)),
        ]
        return _table("ObjectRef", rows)
    except Exception as e:
        return f"<code>ObjectRef</code> <i>(view failed: {html.escape(repr(e))})</i>"


# -- ActorHandle ------------------------------------------------------------------------------
def _actor_info(handle: Any) -> dict[str, Any] | None:
    """The GCS's record of the actor (state, pid, restarts), or None if unreachable."""
    try:
        # wait_actor answers at once when our version (-1) is older than the GCS's.
        info = _gcs_query(handle._cw, "wait_actor", [handle._actor_id, -1])
        return dict(info) if info else None
    except Exception:
        return None


def _local_state(handle: Any) -> str | None:
    """The state this process last learned, without a round trip."""
    try:
        record = handle._cw.actors.actors.get(handle._actor_id)
        if record is None or (record.version == 0 and record.state == "PENDING_CREATION"):
            return None  # (a handle's record, its state not learned yet)
        return str(record.state)
    except Exception:
        return None


def _state_not_asked(handle: Any) -> str:
    """The State cell when the GCS could not be asked: what this process learned, said as
    such, or unknown (a handle's record starts PENDING_CREATION: that is not knowledge)."""
    learned = _local_state(handle)
    if learned is None:
        return "<i>unknown (the GCS could not be asked)</i>"
    return f"{html.escape(learned)} <i>(as last learned here: the GCS could not be asked)</i>"


def actor_handle_html(handle: Any) -> str:
    """One actor: class, id, state (from the GCS), name, pid and restarts."""
    try:
        meta = getattr(handle, "_meta", {}) or {}
        rows = [
            ("Class", _code(meta.get("cls", "?"))),
            ("Actor id", _code(handle._actor_id.hex())),
        ]
        live = _live(getattr(handle, "_cw", None))
        info = _actor_info(handle) if live else None
        if not live:
            rows.append(("State", "<i>unknown (not connected to the session that made it)</i>"))
        elif info is None:  # (the GCS is down or slow, or this is the CoreWorker's loop)
            rows.append(("State", _state_not_asked(handle)))
        else:
            rows.append(("State", html.escape(str(info.get("state", "unknown")))))
            if info.get("death"):
                rows.append(("Cause", html.escape(str(info["death"]))))
            if info.get("name"):
                rows.append(("Name", _code(f"{info.get('namespace') or ''}/{info['name']}")))
            if info.get("pid"):
                rows.append(("Pid", _code(info["pid"])))
            if info.get("num_restarts"):
                rows.append(("Restarts", _code(info["num_restarts"])))
        kind = "async" if meta.get("async") else "sync"
        rows.append(
            ("Kind", f"{kind}, max_concurrency={html.escape(str(meta.get('max_concurrency')))}")
        )
        return _table("Actor", rows)
    except Exception as e:
        return f"<code>Actor</code> <i>(view failed: {html.escape(repr(e))})</i>"


# The notebook views of the classes below this module (Jupyter looks ``_repr_html_`` up on
# the class): set here rather than there, so that nothing imports upward.
api.InitContext._repr_html_ = context_html  # type: ignore[attr-defined]
ObjectRef._repr_html_ = object_ref_html  # type: ignore[attr-defined]
ActorHandle._repr_html_ = actor_handle_html  # type: ignore[attr-defined]
