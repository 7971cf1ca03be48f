"""User metrics with Ray's API: ``Counter``, ``Gauge`` and ``Histogram``.

Validation follows Ray 2.60's ``ray.util.metrics`` case by case (the same errors,
warnings and messages). Recording aggregates in this process (``metrics_registry``);
the node's exporter serves them, prefixed ``ray_``, in Prometheus text format.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

from aioray._private.core.metrics_registry import COUNTER, GAUGE, HISTOGRAM, REGISTRY

__all__ = ["Counter", "Gauge", "Histogram"]

# Prometheus' metric name grammar (as Ray checks it).
_VALID_METRIC_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")


class Metric:
    """The parent class of custom metrics: their shared tags and validation."""

    _kind = ""

    def __init__(
        self, name: str, description: str = "", tag_keys: tuple[str, ...] | None = None
    ) -> None:
        # Metrics with invalid names are discarded: not collected, not exported.
        self._discard_metric = self._is_invalid_metric_name(name)
        self._name = name
        self._description = description
        self._default_tags: dict[str, str] = {}
        self._tag_keys: tuple[str, ...] = tag_keys or ()
        if not isinstance(self._tag_keys, tuple):
            raise TypeError(f"tag_keys should be a tuple type, got: {type(self._tag_keys)}")
        for key in self._tag_keys:
            if not isinstance(key, str):
                raise TypeError(f"Tag keys must be str, got {type(key)}.")

    @staticmethod
    def _is_invalid_metric_name(name: str) -> bool:
        if len(name) == 0:
            raise ValueError("Empty name is not allowed. Please provide a metric name.")
        if not _VALID_METRIC_NAME_RE.match(name):
            warnings.warn(
                f"Invalid metric name: {name}. Metric will be discarded "
                "and data will not be collected or published. "
                "Metric names can only contain letters, numbers, _, and :. "
                "Metric names cannot start with numbers.",
                UserWarning,
                stacklevel=3,
            )
            return True
        return False

    def _define(self, boundaries: list[float] | None = None) -> None:
        if not self._discard_metric:
            REGISTRY.define(self._name, self._kind, self._description, self._tag_keys, boundaries)

    def set_default_tags(self, default_tags: dict[str, str]) -> Metric:
        """Tags used by every record call unless it passes its own; returns ``self``."""
        for key, val in default_tags.items():
            if key not in self._tag_keys:
                raise ValueError(f"Unrecognized tag key {key}.")
            if not isinstance(val, str):
                raise TypeError(f"Tag values must be str, got {type(val)}.")
        self._default_tags = default_tags
        return self

    def _labels(self, tags: dict[str, str] | None) -> tuple[str, ...]:
        """The tag values in ``tag_keys`` order; passed tags override the defaults."""
        if tags:
            for val in tags.values():
                if not isinstance(val, str):
                    raise TypeError(f"Tag values must be str, got {type(val)}.")
            final = {**self._default_tags, **tags}
        else:
            final = self._default_tags
        missing = [k for k in self._tag_keys if k not in final]
        if missing:
            raise ValueError(f"Missing value for tag key(s): {','.join(missing)}.")
        return tuple(final[k] for k in self._tag_keys)

    @property
    def info(self) -> dict[str, Any]:
        """Name, description, tag keys and default tags of this metric."""
        return {
            "name": self._name,
            "description": self._description,
            "tag_keys": self._tag_keys,
            "default_tags": self._default_tags,
        }


def _check_number(value: object) -> None:
    if not isinstance(value, (int, float)):
        raise TypeError(f"value must be int or float, got {type(value)}.")


class Counter(Metric):
    """A cumulative metric that only increases (exported as ``ray_<name>_total``)."""

    _kind = COUNTER

    def __init__(
        self, name: str, description: str = "", tag_keys: tuple[str, ...] | None = None
    ) -> None:
        super().__init__(name, description, tag_keys)
        self._define()

    def __reduce__(self) -> Any:
        return self.__class__, (self._name, self._description, self._tag_keys)

    def inc(self, value: int | float = 1.0, tags: dict[str, str] | None = None) -> None:
        """Increment the counter by ``value`` (default 1; must be > 0)."""
        _check_number(value)
        if value <= 0:
            raise ValueError(f"value must be >0, got {value}")
        if self._discard_metric:
            return
        REGISTRY.inc(self._name, self._labels(tags), float(value))


class Gauge(Metric):
    """The last recorded value; it can go up or down."""

    _kind = GAUGE

    def __init__(
        self, name: str, description: str = "", tag_keys: tuple[str, ...] | None = None
    ) -> None:
        super().__init__(name, description, tag_keys)
        self._define()

    def __reduce__(self) -> Any:
        return Gauge, (self._name, self._description, self._tag_keys)

    def set(self, value: int | float | None, tags: dict[str, str] | None = None) -> None:
        """Set the gauge to ``value`` (``None``: do nothing)."""
        if value is None:
            return
        _check_number(value)
        if self._discard_metric:
            return
        REGISTRY.set(self._name, self._labels(tags), float(value))


class Histogram(Metric):
    """Counts observations in buckets bounded by ``boundaries`` (plus their sum)."""

    _kind = HISTOGRAM

    def __init__(
        self,
        name: str,
        description: str = "",
        boundaries: list[float] | None = None,
        tag_keys: tuple[str, ...] | None = None,
    ) -> None:
        super().__init__(name, description, tag_keys)
        if boundaries is None or len(boundaries) == 0:
            raise ValueError(
                "boundaries argument should be provided when using "
                "the Histogram class. e.g., "
                'Histogram("name", boundaries=[1.0, 2.0])'
            )
        for i, boundary in enumerate(boundaries):
            if boundary <= 0:
                raise ValueError(
                    "Invalid `boundaries` argument at index "
                    f"{i}, {boundaries}. Use positive values for the arguments."
                )
        self.boundaries = boundaries
        self._define([float(b) for b in boundaries])

    def __reduce__(self) -> Any:
        return Histogram, (self._name, self._description, self.boundaries, self._tag_keys)

    def observe(self, value: int | float, tags: dict[str, str] | None = None) -> None:
        """Count ``value`` in its bucket."""
        _check_number(value)
        if self._discard_metric:
            return
        REGISTRY.observe(self._name, self._labels(tags), float(value))

    @property
    def info(self) -> dict[str, Any]:
        """As ``Metric.info``, with the boundaries."""
        info = super().info
        info.update({"boundaries": self.boundaries})
        return info
