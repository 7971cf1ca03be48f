"""Building a runtime env's pieces on a node: packages extracted, virtualenvs installed.

No bookkeeping here (runtime_env_agent.py decides what to build and when to delete).
Each piece is built in a temporary directory beside its final place and renamed into
it, so a half-built piece (a crash, a timeout) is never mistaken for a built one.
A virtualenv is made with ``--system-site-packages`` over the raylet's interpreter,
plus a ``.pth`` line adding the interpreter's own site directories (so aioray and its
dependencies stay importable when that interpreter is itself a virtualenv's), and pip
(or uv) installs into it.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import shutil
import site
import stat
import sys
from typing import Any

logger = logging.getLogger(__name__)

OUTPUT_TAIL_LINES = 20


class SetupError(Exception):
    """A piece could not be built; the message ends with the tool's last lines of output."""


def dir_size(path: str) -> int:
    total = 0
    for dirpath, _, names in os.walk(path):
        for name in names:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def extract(data: bytes, dest: str) -> None:
    """(thread) Unzip into ``dest`` (atomically: built beside it, then renamed)."""
    import zipfile  # (here: a raylet that never sets up a package need not load it)

    tmp = f"{dest}.tmp-{os.getpid()}-{id(data)}"
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        for info in z.infolist():
            path = z.extract(info, tmp)
            mode = (info.external_attr >> 16) & 0o777
            if mode and not info.is_dir():
                os.chmod(path, mode | stat.S_IRUSR)
    os.replace(tmp, dest)


async def build_venv(dest: str, tool: str, spec: dict[str, Any], timeout: float | None) -> str:
    """Create a virtualenv at ``dest`` with the requirements of ``spec``; its python."""
    tmp = f"{dest}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    python = os.path.join(tmp, "bin", "python")
    await run_tool(
        [sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", tmp],
        "venv",
        timeout,
    )
    _inherit_site(tmp)
    requirements = os.path.join(tmp, "requirements.txt")
    with open(requirements, "w") as f:
        f.write("\n".join(spec["packages"]) + "\n")
    options = list(spec.get("pip_install_options") or spec.get("uv_pip_install_options") or [])
    uv = shutil.which("uv") if tool == "uv" else None
    if tool == "uv" and not uv:
        logger.warning("runtime_env['uv']: the uv tool is not installed here; using pip")
    if uv:
        cmd = [uv, "pip", "install", "--python", python, *options, "-r", requirements]
    else:
        cmd = [python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input"]
        cmd += [*options, "-r", requirements]
    try:
        await run_tool(cmd, "uv" if uv else "pip", timeout)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return os.path.join(dest, "bin", "python")


def _inherit_site(venv: str) -> None:
    """Let the new env see what the raylet's interpreter sees (after its own packages)."""
    lib = os.path.join(venv, "lib")
    pyver = next(d for d in os.listdir(lib) if d.startswith("python"))
    dirs = [d for d in [*site.getsitepackages(), site.getusersitepackages()] if os.path.isdir(d)]
    line = "import site; " + "; ".join(f"site.addsitedir({d!r})" for d in dirs) + "\n"
    with open(os.path.join(lib, pyver, "site-packages", "_aioray_parent_site.pth"), "w") as f:
        f.write(line)


async def run_tool(cmd: list[str], name: str, timeout: float | None) -> None:
    """Run a setup command; SetupError with its last lines on failure or timeout."""
    env = {**os.environ, "PIP_NO_INPUT": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        raise SetupError(f"{name} did not finish within {timeout:g} s") from None
    finally:
        if proc.returncode is None:  # timed out or cancelled: it must not outlive us
            proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        lines = out.decode("utf-8", "replace").rstrip().splitlines()[-OUTPUT_TAIL_LINES:]
        raise SetupError(f"{name} failed (exit code {proc.returncode}):\n" + "\n".join(lines))
