"""Start-up and idle footprint (issue 21): import times, init to first result, idle USS.

Every measurement runs in fresh interpreters, several times, and reports the median,
with bytecode caches as an installed package has them (``--no-bytecode-cache``: without):
- ``import``: ``python -X importtime -c "import M"`` for ``aioray`` and each daemon's
  entry module; the import's own total (what ``-c pass`` imports is left out);
- ``first``: seconds from ``aioray.init()`` to ``aioray.get(f.remote())`` (import
  excluded), with the dashboard as ``init()`` starts it by default and without it;
- ``idle``: USS (``psutil`` ``memory_full_info().uss``) of every process of an idle
  cluster after init and one task, by role, and the CPU seconds each used to get there:
  with the dashboard never visited, after one request to it, and without it.

    python benchmarks/startup.py                   # all three, 7 runs each
    python benchmarks/startup.py --what first --runs 11
    python benchmarks/startup.py --python BASE/bin/python --python NEW/bin/python  # A/B, alternated
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import Any

MiB = 1024 * 1024

# (what is measured, the statement run): aioray itself, its public API as a driver
# loads it, and each daemon's entry module.
IMPORTS = [
    ("import aioray", "import aioray"),
    ("import aioray; aioray.init (the public API)", "import aioray; aioray.init"),
    ("gcs (aioray.daemons.gcs.__main__)", "import aioray.daemons.gcs.__main__"),
    ("raylet (aioray.daemons.raylet.__main__)", "import aioray.daemons.raylet.__main__"),
    (
        "fork server (aioray.daemons.forkserver, and the API it preloads)",
        "import aioray.daemons.forkserver, aioray; aioray.init",
    ),
    ("dashboard (aioray.dashboard.__main__)", "import aioray.dashboard.__main__"),
]

_FIRST_RESULT = """
import os, sys, time
import psutil
import aioray as ray

@ray.remote
def f():
    return 1

def cpu(p):
    t = p.cpu_times()
    return t.user + t.system

me = psutil.Process()
start_cpu = cpu(me)
start = time.perf_counter()
ray.init(include_dashboard={dashboard})
inited = time.perf_counter()
assert ray.get(f.remote()) == 1
done = time.perf_counter()
# CPU seconds every process spent until the first result (the driver's since init):
# what 2 cores must fit, whatever else the machine runs.
used = cpu(me) - start_cpu + sum(cpu(p) for p in me.children(recursive=True))
print("TIMES", inited - start, done - start, used, flush=True)
ray.shutdown()
"""

_IDLE = """
import json, sys, time
import psutil
import aioray as ray

ray.init(include_dashboard={dashboard})

@ray.remote
def f():
    return 1

assert ray.get(f.remote()) == 1
if {visit}:  # a first visit: the dashboard answers once it has started
    import urllib.request
    from aioray._private.wire import auth
    url = "http://" + ray.init(ignore_reinit_error=True).dashboard_url + "/api/version"
    req = urllib.request.Request(url, headers={{"Authorization": "Bearer " + auth.cluster_token()}})
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(req, timeout=5).read()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)

def cpu(p):
    t = p.cpu_times()
    return t.user + t.system

def family():
    return psutil.Process().children(recursive=True)

# Idle: the same processes, using under 2% of a core together over half a second.
deadline = time.monotonic() + 60
procs = family()
used = sum(cpu(p) for p in procs)
while time.monotonic() < deadline:
    time.sleep(0.5)
    now = family()
    now_used = sum(cpu(p) for p in now)
    if {{p.pid for p in now}} == {{p.pid for p in procs}} and now_used - used < 0.01:
        break
    procs, used = now, now_used

def role(p):
    words = " ".join(p.cmdline())
    if "aioray.daemons.forkserver" in words:
        parent = p.parent().cmdline()[1:3]
        return "worker" if parent == ["-m", "aioray.daemons.forkserver"] else "forkserver"
    for name in ("gcs", "raylet", "autoscaler"):
        if "aioray.daemons." + name in words:
            return name
    if "aioray.dashboard" in words:
        return "dashboard"
    return words[:60]

