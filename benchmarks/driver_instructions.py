"""Instructions the driver spends per task or actor call, counted by valgrind.

On a shared or noisy machine throughput and even CPU time drift by tens of percent
from run to run; the number of instructions a process executes barely moves. This
runs a small driver under ``valgrind --tool=callgrind`` (its daemons and workers run
natively) twice, for ``--small`` and ``--large`` calls, and prints the difference per
call: start-up and shutdown cancel out. Compare two checkouts by running this with
each one's interpreter, or one checkout with task events on and off:

    python benchmarks/driver_instructions.py [--kind task|actor] [--small 500 --large 3000]
    AIORAY_LEASE_LINGER_S=10 python benchmarks/driver_instructions.py --sync
    AIORAY_TASK_EVENTS_REPORT_INTERVAL_MS=0 python benchmarks/driver_instructions.py

Needs valgrind (``apt-get install valgrind``). Each run takes about a minute.
Only the driver is counted: a worker's share of a call is not.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

DRIVER = r"""
import sys
import aioray as ray
ray.init(num_cpus=2, include_dashboard=False)
kind, n, sync = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "sync"

@ray.remote
def f():
    return 1

@ray.remote
class A:
    def m(self):
        return 1

if kind == "actor":
    a = A.remote()
    call = a.m.remote
else:
    call = f.remote
ray.get([call() for _ in range(200)])  # warm: workers up, the function exported
if sync:
    for _ in range(200):
        ray.get(call())
    for _ in range(n):
        ray.get(call())
else:
    for _ in range(n // 500):
        ray.get([call() for _ in range(500)])
ray.shutdown()
"""


def instructions(kind: str, n: int, sync: bool) -> int:
    """Instructions the driver process executed for a run of ``n`` calls."""
    with tempfile.TemporaryDirectory(prefix="aioray-callgrind-") as tmp:
        out = os.path.join(tmp, "callgrind.out")
        proc = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--trace-children=no",
                f"--callgrind-out-file={out}",
                sys.executable,
                "-c",
                DRIVER,
                kind,
                str(n),
                "sync" if sync else "batch",
            ],
            capture_output=True,
            text=True,
            check=False,
            cwd=tmp,  # (not the source tree: the interpreter's own aioray is measured)
        )
        found = re.search(r"Collected : (\d+)", proc.stderr)
        if proc.returncode != 0 or found is None:
            raise SystemExit(f"the driver failed under valgrind:\n{proc.stderr[-3000:]}")
        return int(found.group(1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kind", choices=("task", "actor"), default="task")
    p.add_argument("--small", type=int, default=500)
    p.add_argument("--large", type=int, default=3000)
    p.add_argument(
        "--sync",
        action="store_true",
        help="one get(call()) at a time (the sync rows) instead of gets of 500 calls; "
        "run it with AIORAY_LEASE_LINGER_S=10: under valgrind a call takes milliseconds, "
        "and a lease returned between two calls would add a lease request to each",
    )
    a = p.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    if a.large <= a.small or a.small % 500 or a.large % 500:
        raise SystemExit("--small and --large are multiples of 500, --large the bigger")
    small, large = instructions(a.kind, a.small, a.sync), instructions(a.kind, a.large, a.sync)
    per_call = (large - small) / (a.large - a.small)
    events = os.environ.get("AIORAY_TASK_EVENTS_REPORT_INTERVAL_MS", "default")
    how = "sync" if a.sync else "in gets of 500"
    print(f"driver instructions per {a.kind} call ({how}): {per_call:,.0f} (task events: {events})")


if __name__ == "__main__":
    main()
