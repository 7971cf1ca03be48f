"""Every module imports first, alone, in a fresh interpreter; every package is installed.

An import cycle shows up here as "partially initialized module" when the module that
closes it is imported before the rest (a package that imports only because of the line
order in ``aioray/__init__.py``). Each module gets its own ``python -c "import X"``: one
interpreter looping over modules would have them all loaded after the first. The
contracts that keep imports pointing down are in pyproject.toml (``.ci/lint-imports``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Where each source folder installs (pyproject.toml's package-dir).
ROOTS = {"aioray": "aioray", "daemons": "aioray.daemons"}
# Modules whose import raises ImportError by design, with what it says.
REFUSED = {"aioray.util.collective": "ImportError: ray.util.collective is not available"}


def _module_name(root: str, path: Path) -> str:
    parts = list(path.relative_to(REPO / root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([ROOTS[root], *parts])


def all_modules() -> list[str]:
    """Every module of aioray and aioray.daemons, but the ``__main__`` entry points
    (importing one runs its daemon; ``python -m`` imports it)."""
    return sorted(
        _module_name(root, path)
        for root in ROOTS
        for path in (REPO / root).rglob("*.py")
        if path.name != "__main__.py"
    )


def _import_alone(module: str) -> tuple[str, int, str]:
    """(module, exit code, stderr) of ``python -c "import module"``."""
    done = subprocess.run(
        [sys.executable, "-c", f"import {module}"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO / "tests",  # not the repo root: the installed package is what is imported
    )
    return module, done.returncode, done.stderr


# ~100 interpreters that each load much of the package (importing any module imports the
# ``aioray`` package first, which loads its public API on first use only): 0.15-0.2 s of
# CPU each, of which ~40 ms is the bare interpreter,
# ~100 ms the standard library and third-party modules (asyncio, ssl, uvloop, msgpack,
# psutil, cloudpickle) and the rest aioray's own modules; 14-20 s of CPU in all, spread
# over one interpreter per core. Several times that on a loaded machine: a bound of its own.
@pytest.mark.timeout(600)
def test_every_module_imports_first_in_a_fresh_interpreter() -> None:
    modules = all_modules()
    assert "aioray._private.owner.core_worker" in modules
    assert "aioray.daemons.worker" in modules
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = list(pool.map(_import_alone, modules))
    failed = {m: (err.strip().splitlines() or ["?"])[-1] for m, code, err in results if code}
    # Ray's names aioray does not provide: importing them says so (and nothing else fails).
    for module, message in REFUSED.items():
        assert message in failed.pop(module, ""), f"{module} must refuse: {message}"
    assert not failed, f"modules that do not import first: {failed}"


def test_pyproject_lists_every_package() -> None:
    """A non-editable install takes only the listed packages: a new folder must be listed."""
    pyproject = (REPO / "pyproject.toml").read_text()
    packages = {
        _module_name(root, init)
        for root in ROOTS
        for init in (REPO / root).rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    missing = sorted(p for p in packages if f'"{p}",' not in pyproject)
    assert not missing, f"add these to [tool.setuptools] packages: {missing}"