rows = [dict(role=role(p), pid=p.pid, uss=p.memory_full_info().uss, rss=p.memory_info().rss,
             cpu=cpu(p)) for p in procs]
print("ROWS", json.dumps(rows), flush=True)
ray.shutdown()
"""


_ENV: dict[str, str] = {}  # what every measured interpreter runs with (main sets it)


def measured_env(bytecode_cache: bool) -> dict[str, str]:
    """This environment without a cluster address; with ``bytecode_cache``, one where
    Python reads and writes .pyc files, as an installed package has them (pip compiles
    at install): PYTHONDONTWRITEBYTECODE dropped, the caches kept under the temp dir
    (PYTHONPYCACHEPREFIX), not in the checkout. Without caches every process compiles
    aioray's sources again (~0.1 s of CPU for the fork server's alone)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "AIORAY_ADDRESS")}
    if bytecode_cache:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env.setdefault(
            "PYTHONPYCACHEPREFIX", os.path.join(tempfile.gettempdir(), "aioray-startup-pycache")
        )
    return env


def warm_up(python: str) -> None:
    """Import every measured module and start a cluster once, so that the runs that
    count find their caches."""
    _run([python, "-c", "; ".join(statement for _, statement in IMPORTS)])
    first_result(python, True)


def _run(args: list[str]) -> str:
    env = _ENV or measured_env(True)
    # cwd: not a checkout, whose aioray/ a `python -c` would import instead of the
    # interpreter's installed one.
    out = subprocess.run(
        args,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        stdin=subprocess.DEVNULL,
        cwd=tempfile.gettempdir(),
    )
    if out.returncode != 0:
        raise RuntimeError(f"{args[:3]} exited {out.returncode}:\n{out.stdout}\n{out.stderr}")
    return out.stdout + out.stderr


def _top_level(importtime: str) -> dict[str, int]:
    """The cumulative microseconds of each top-level import in ``-X importtime`` output."""
    found = {}
    for line in importtime.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line.split("|")
        if not name.startswith("  "):  # (a top-level name has one space before it)
            found[name.strip()] = int(cumulative)
    return found


def import_ms(python: str, statement: str) -> tuple[float, int, float]:
    """Milliseconds the statement's imports take (beyond the interpreter's own start, by
    ``-X importtime``), the number of modules it adds to sys.modules, and the CPU
    milliseconds of the whole interpreter (its start included; less moved by load)."""
    base = _top_level(_run([python, "-X", "importtime", "-c", "pass"]))
    code = f"import sys; n = len(sys.modules); {statement}; print('MODULES', len(sys.modules) - n)"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = _run([python, "-X", "importtime", "-c", code])
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    total = sum(us for name, us in _top_level(out).items() if name not in base)
    modules = int(next(ln for ln in out.splitlines() if ln.startswith("MODULES")).split()[1])
    return total / 1000, modules, cpu * 1000


def first_result(python: str, dashboard: bool) -> tuple[float, float, float]:
    """(init returned, first result) in seconds after ``init()`` is called, and the CPU
    seconds all the cluster's processes used until then."""
    out = _run([python, "-c", _FIRST_RESULT.format(dashboard=dashboard)])
    line = next(ln for ln in out.splitlines() if ln.startswith("TIMES"))
    init, first, cpu = line.split()[1:]
    return float(init), float(first), float(cpu)


def idle(python: str, dashboard: bool, visit: bool) -> list[dict[str, Any]]:
    """One idle cluster's processes: role, pid, USS, RSS and CPU seconds used so far;
    ``visit``: after one request to the dashboard."""
    out = _run([python, "-c", _IDLE.format(dashboard=dashboard, visit=visit)])
    line = next(ln for ln in out.splitlines() if ln.startswith("ROWS"))
    return list(json.loads(line.split(" ", 1)[1]))


def _median(samples: list[float]) -> str:
    return f"{statistics.median(samples):.3f} (min {min(samples):.3f}, max {max(samples):.3f})"


def _label(dashboard: bool) -> str:
    return "default (dashboard on)" if dashboard else "include_dashboard=False"


