"""What start-up imports, the cost every driver, daemon and worker pays before its first
task (issue 21), checked by ``sys.modules`` in fresh interpreters rather than by timing.

``import aioray`` loads the public API on the first use of one of its names; the GCS
and the raylet, which import the package as ``aioray.daemons.*``, never load it, nor
aiohttp (the raylet's metrics endpoint and the dashboard import it when first asked)
or numpy. Measured costs: benchmarks/RESULTS.md, "Start-up and idle".
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
PUBLIC_API = {
    "aioray.api",
    "aioray.actor",
    "aioray.remote_function",
    "aioray.async_api",
    "aioray._html",
    "aioray.util",
}
# What a first task needs in no process but a worker running user code: the dashboard,
# the metrics endpoint (aiohttp), numpy.
NOT_FOR_A_FIRST_TASK = {"aiohttp", "numpy", "aioray.dashboard"}


def modules_after(code: str) -> set[str]:
    """``sys.modules`` of a fresh interpreter once ``code`` has run."""
    done = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport json, sys; print(json.dumps(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=TESTS,  # not the repo root: the installed package is what is imported
        check=True,
    )
    return set(json.loads(done.stdout.splitlines()[-1]))


def test_import_aioray_loads_none_of_the_api() -> None:
    loaded = modules_after("import aioray")
    assert not loaded & (PUBLIC_API | NOT_FOR_A_FIRST_TASK), sorted(loaded)


def test_the_first_use_of_a_name_loads_the_whole_api_but_nothing_heavy() -> None:
    loaded = modules_after(
        "import aioray\n"
        "aioray.init\n"
        "from aioray._private.owner.object_ref import ObjectRef\n"
        "assert hasattr(ObjectRef, '_repr_html_')  # aioray._html's notebook views are set\n"
        "assert 'placement_group' in dir(aioray.util)"
    )
    assert loaded >= PUBLIC_API
    assert not loaded & NOT_FOR_A_FIRST_TASK, sorted(loaded & NOT_FOR_A_FIRST_TASK)


def test_every_public_name_resolves_and_unknown_names_fail() -> None:
    code = (
        "import aioray\n"
        "assert set(aioray.__all__) <= set(dir(aioray))\n"
        "missing = [n for n in aioray.__all__ if getattr(aioray, n, None) is None]\n"
        "assert not missing, missing\n"
        "try:\n"
        "    aioray.no_such_name\n"
        "except AttributeError as e:\n"
        "    assert 'no_such_name' in str(e)\n"
        "else:\n"
        "    raise AssertionError('no AttributeError')"
    )
    modules_after(code)


@pytest.mark.parametrize("entry", ["aioray.daemons.gcs.__main__", "aioray.daemons.raylet.__main__"])
def test_a_daemon_loads_neither_the_api_nor_what_a_first_task_does_not_need(entry: str) -> None:
    loaded = modules_after(f"import {entry}")
    assert not loaded & (PUBLIC_API | NOT_FOR_A_FIRST_TASK), sorted(
        loaded & (PUBLIC_API | NOT_FOR_A_FIRST_TASK)
    )


def test_the_type_checkers_names_are_the_public_table() -> None:
    """aioray/__init__.py lists its public names once (``_PUBLIC``, loaded lazily) and
    repeats them for type checkers under TYPE_CHECKING: the two must name the same
    things from the same modules."""
    import ast

    import aioray

    tree = ast.parse(Path(aioray.__file__).read_text())
    block = next(
        n for n in tree.body if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test)
    )
    imported: dict[str, str] = {}
    for node in ast.walk(block):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if alias.name != "_html":
                    submodule = f"{node.module}.{alias.name}"
                    is_module = node.module == "aioray"
                    imported[alias.name] = submodule if is_module else str(node.module)
    assert imported == aioray._PUBLIC
