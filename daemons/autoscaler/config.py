"""The autoscaling config: Ray's cluster-config names, read from JSON or YAML, checked.

``available_node_types: {name: {resources, min_workers, max_workers, node_config}}``,
cluster ``max_workers``, ``upscaling_speed``, ``idle_timeout_minutes`` (a float, so a
test can ask for seconds), ``provider: {type: local|kubernetes, ...}`` and
``head_node_type``. Bad input fails at start with an error naming the key.
YAML needs PyYAML, which is optional: JSON always works.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

PROVIDERS = ("local", "kubernetes")
TOP_KEYS = {
    "cluster_name",
    "available_node_types",
    "max_workers",
    "upscaling_speed",
    "idle_timeout_minutes",
    "provider",
    "head_node_type",
}
TYPE_KEYS = {"resources", "min_workers", "max_workers", "node_config"}


class ConfigError(ValueError):
    """The autoscaling config is invalid; the message names the key."""


@dataclass(frozen=True)
class NodeType:
    """One ``available_node_types`` entry."""

    name: str
    resources: dict[str, float]
    min_workers: int = 0
    max_workers: int = 0
    node_config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AutoscalingConfig:
    """The whole config, validated."""

    node_types: dict[str, NodeType]
    provider: dict[str, Any]
    max_workers: int = 8
    upscaling_speed: float = 1.0
    idle_timeout_s: float = 300.0
    head_node_type: str | None = None
    cluster_name: str = "default"

    @property
    def worker_types(self) -> dict[str, NodeType]:
        """The types the autoscaler may launch (every type but the head's)."""
        return {n: t for n, t in self.node_types.items() if n != self.head_node_type}


def load(path: str) -> AutoscalingConfig:
    """Read and check the config file at ``path`` (``.yaml``/``.yml`` need PyYAML)."""
    return parse(load_mapping(path))


def load_mapping(path: str) -> Any:
    """The file's data: YAML for ``.yaml``/``.yml`` (or a kubeconfig), else JSON."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror or e}") from None
    if path.endswith((".yaml", ".yml")) or not text.lstrip().startswith(("{", "[")):
        return _yaml(text, path)
    try:
        return json.loads(text)
    except ValueError as e:
        raise ConfigError(f"{path} is not valid JSON: {e}") from None


def _yaml(text: str, path: str) -> Any:
    try:
        import yaml
    except ImportError:
        raise ConfigError(
            f"{path} is YAML, which needs PyYAML (pip install pyyaml); or write the config as JSON"
        ) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None


def parse(data: Any) -> AutoscalingConfig:
    """Check a config already parsed into dicts and lists."""
    if not isinstance(data, dict):
        raise ConfigError("the autoscaling config must be a mapping of keys to values")
    _no_unknown(data, TOP_KEYS, "")
    provider = data.get("provider")
    if provider is None:
        raise ConfigError("provider: missing (give provider: {type: local} or kubernetes)")
    if not isinstance(provider, dict) or provider.get("type") not in PROVIDERS:
        raise ConfigError(f"provider.type: must be one of {', '.join(PROVIDERS)}")
    raw_types = data.get("available_node_types")
    if not isinstance(raw_types, dict) or not raw_types:
        raise ConfigError("available_node_types: missing or empty (a mapping of name to type)")
    types = {str(n): _node_type(str(n), t) for n, t in raw_types.items()}
    head = data.get("head_node_type")
    if head is not None and head not in types:
        raise ConfigError(f"head_node_type: {head!r} is not in available_node_types")
    idle_minutes = _number(data, "idle_timeout_minutes", 5.0, "")
    return AutoscalingConfig(
        node_types=types,
        provider=dict(provider),
        max_workers=_count(data, "max_workers", 8, ""),
        upscaling_speed=_number(data, "upscaling_speed", 1.0, ""),
        idle_timeout_s=idle_minutes * 60.0,
        head_node_type=head,
        cluster_name=str(data.get("cluster_name", "default")),
    )


def _node_type(name: str, raw: Any) -> NodeType:
    where = f"available_node_types.{name}."
    if not isinstance(raw, dict):
        raise ConfigError(f"available_node_types.{name}: must be a mapping")
    _no_unknown(raw, TYPE_KEYS, where)
    resources = raw.get("resources", {})
    if not isinstance(resources, dict):
        raise ConfigError(f"{where}resources: must be a mapping of resource name to amount")
    for key, value in resources.items():
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or not math.isfinite(value) or value < 0:
            raise ConfigError(f"{where}resources.{key}: {value!r} is not a non-negative number")
    lo = _count(raw, "min_workers", 0, where)
    hi = _count(raw, "max_workers", lo, where)
    if hi < lo:
        raise ConfigError(f"{where}max_workers: {hi} is less than min_workers ({lo})")
    node_config = raw.get("node_config", {})
    if not isinstance(node_config, dict):
        raise ConfigError(f"{where}node_config: must be a mapping")
    res = {str(k): float(v) for k, v in resources.items()}
    return NodeType(name, res, lo, hi, dict(node_config))


def _no_unknown(raw: dict[str, Any], known: set[str], where: str) -> None:
    for key in raw:
        if key not in known:
            raise ConfigError(f"{where}{key}: unknown key (known: {', '.join(sorted(known))})")


def _number(raw: dict[str, Any], key: str, default: float, where: str) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(f"{where}{key}: {value!r} is not a non-negative number")
    return float(value)


def _count(raw: dict[str, Any], key: str, default: int, where: str) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{where}{key}: {value!r} is not a non-negative integer")
    return value
