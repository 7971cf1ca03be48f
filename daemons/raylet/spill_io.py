"""Spill I/O: copying object segments between shared memory and the spill disk, and
the settings of where and whether to spill.

Blocking functions, run on the store service's I/O threads, never on the
raylet's loop. The copy stays in the kernel (``sendfile`` between two regular
files; no Python buffer), and every destination is written under a temporary
name and renamed into place, so a reader never sees a half-written file.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
from dataclasses import dataclass
from typing import Any

_CHUNK = 1 << 30  # sendfile moves at most ~2 GiB per call


@dataclass
class SpillConfig:
    """Where and whether to spill; Ray's option names."""

    directory: str = ""  # object_spilling_directory; "" = <session_dir>/spill
    enabled: bool = True  # _system_config automatic_object_spilling_enabled
    local_fs_capacity_threshold: float = 0.95


def spill_config_from(directory: str | None, system_config: dict[str, Any]) -> SpillConfig:
    """Build the spill settings from ``object_spilling_directory`` and ``_system_config``.

    Ray's ``object_spilling_config`` (a JSON string ``{"type": "filesystem",
    "params": {"directory_path": ...}}``) is accepted too.
    """
    cfg = SpillConfig(directory=directory or "")
    raw = system_config.get("object_spilling_config")
    if raw and not cfg.directory:
        spec = json.loads(raw) if isinstance(raw, str) else dict(raw)
        if spec.get("type", "filesystem") != "filesystem":
            raise ValueError(
                f"object_spilling_config type {spec.get('type')!r} is not supported "
                "(only 'filesystem')"
            )
        path = spec.get("params", {}).get("directory_path", "")
        cfg.directory = path[0] if isinstance(path, list) else str(path)
    if "automatic_object_spilling_enabled" in system_config:
        cfg.enabled = bool(system_config["automatic_object_spilling_enabled"])
    if "local_fs_capacity_threshold" in system_config:
        cfg.local_fs_capacity_threshold = float(system_config["local_fs_capacity_threshold"])
    return cfg


def copy_file(src: str, dst: str, size: int | None = None) -> int:
    """Copy ``src`` to ``dst`` (which must not exist); return the bytes copied.

    ``size``: copy a segment's first ``size`` bytes (its object), holding a reader's
    lock on it meanwhile, so the segment pool cannot reuse it under the copy.
    Raises FileNotFoundError if ``src`` is gone, OSError (ENOSPC, ...) on a full disk;
    ``dst`` is never left half-written.
    """
    tmp = dst + ".part"
    fin = os.open(src, os.O_RDONLY)
    try:
        if size is None:
            size = os.fstat(fin).st_size
        else:
            fcntl.flock(fin, fcntl.LOCK_SH)
            size = min(size, os.fstat(fin).st_size)
        fout = os.open(tmp, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)
        try:
            _copy_fd(fin, fout, size)
        except BaseException:
            os.close(fout)
            remove(tmp)
            raise
        os.close(fout)
    finally:
        os.close(fin)
    os.rename(tmp, dst)
    return size


def _copy_fd(fin: int, fout: int, size: int) -> None:
    done = 0
    try:
        while done < size:
            n = os.sendfile(fout, fin, done, min(_CHUNK, size - done))
            if n == 0:
                raise OSError(errno.EIO, "source file shrank while being copied")
            done += n
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOSYS) or done:
            raise
        # sendfile to this kind of file is not supported: copy through user space.
        while done < size:
            chunk = os.pread(fin, min(1 << 24, size - done), done)
            if not chunk:
                raise OSError(errno.EIO, "source file shrank while being copied") from None
            os.write(fout, chunk)
            done += len(chunk)


def remove(path: str | None) -> None:
    if path:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def disk_usage_fraction(path: str) -> float:
    """Fraction of the file system holding ``path`` that is in use (0.0 - 1.0)."""
    st = os.statvfs(path)
    if st.f_blocks == 0:
        return 0.0
    return 1.0 - st.f_bavail / st.f_blocks


def remove_tree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
