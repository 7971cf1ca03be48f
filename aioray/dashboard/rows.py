"""Ray's row shapes (NodeState, ActorState, PlacementGroupState) from the GCS's tables."""

from __future__ import annotations

from typing import Any


def _hex(value: Any) -> str | None:
    if value is None:
        return None
    return value.hex() if isinstance(value, (bytes, bytearray)) else str(value)


def node(n: dict[str, Any]) -> dict[str, Any]:
    return {
        "node_id": n["NodeID"],
        "node_ip": n["NodeManagerAddress"],
        "is_head_node": bool(n.get("IsHead")),
        "state": "ALIVE" if n.get("Alive") else "DEAD",
        "state_message": n.get("DeathReason"),
        "node_name": n.get("NodeName", ""),
        "resources_total": n.get("Resources", {}),
        "resources_available": n.get("Available", {}),
        "labels": n.get("Labels", {}),
        "start_time_ms": int(n.get("StartTime", 0) * 1000),
        "end_time_ms": None,
    }


def node_summary(n: dict[str, Any]) -> dict[str, Any]:
    """``/nodes?view=summary``'s entry (the parts aioray knows)."""
    return {
        "raylet": {
            "nodeId": n["NodeID"],
            "nodeManagerAddress": n["NodeManagerAddress"],
            "nodeManagerPort": n["NodeManagerPort"],
            "state": "ALIVE" if n.get("Alive") else "DEAD",
            "isHeadNode": bool(n.get("IsHead")),
            "resourcesTotal": n.get("Resources", {}),
            "metricsExportPort": n.get("MetricsExportPort", 0),
        },
        "ip": n["NodeManagerAddress"],
        "hostname": n.get("NodeManagerHostname", ""),
    }


def actor(a: dict[str, Any]) -> dict[str, Any]:
    meta = a.get("meta") or {}
    state = a["state"]
    return {
        "actor_id": _hex(a["aid"]),
        "class_name": meta.get("cls", ""),
        "state": "DEPENDENCIES_UNREADY" if state == "PENDING" else state,
        "job_id": _hex(meta.get("job")) or "",  # a str in Ray's schema
        "name": a.get("name") or "",
        "node_id": _hex(a.get("node_id")),
        "pid": a.get("pid") or None,
        "ray_namespace": a.get("namespace", ""),
        "num_restarts": a.get("num_restarts", 0),
        "death_cause": {"message": a["death"]} if a.get("death") else None,
        "repr_name": "",
    }


def placement_group(g: dict[str, Any]) -> dict[str, Any]:
    bundles = g.get("bundles") or []
    return {
        "placement_group_id": _hex(g.get("id")),
        "name": g.get("name", ""),
        "state": g.get("state", ""),
        "strategy": g.get("strategy", ""),
        "bundles": [{"bundle_id": i, "unit_resources": b} for i, b in enumerate(bundles)],
        "creator_job_id": _hex(g.get("job")) or "",
        "is_detached": bool(g.get("detached")),
    }
