"""The GCS runs with a fixed glibc mmap threshold (node.DAEMON_ENV): large blocks it
frees go back to the OS, instead of moving into a heap that keeps them once a freed
large block has raised glibc's dynamic threshold (the GCS's RSS stepped up 10 MiB in
an hour's soak that way). Checked in fresh interpreters, with and without the setting."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from aioray._private.node import node

# A 16 MiB block is mapped and freed (with glibc's defaults this raises the threshold to
# 16 MiB), then 40 blocks of 1 MiB are made: how many of them glibc mapped, and how
# much of the heap the process keeps once they are freed.
PROBE = """
import ctypes, json
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks",
        "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
big = bytearray(16 << 20)
del big
blocks = [bytearray(1 << 20) for _ in range(40)]
mapped = libc.mallinfo2().hblks
del blocks
print(json.dumps({"mapped": mapped, "heap_kept": libc.mallinfo2().arena}))
"""


def probe(extra_env: dict[str, str]) -> dict[str, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**env, **extra_env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    result: dict[str, int] = json.loads(out)
    return result


def test_the_gcs_keeps_large_blocks_mapped_and_gives_them_back() -> None:
    default = probe({})
    gcs = probe(node.DAEMON_ENV["gcs"])
    assert default["mapped"] < 40 <= gcs["mapped"], (default, gcs)  # the heap took them
    assert gcs["heap_kept"] < 4 << 20 < default["heap_kept"], (default, gcs)
