"""The Prometheus text exposition format (0.0.4), rendered without a client library.

Floor 1 (no I/O): ``Exposition`` collects families (``# HELP``/``# TYPE`` then their
samples) into one string. Counters follow prometheus_client's (and so Ray's) naming: the
family is ``<name>_total``; a histogram's samples are ``_bucket{le=}`` (cumulative),
``_sum`` and ``_count``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
Labels = Sequence[tuple[str, str]]


def format_value(value: float) -> str:
    """A sample value as Prometheus writes it (``+Inf``, ``-Inf``, ``NaN``, ``1.0``)."""
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if value != value:
        return "NaN"
    return repr(float(value))


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels) + "}"


class Exposition:
    """A scrape's text, family by family."""

    def __init__(self) -> None:
        self.lines: list[str] = []  # appended to directly by renderers that cache prefixes

    def family(self, name: str, kind: str, help_text: str) -> None:
        """Open a family: ``kind`` is counter, gauge, histogram or untyped."""
        self.lines.append(f"# HELP {name} {_escape_help(help_text)}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, labels: Labels, value: float) -> None:
        self.lines.append(f"{name}{format_labels(labels)} {format_value(value)}")

    def gauge(self, name: str, help_text: str, samples: Iterable[tuple[Labels, float]]) -> None:
        """A whole gauge family (nothing at all when it has no samples)."""
        samples = list(samples)
        if samples:
            self.family(name, "gauge", help_text)
            for labels, value in samples:
                self.sample(name, labels, value)

    def histogram(
        self,
        name: str,
        labels: Labels,
        boundaries: Sequence[float],
        buckets: Sequence[int],
        total: float,
        count: int,
    ) -> None:
        """One histogram series (``buckets``: per-bucket counts, the last one above all)."""
        running = 0
        for bound, n in zip([*boundaries, math.inf], buckets, strict=True):
            running += n
            self.sample(f"{name}_bucket", [*labels, ("le", format_value(bound))], running)
        self.sample(f"{name}_sum", labels, total)
        self.sample(f"{name}_count", labels, count)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n" if self.lines else ""
