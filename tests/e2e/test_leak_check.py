"""The suite's own leak check (conftest.py) counts only this run's processes: a port
that another test run or a user's cluster on the same machine listens on is no leak
of this run (several runs share a machine, and each dashboard starts at 8265)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from conftest import listening_ports, wait_for_file, wait_ports_closed

LISTEN = """
import socket, sys, time
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen()
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(s.getsockname()[1]))
import os; os.rename(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(120)
"""
# Starts LISTEN and exits at once: the listener's parent is no longer this process.
DETACH = """
import subprocess, sys
p = subprocess.Popen(
    [sys.executable, "-c", sys.argv[1], sys.argv[2]],
    start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
)
print(p.pid)
"""


def test_only_this_run_s_listeners_count(tmp_path: Path) -> None:
    with socket.socket() as mine:
        mine.bind(("127.0.0.1", 0))
        mine.listen()
        assert mine.getsockname()[1] in listening_ports()
    path = tmp_path / "port"
    started = subprocess.run(
        [sys.executable, "-c", DETACH, LISTEN, str(path)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    other = int(started.stdout)
    try:
        port = int(wait_for_file(path, 30))
        assert port not in listening_ports()
        wait_ports_closed({"another run's": port}, timeout=1)
    finally:
        os.kill(other, signal.SIGKILL)
