"""Why a value cannot be pickled: Ray's ``inspect_serializability`` report.

It walks a function's globals and closure variables and an object's attributes,
``depth`` levels down, and names the innermost members that fail to pickle. The
task and actor paths put this report in the TypeError of a value that cannot be
pickled (a function, a class, a call's arguments): any user object (``Any``)."""

from __future__ import annotations

import inspect
import io
import sys
from typing import Any, TextIO

import cloudpickle

_RULE = "=" * 80


class FailureTuple:
    """One member that cannot be pickled: itself, its name, and what holds it."""

    __slots__ = ("name", "obj", "parent")

    def __init__(self, obj: Any, name: str, parent: Any) -> None:
        self.obj = obj
        self.name = name
        self.parent = parent

    def __repr__(self) -> str:
        return f"FailTuple({self.name} [obj={self.obj}, parent={self.parent}])"


class _Printer:
    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.indent = 0

    def line(self, text: str) -> None:
        print("    " * self.indent + text, file=self.out)


def _pickle_error(obj: Any) -> Exception | None:
    try:
        cloudpickle.dumps(obj, protocol=5)
        return None
    except Exception as e:
        return e


def _members(obj: Any) -> list[tuple[str, Any]]:
    """What ``obj`` holds that pickling it pickles too."""
    if isinstance(obj, (list, tuple)):
        return [(f"[{i}]", v) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        return [(str(k), v) for k, v in obj.items()]
    if inspect.isfunction(obj):
        try:
            closure = inspect.getclosurevars(obj)
        except (TypeError, ValueError):
            return []
        found = {**closure.globals, **closure.nonlocals}
        return [(k, v) for k, v in found.items() if not inspect.ismodule(v)]
    if inspect.isclass(obj):
        return [
            (k, v)
            for k, v in vars(obj).items()
            if not (k.startswith("__") and k.endswith("__")) and not inspect.ismodule(v)
        ]
    attrs = getattr(obj, "__dict__", None)
    if isinstance(attrs, dict):
        return list(attrs.items())
    return []


def _inspect(obj: Any, name: str, parent: Any, depth: int, failures: set[Any], p: _Printer) -> bool:
    """Whether ``obj`` pickles; records the innermost failing members in ``failures``."""
    error = _pickle_error(obj)
    if error is None:
        return True
    p.line(f"!!! FAIL serialization: {error}")
    members = _members(obj) if depth > 0 else []
    found_inner = False
    if members:
        kind = "global variables" if inspect.isfunction(obj) else "members"
        p.line(f"Detected {len(members)} {kind}. Checking serializability...")
        p.indent += 1
        for member_name, member in members:
            if _pickle_error(member) is None:
                continue
            p.line(f"Serializing {member_name!r} {_short(member)}...")
            p.indent += 1
            _inspect(member, member_name, obj, depth - 1, failures, p)
            p.indent -= 1
            found_inner = True
        p.indent -= 1
    if not found_inner:
        if members or depth <= 0:
            p.line(
                f"WARNING: Did not find non-serializable object in {_short(obj)}. "
                "This may be an oversight."
            )
        failures.add(FailureTuple(obj, name, parent))
    return False


def inspect_serializability(
    base_obj: Any,
    name: str | None = None,
    depth: int = 3,
    print_file: TextIO | None = None,
) -> tuple[bool, set[FailureTuple]]:
    """Print which members of ``base_obj`` cannot be pickled (Ray's report).

    Returns whether it pickles, and the members found not to."""
    out = print_file if print_file is not None else sys.stdout
    p = _Printer(out)
    label = name or _short(base_obj)
    p.line(_RULE)
    p.line(f"Checking Serializability of {label}")
    p.line(_RULE)
    failures: set[Any] = set()
    ok = _inspect(base_obj, label, None, depth, failures, p)
    p.line(_RULE)
    if failures:
        p.line("Variable: \n")
        for failure in failures:
            p.line(f"\t{failure!r}")
        p.line(
            "\nwas found to be non-serializable. There may be multiple other undetected "
            "variables that were non-serializable. \nConsider either removing the "
            "instantiation/imports of these variables or moving the instantiation into "
            "the scope of the function/class. "
        )
        p.line(_RULE)
        p.line(
            "Check https://docs.ray.io/en/master/ray-core/objects/serialization.html"
            "#troubleshooting for more information."
        )
        p.line(_RULE)
    return ok, failures


def report(obj: Any, name: str | None = None) -> str:
    """The report as text (for an error message)."""
    buf = io.StringIO()
    try:
        inspect_serializability(obj, name=name, print_file=buf)
    except Exception as e:  # a report must never hide the original error
        return f"(no serializability report: {e!r})"
    return buf.getvalue()


def _short(value: Any) -> str:
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__} object>"
    return text if len(text) <= 100 else text[:97] + "..."
