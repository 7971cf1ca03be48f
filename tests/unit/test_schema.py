"""The wire schema (aioray/_private/wire/schema.py): mypy catches a message built or read
with a wrong key or type, and every RPC handler names its body's declaration.

The mypy check runs on a small snippet that imports the schema alone (its own imports
are skipped), so it takes about a second."""

from __future__ import annotations

import inspect
import pathlib
import re
import subprocess
import sys
import textwrap

from test_docstrings import handlers

import aioray._private.wire.schema as schema

ROOT = pathlib.Path(__file__).resolve().parents[2]

# One line per mistake, each ending in "# wrong: <what mypy must say>"; the other lines are
# right and must pass.
SNIPPET = textwrap.dedent(
    """
    from aioray._private.wire.schema import LeaseReply, PushReply, RequestLease, TaskSpec

    spec: TaskSpec = {"tid": b"t", "name": "f", "nret": 1, "job": b"j", "fid": b"f"}
    bad: TaskSpec = {"tid": b"t", "nrte": 1}  # wrong: Extra key "nrte" for TypedDict "TaskSpec"
    spec["d"] = [(0, b"o" * 20, 2), (2, b"p" * 20, None)]
    spec["d"] = [(0, b"o" * 20, "2")]  # wrong: incompatible type
    spec["nert"] = 1  # wrong: TypedDict "TaskSpec" has no key "nert"
    name: str = spec["name"]
    tid: str = spec["tid"]  # wrong: Incompatible types in assignment
    reply: PushReply = {"r": [(0, 1, False, None)], "t": 0.5}
    reply["o"] = (1, 2)
    reply["out"] = (1, 2)  # wrong: TypedDict "PushReply" has no key "out"
    lease: RequestLease = {"res": {"CPU": 1.0}, "retriable": True}
    lease2: RequestLease = {"resources": {"CPU": 1.0}}  # wrong: Missing key "res"
    grant: LeaseReply = {"lid": 1, "wid": b"w", "addr": ("127.0.0.1", 1)}
    port: int = grant["addr"][1]
    """
)

# The snippet's imports: the schema is checked, everything it imports is skipped (a
# schema that could not be found is an error, not Any).
MYPY_INI = textwrap.dedent(
    f"""
    [mypy]
    python_version = 3.10
    mypy_path = {ROOT}
    follow_imports = skip
    incremental = False

    [mypy-aioray._private.wire.schema]
    follow_imports = normal
    """
)


def test_mypy_catches_wrong_keys_and_types_in_messages(tmp_path: pathlib.Path) -> None:
    (tmp_path / "snippet.py").write_text(SNIPPET)
    (tmp_path / "mypy.ini").write_text(MYPY_INI)
    # In a child: mypy run in this process would keep ~175,000 objects alive for the
    # rest of the suite, and every later gc.collect (each e2e test's leak check runs
    # one) would walk them: 60 ms more per test.
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(tmp_path / "mypy.ini"),
            "--no-error-summary",
            "--hide-error-context",
            str(tmp_path / "snippet.py"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    out, err = done.stdout, done.stderr
    assert not err, err
    found: dict[int, str] = {}
    for line in out.splitlines():
        m = re.match(r".*snippet\.py:(\d+): error: (.*)", line)
        if m:
            found[int(m.group(1))] = found.get(int(m.group(1)), "") + m.group(2)
    expected = {
        i: what.strip()
        for i, text in enumerate(SNIPPET.splitlines(), start=1)
        if "# wrong: " in text
        for what in [text.split("# wrong: ")[1]]
    }
    assert expected and set(found) == set(expected), out  # each mistake, and nothing else
    for i, what in expected.items():
        assert what.lower() in found[i].lower(), (i, found[i])


# What a body may be besides a declaration of the schema: a plain value, or no body.
PLAIN = {"bytes", "str", "bool", "int", "float", "None", "object"}


def _names(annotation: str) -> list[str]:
    """The names in a handler's body annotation (``list[X] | None`` -> X, None)."""
    return re.findall(r"[A-Za-z_]\w*", annotation.replace("list[", " ").replace("dict[", " "))


def test_every_handler_names_its_body_in_the_schema() -> None:
    declared = {n for n in vars(schema) if not n.startswith("_")}
    undeclared = []
    for name, fn in handlers().items():
        params = [p for p in inspect.signature(fn).parameters.values() if p.name != "self"]
        if len(params) != 3:  # not an RPC handler (an HTTP route)
            continue
        body, buffers = str(params[1].annotation), str(params[2].annotation)
        unknown = [n for n in _names(body) if n not in declared | PLAIN]
        if unknown or buffers != "list[Buffer]":
            undeclared.append(f"{name}: body {body}, buffers {buffers}")
    assert not undeclared, undeclared


def test_a_typed_message_is_a_plain_dict_at_run_time() -> None:
    spec: schema.TaskSpec = {"tid": b"t", "name": "f", "nret": 1}
    assert type(spec) is dict and type(schema.TaskSpec(tid=b"t")) is dict
    assert schema.TaskSpec.__optional_keys__ >= {"tid", "nret", "d", "fn"}