def run_imports(pythons: list[str], runs: int) -> None:
    print(f"## import time, ms (-X importtime beyond `-c pass`; median of {runs})")
    for label, statement in IMPORTS:
        got: dict[str, list[tuple[float, int, float]]] = {py: [] for py in pythons}
        for _ in range(runs):
            for py in pythons:
                got[py].append(import_ms(py, statement))
        for py in pythons:
            ms = [s[0] for s in got[py]]
            cpu = statistics.median(s[2] for s in got[py])
            print(
                f"{_tag(py, pythons)}{label}: {_median(ms)} ms, {got[py][-1][1]} modules; "
                f"interpreter CPU {cpu:.0f} ms"
            )


def run_first(pythons: list[str], runs: int) -> None:
    print(f"## init to first result, s (median of {runs}; runs alternate)")
    got: dict[tuple[str, bool], list[tuple[float, float, float]]] = {}
    for _ in range(runs):
        for py in pythons:
            for dashboard in (True, False):
                got.setdefault((py, dashboard), []).append(first_result(py, dashboard))
    for py in pythons:
        for dashboard in (True, False):
            samples = got[(py, dashboard)]
            tag = _tag(py, pythons)
            print(f"{tag}init returned, {_label(dashboard)}: {_median([s[0] for s in samples])}")
            print(
                f"{tag}init to first result, {_label(dashboard)}: "
                f"{_median([s[1] for s in samples])}"
            )
            print(
                f"{tag}CPU s of all processes until the first result, {_label(dashboard)}: "
                f"{_median([s[2] for s in samples])}"
            )


IDLE_CASES = {  # label: (include_dashboard, visit it)
    "default, dashboard not visited": (True, False),
    "default, after one dashboard request": (True, True),
    "include_dashboard=False": (False, False),
}


def run_idle(pythons: list[str], runs: int) -> None:
    print(f"## idle cluster USS, MiB (median of {runs} clusters; CPU s used until idle)")
    got: dict[tuple[str, str], list[list[dict[str, Any]]]] = {}
    for _ in range(runs):
        for py in pythons:
            for label, (dashboard, visit) in IDLE_CASES.items():
                got.setdefault((py, label), []).append(idle(py, dashboard, visit))
    for py in pythons:
        for label in IDLE_CASES:
            _print_idle(_tag(py, pythons) + label, got[(py, label)])


def _print_idle(label: str, clusters: list[list[dict[str, Any]]]) -> None:
    totals = [sum(r["uss"] for r in rows) / MiB for rows in clusters]
    print(f"idle cluster USS total, {label}: {_median(totals)} MiB")
    by_role: dict[str, list[tuple[float, float, int]]] = {}
    for rows in clusters:
        per: dict[str, tuple[float, float, int]] = {}
        for r in rows:
            uss, cpu, n = per.get(r["role"], (0.0, 0.0, 0))
            per[r["role"]] = (uss + r["uss"] / MiB, cpu + r["cpu"], n + 1)
        for role, value in per.items():
            by_role.setdefault(role, []).append(value)
    for role in sorted(by_role):
        values = by_role[role]
        print(
            f"  {role} x{values[-1][2]}: USS {statistics.median(v[0] for v in values):.1f} MiB, "
            f"CPU {statistics.median(v[1] for v in values):.2f} s"
        )


def _tag(python: str, pythons: list[str]) -> str:
    return f"[{python}] " if len(pythons) > 1 else ""


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--what", default="import,first,idle", help="comma-separated steps")
    p.add_argument("--runs", type=int, default=7)
    p.add_argument(
        "--python",
        action="append",
        help="an interpreter (venv) to measure; give several to alternate them run by run",
    )
    p.add_argument(
        "--no-bytecode-cache",
        action="store_true",
        help="run as PYTHONDONTWRITEBYTECODE=1 leaves it: every process compiles its sources",
    )
    a = p.parse_args(argv)
    pythons = a.python or [sys.executable]
    _ENV.update(measured_env(not a.no_bytecode_cache))
    for py in pythons:
        warm_up(py)
    steps: dict[str, Callable[[list[str], int], None]] = {
        "import": run_imports,
        "first": run_first,
        "idle": run_idle,
    }
    for what in a.what.split(","):
        steps[what](pythons, a.runs)
        sys.stdout.flush()


if __name__ == "__main__":
    main()
