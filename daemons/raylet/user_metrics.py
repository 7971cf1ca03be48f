"""User metrics of a node's processes, aggregated in the raylet and rendered for a scrape.

Floor 3 (state, no I/O). Reports (``metrics_registry``'s wire form) come in every
second from each process: counter and histogram deltas are added, a gauge keeps the
latest value (whichever process set it last). The first definition of a name wins; a
process defining it differently is logged and its points dropped. A series' rendered
name and labels are cached the first time it is scraped, so a scrape formats numbers
only: the raylet's loop pays ~1 µs per series (benchmarks/metrics_benchmark.py).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from aioray._private.wire.prometheus import Exposition, format_labels, format_value

logger = logging.getLogger(__name__)

PREFIX = "ray_"
# Ray exports a counter twice since 2.10: as a counter (``_total``) and, for boards made
# before, as a gauge of the same name; RAY_EXPORT_COUNTER_AS_GAUGE=0 turns the gauge off.
EXPORT_COUNTER_AS_GAUGE = os.environ.get("RAY_EXPORT_COUNTER_AS_GAUGE", "1") != "0"


class _Family:
    __slots__ = ("boundaries", "description", "kind", "prefixes", "series", "tag_keys")

    def __init__(self, kind: str, description: str, tag_keys: list[str], bounds: list[float]):
        self.kind = kind
        self.description = description
        self.tag_keys = tag_keys
        self.boundaries = bounds
        self.series: dict[tuple[str, ...], Any] = {}
        self.prefixes: dict[tuple[str, ...], list[str]] = {}  # rendered "name{labels} "


class UserMetrics:
    """Every user metric family reported on this node."""

    def __init__(self, extra_labels: list[tuple[str, str]]) -> None:
        self.families: dict[str, _Family] = {}
        self.extra_labels = extra_labels  # added to every series (Ray: SessionName, ...)

    def __repr__(self) -> str:
        return f"<UserMetrics families={len(self.families)} series={self.series_count()}>"

    def series_count(self) -> int:
        return sum(len(f.series) for f in self.families.values())

    def apply(self, report: dict[str, Any]) -> None:
        """Fold one process's report in."""
        for name, kind, description, tag_keys, bounds in report.get("d", ()):
            known = self.families.get(name)
            if known is None:
                self.families[name] = _Family(kind, description, tag_keys, bounds)
            elif known.kind != kind or known.tag_keys != tag_keys:
                logger.warning("metric %r redefined as another %s; keeping the first", name, kind)
        for name, labels, delta in report.get("c", ()):
            f = self._family(name, "counter", labels)
            if f is not None:
                key = tuple(labels)
                f.series[key] = f.series.get(key, 0.0) + delta
        for name, labels, value in report.get("g", ()):
            f = self._family(name, "gauge", labels)
            if f is not None:
                f.series[tuple(labels)] = value
        for name, labels, buckets, total, count in report.get("h", ()):
            f = self._family(name, "histogram", labels)
            if f is not None and len(buckets) == len(f.boundaries) + 1:
                # A new tuple, never changed in place: a scrape's copy stays consistent.
                key = tuple(labels)
                old = f.series.get(key) or ([0] * len(buckets), 0.0, 0)
                summed = [a + b for a, b in zip(old[0], buckets, strict=True)]
                f.series[key] = (summed, old[1] + total, old[2] + count)

    def _family(self, name: str, kind: str, labels: list[str]) -> _Family | None:
        f = self.families.get(name)
        if f is None or f.kind != kind or len(labels) != len(f.tag_keys):
            return None  # another process's definition of that name won
        return f

    # -- rendering ------------------------------------------------------------------------
    def snapshot(self) -> list[tuple[str, _Family, dict[tuple[str, ...], Any]]]:
        """(loop) Each family with a copy of its series, for ``render`` in another thread."""
        return [(name, f, dict(f.series)) for name, f in self.families.items() if f.series]

    def render(self, out: Exposition, snapshot: list[tuple[str, _Family, Any]]) -> None:
        """(any thread) Append the snapshot's families to ``out``."""
        for name, f, series in snapshot:
            full = PREFIX + name
            if f.kind == "histogram":
                out.family(full, "histogram", f.description)
                self._render_histogram(out, full, f, series)
            elif f.kind == "counter":
                names = [f"{full}_total", full]
                out.family(names[0], "counter", f.description)
                self._render_values(out, f, series, names, 0)
                if EXPORT_COUNTER_AS_GAUGE:
                    out.family(full, "gauge", f.description)
                    self._render_values(out, f, series, names, 1)
            else:
                out.family(full, "gauge", f.description)
                self._render_values(out, f, series, [full], 0)

    def _labels(self, f: _Family, values: tuple[str, ...]) -> list[tuple[str, str]]:
        mine = [(k, v) for k, v in self.extra_labels if k not in f.tag_keys]
        return [*zip(f.tag_keys, values, strict=True), *mine]

    def _render_values(
        self, out: Exposition, f: _Family, series: dict[Any, Any], names: list[str], which: int
    ) -> None:
        lines, cache = out.lines, f.prefixes
        for values, v in series.items():
            prefixes = cache.get(values)
            if prefixes is None:
                labels = format_labels(self._labels(f, values))
                prefixes = cache[values] = [f"{n}{labels} " for n in names]
            lines.append(prefixes[which] + format_value(v))

    def _render_histogram(
        self, out: Exposition, full: str, f: _Family, series: dict[Any, Any]
    ) -> None:
        lines, cache = out.lines, f.prefixes
        for values, (buckets, total, count) in series.items():
            prefixes = cache.get(values)
            if prefixes is None:
                labels = self._labels(f, values)
                les = [format_value(b) for b in [*f.boundaries, float("inf")]]
                prefixes = cache[values] = [
                    *(f"{full}_bucket{format_labels([*labels, ('le', le)])} " for le in les),
                    f"{full}_sum{format_labels(labels)} ",
                    f"{full}_count{format_labels(labels)} ",
                ]
            running = 0
            for prefix, n in zip(prefixes, buckets, strict=False):
                running += n
                lines.append(prefix + format_value(running))
            lines.append(prefixes[-2] + format_value(total))
            lines.append(prefixes[-1] + format_value(count))
