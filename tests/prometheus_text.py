"""A strict parser of the Prometheus text exposition format (0.0.4), for tests.

Every line must match the grammar; a sample must belong to the family last declared
by ``# TYPE`` (a histogram's ``_bucket``/``_sum``/``_count`` to its histogram); a
family is declared once, a series appears once, and a histogram's buckets are
cumulative with ``le="+Inf"`` equal to ``_count``.
"""

from __future__ import annotations

import math
import re

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\\\|\\"|\\n)*"'
VALUE = r"[+-]?(?:Inf|NaN|[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?|\.[0-9]+(?:[eE][+-]?[0-9]+)?)"
SAMPLE_RE = re.compile(rf"^({NAME})(?:\{{((?:{LABEL})(?:,{LABEL})*)?\}})? ({VALUE})$")
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\\\|\\"|\\n)*)"')
HELP_RE = re.compile(rf"^# HELP ({NAME}) (.*)$")
TYPE_RE = re.compile(rf"^# TYPE ({NAME}) (counter|gauge|histogram|summary|untyped)$")

Series = tuple[str, tuple[tuple[str, str], ...]]


class ExpositionError(AssertionError):
    pass


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def parse(text: str) -> tuple[dict[str, str], dict[Series, float]]:
    """(family name -> type, series -> value); raises ExpositionError naming the line."""
    if text and not text.endswith("\n"):
        raise ExpositionError("the exposition must end with a newline")
    types: dict[str, str] = {}
    helps: set[str] = set()
    samples: dict[Series, float] = {}
    family = ""
    for n, line in enumerate(text.splitlines(), 1):
        where = f"line {n}: {line!r}"
        if m := HELP_RE.match(line):
            if m.group(1) in helps:
                raise ExpositionError(f"{where}: HELP repeated")
            helps.add(m.group(1))
        elif m := TYPE_RE.match(line):
            if m.group(1) in types:
                raise ExpositionError(f"{where}: TYPE repeated")
            family = m.group(1)
            types[family] = m.group(2)
        elif m := SAMPLE_RE.match(line):
            name, labels_text, value = m.groups()
            allowed = {family}
            if types.get(family) == "histogram":
                allowed = {f"{family}_bucket", f"{family}_sum", f"{family}_count"}
            if name not in allowed:
                raise ExpositionError(f"{where}: sample outside its family {family!r}")
            labels = tuple((k, _unescape(v)) for k, v in LABEL_RE.findall(labels_text or ""))
            if len({k for k, _ in labels}) != len(labels):
                raise ExpositionError(f"{where}: a label repeated")
            key = (name, labels)
            if key in samples:
                raise ExpositionError(f"{where}: series repeated")
            samples[key] = float(value.replace("Inf", "inf").replace("NaN", "nan"))
        else:
            raise ExpositionError(f"{where}: not HELP, TYPE or a sample")
    _check_histograms(types, samples)
    return types, samples


def _check_histograms(types: dict[str, str], samples: dict[Series, float]) -> None:
    for family in (f for f, t in types.items() if t == "histogram"):
        series: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = {}
        for (name, labels), value in samples.items():
            if name == f"{family}_bucket":
                rest = tuple(kv for kv in labels if kv[0] != "le")
                le = dict(labels)["le"]
                series.setdefault(rest, []).append((float(le.replace("Inf", "inf")), value))
        for rest, buckets in series.items():
            buckets.sort()
            counts = [v for _, v in buckets]
            if counts != sorted(counts) or buckets[-1][0] != math.inf:
                raise ExpositionError(f"{family}{rest}: buckets not cumulative or no +Inf")
            if samples.get((f"{family}_count", rest)) != counts[-1]:
                raise ExpositionError(f"{family}{rest}: _count differs from the +Inf bucket")
            if (f"{family}_sum", rest) not in samples:
                raise ExpositionError(f"{family}{rest}: no _sum")


def values(samples: dict[Series, float], name: str, **labels: str) -> list[float]:
    """Values of ``name``'s series whose labels include ``labels``."""
    return [
        v
        for (n, lv), v in samples.items()
        if n == name and all(dict(lv).get(k) == want for k, want in labels.items())
    ]
