"""``aioray status``'s autoscaler part, in Ray's layout: node status (active, idle,
pending launches, recent failures), then resources (usage, demands)."""

from __future__ import annotations

import time
from typing import Any

RULE = "-" * 63


def format_status(status: dict[str, Any]) -> str:
    """The report for ``get_autoscaler_status``'s answer (demand snapshot + state)."""
    state = status.get("autoscaler") or {}
    lines = [f"======== Autoscaler status: {time.strftime('%Y-%m-%d %H:%M:%S')} ========"]
    lines += ["Node status", RULE, "Active:"]
    active = state.get("active") or {"(autoscaler not running)": len(status["nodes"])}
    lines += [f" {n} {name}" for name, n in sorted(active.items())]
    idle = state.get("idle") or []
    lines += ["Idle:"] + ([f" {i[:16]}" for i in idle] or [" (no idle nodes)"])
    pending = state.get("pending") or []
    lines.append("Pending:")
    lines += [f" {ip or node_id}: {t}, {what}" for node_id, t, ip, what in pending] or [
        " (no pending nodes)"
    ]
    lines.append("Recent failures:")
    failures = state.get("failures") or []
    lines += [
        f" {t}: {why} (at {time.strftime('%H:%M:%S', time.localtime(at))})"
        for t, why, at in failures
    ] or [" (no failures)"]
    lines += ["", "Resources", RULE, "Usage:"]
    lines += _usage(status["nodes"])
    lines += ["Demands:"] + (_demands(status, state) or [" (no resource demands)"])
    return "\n".join(lines)


def _usage(nodes: list[dict[str, Any]]) -> list[str]:
    total: dict[str, float] = {}
    free: dict[str, float] = {}
    for n in nodes:
        for k, v in n["total"].items():
            if k.startswith("node:") or "_group_" in k:
                continue
            total[k] = total.get(k, 0.0) + v
            free[k] = free.get(k, 0.0) + n["available"].get(k, 0.0)
    out = []
    for k in sorted(total):
        used, t = total[k] - free[k], total[k]
        if k in ("memory", "object_store_memory"):
            out.append(f" {used / 2**30:.2f}GiB/{t / 2**30:.2f}GiB {k}")
        else:
            out.append(f" {used:g}/{t:g} {k}")
    return out


def _demands(status: dict[str, Any], state: dict[str, Any]) -> list[str]:
    infeasible = [dict(s) for s in state.get("infeasible") or []]
    # Without an autoscaler no node will come: a shape that fits no node now never runs.
    fixed = not state

    def never_fits(res: dict[str, float]) -> bool:
        return fixed and not any(
            all(n["total"].get(k, 0.0) >= v for k, v in res.items()) for n in status["nodes"]
        )

    out = []
    for res, n in status["shapes"]:
        note = " (infeasible)" if res in infeasible or never_fits(res) else ""
        out.append(f" {_shape(res)}: {n}+ pending tasks/actors{note}")
    for bundles, strategy in status["placement_groups"]:
        note = " (infeasible)" if any(b in infeasible for b in bundles) else ""
        out.append(f" {_bundles(bundles)} ({strategy}): 1+ pending placement groups{note}")
    if status["requests"]:
        out.append(f" {_bundles(status['requests'])}: from request_resources()")
    return out


def _shape(res: dict[str, float]) -> str:
    return str({k: float(v) for k, v in sorted(res.items())})


def _bundles(bundles: list[dict[str, float]]) -> str:
    groups: dict[str, int] = {}
    for b in bundles:
        groups[_shape(b)] = groups.get(_shape(b), 0) + 1
    return " + ".join(f"{s} * {n}" if n > 1 else s for s, n in groups.items())
