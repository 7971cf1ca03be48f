"""Driver side of worker logs: print forwarded lines with their origin prefix."""

from __future__ import annotations

import sys
from typing import Any


def print_lines(body: list[Any]) -> None:
    """Print one ``worker_log`` message: ``[pid, ip, stream, lines]``."""
    pid, ip, stream, lines = body[:4]
    out = sys.stderr if stream == "stderr" else sys.stdout
    prefix = f"(pid={pid}, ip={ip}) "
    try:
        out.write("".join(f"{prefix}{line}\n" for line in lines))
        out.flush()
    except (OSError, ValueError):  # the driver's stream is closed
        pass
