"""Packages of a runtime env: local ``working_dir``/``py_modules`` zipped and uploaded once.

A package is named by its content: ``gcs://_aioray_pkg_<hash>.zip``, the hash taken
over the files' relative paths, modes and bytes (so an unchanged directory is never
zipped or uploaded again). It lives in the GCS's durable key-value store, cut into
chunks that fit a frame, the header written last so a package is either complete
or absent. Only a GCS connection is needed (``gcs_call(method, body)``): a driver
and the job-submission client use it alike; raylets download with ``read_package``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import stat
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aioray._private.core.runtime_env import URI_SCHEME, normalize

logger = logging.getLogger(__name__)

PKG_PREFIX = "_aioray_pkg_"
PACKAGE_NAME = re.compile(re.escape(PKG_PREFIX) + r"[0-9a-f]{32}\.(?:zip|whl)")
KV_NAMESPACE = "runtime_env_packages"
CHUNK_BYTES = 4 * 1024 * 1024  # well under a frame's header limit (protocol.py)
MAX_PACKAGE_BYTES = 512 * 1024 * 1024  # Ray's GCS_STORAGE_MAX_SIZE
FILE_SIZE_WARNING = 10 * 1024 * 1024
DEFAULT_EXCLUDES = (".git", ".venv", "venv", "__pycache__")
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed: the same files make the same zip

GcsCall = Callable[[str, Any], Any]
AsyncGcsCall = Callable[[str, Any], Awaitable[Any]]


# -- which files ------------------------------------------------------------------------------
class Excludes:
    """gitignore-style patterns (``*``, ``**``, ``?``, ``/``-anchoring, trailing ``/``, ``!``)."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self.rules: list[tuple[re.Pattern[str], bool, bool]] = []  # (regex, dir only, negated)
        for raw in patterns:
            pat = raw.strip()
            if not pat or pat.startswith("#"):
                continue
            negated = pat.startswith("!")
            pat = pat[1:] if negated else pat
            dir_only = pat.endswith("/")
            pat = pat.rstrip("/")
            anchored = "/" in pat
            body = _glob_regex(pat.lstrip("/"))
            regex = re.compile(("" if anchored else "(?:.*/)?") + body + "$")
            self.rules.append((regex, dir_only, negated))

    def excluded(self, rel: str, is_dir: bool) -> bool:
        out = False
        for regex, dir_only, negated in self.rules:
            if (is_dir or not dir_only) and regex.match(rel):
                out = not negated
        return out


def _glob_regex(pat: str) -> str:
    out, i = [], 0
    while i < len(pat):
        if pat.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pat.startswith("**", i):
            out.append(".*")
            i += 2
        elif pat[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pat[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pat[i]))
            i += 1
    return "".join(out)


def files_of(root: str, excludes: Iterable[str] = ()) -> list[tuple[str, str]]:
    """``(relative path, absolute path)`` of the files to ship, sorted."""
    patterns = [*DEFAULT_EXCLUDES, *excludes]
    gitignore = os.path.join(root, ".gitignore")
    if os.path.isfile(gitignore):
        with open(gitignore) as f:
            patterns += f.read().splitlines()
    rules = Excludes(patterns)
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root).replace(os.sep, "/")
        prefix = "" if rel_dir == "." else rel_dir + "/"
        dirnames[:] = sorted(d for d in dirnames if not rules.excluded(prefix + d, True))
        for name in filenames:
            if not rules.excluded(prefix + name, False):
                out.append((prefix + name, os.path.join(dirpath, name)))
    return sorted(out)


def content_hash(files: list[tuple[str, str]], field: str) -> str:
    """Hash of names, executable bits and bytes; refuses a package over the limit."""
    h = hashlib.sha256()
    total = 0
    for rel, path in files:
        size = os.path.getsize(path)
        total += size
        if size >= FILE_SIZE_WARNING:
            logger.warning(
                "runtime_env[%r]: %s is %.1f MiB; large files slow down every node's "
                "first use (exclude it with 'excludes' or .gitignore)",
                field,
                path,
                size / 2**20,
            )
        if total >= MAX_PACKAGE_BYTES:
            raise ValueError(
                f"runtime_env[{field!r}]: the package is over the "
                f"{MAX_PACKAGE_BYTES / 2**20:.0f} MiB limit; exclude large files with "
                f"'excludes' or a .gitignore."
            )
        h.update(rel.encode() + b"\0" + (b"x" if os.access(path, os.X_OK) else b"-"))
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()[:32]


def zip_files(files: list[tuple[str, str]]) -> bytes:
    import zipfile  # (here: the GCS imports this module, and never zips)

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        for rel, path in files:
            info = zipfile.ZipInfo(rel, _ZIP_TIME)
            info.external_attr = (stat.S_IMODE(os.stat(path).st_mode) | stat.S_IFREG) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            with open(path, "rb") as f:
                z.writestr(info, f.read())
    return buf.getvalue()


# -- upload -----------------------------------------------------------------------------------
class Package:
    """A package to upload: its URI (from the content hash) and how to make its bytes."""

    __slots__ = ("files", "path", "uri")

    def __init__(self, uri: str, files: list[tuple[str, str]], path: str = "") -> None:
        self.uri = uri
        self.files = files
        self.path = path  # a .zip or wheel shipped as it is

    def data(self) -> bytes:
        if self.path:
            with open(self.path, "rb") as f:
                return f.read()
        return zip_files(self.files)


def plan_env(env: dict[str, Any]) -> tuple[dict[str, Any], list[Package]]:
    """A job's env in wire form (local packages replaced by their URIs), and the
    packages to upload. Hashing happens here, so size limits fail before any upload."""
    out = dict(env)
    excludes = out.pop("excludes", ())
    packages: list[Package] = []
    if out.get("working_dir"):
        out["working_dir"] = _plan_path(out["working_dir"], "working_dir", excludes, packages)
    if out.get("py_modules"):
        out["py_modules"] = [
            _plan_path(p, "py_modules", excludes, packages) for p in out["py_modules"]
        ]
    return out, packages


def upload(packages: list[Package], gcs_call: GcsCall) -> None:
    """Upload the packages the GCS does not have yet (content-addressed: once ever)."""
    for pkg in packages:
        if gcs_call("kv_get", [KV_NAMESPACE, pkg.uri.encode()]) is None:
            put_package(pkg.uri, pkg.data(), gcs_call)


def upload_env(env: dict[str, Any], gcs_call: GcsCall) -> dict[str, Any]:
    """Validate, package and upload a user's env; return its wire form (URIs only)."""
    wire, packages = plan_env(normalize(env))
    upload(packages, gcs_call)
    return wire


def _plan_path(path: str, field: str, excludes: Iterable[str], packages: list[Package]) -> str:
    if path.startswith(URI_SCHEME):
        return path
    shipped = ""
    if os.path.isdir(path):
        # A py_modules package keeps its name: the zip holds <name>/..., put on sys.path.
        parent = os.path.basename(path.rstrip("/")) + "/" if field == "py_modules" else ""
        files, suffix = [(parent + rel, p) for rel, p in files_of(path, excludes)], ".zip"
    elif path.endswith(".py"):
        files, suffix = [(os.path.basename(path), path)], ".zip"
    else:  # a .zip or a wheel: shipped as it is
        files, shipped = [(os.path.basename(path), path)], path
        suffix = ".whl" if path.endswith(".whl") else ".zip"
    uri = f"{URI_SCHEME}{PKG_PREFIX}{content_hash(files, field)}{suffix}"
    packages.append(Package(uri, files, shipped))
    return uri


def put_package(uri: str, data: bytes, gcs_call: GcsCall) -> None:
    """Store ``data`` in chunks, then the header that makes it visible."""
    for key, value in package_entries(uri, data):
        gcs_call("kv_put", [KV_NAMESPACE, key, value, True])


def package_entries(uri: str, data: bytes) -> list[tuple[bytes, bytes]]:
    """The KV entries of a package, in the order to write them: its chunks, then the
    header (written last, so a package is complete or absent). ValueError if too big."""
    if len(data) >= MAX_PACKAGE_BYTES:
        raise ValueError(f"package {uri} is over the {MAX_PACKAGE_BYTES >> 20} MiB limit")
    chunks = range(0, max(1, len(data)), CHUNK_BYTES)
    out = [
        (f"{uri}#{i}".encode(), data[start : start + CHUNK_BYTES]) for i, start in enumerate(chunks)
    ]
    header = json.dumps({"chunks": len(chunks), "size": len(data)}).encode()
    return [*out, (uri.encode(), header)]


def package_uri(protocol: str, name: str) -> str:
    """The URI of ``/api/packages/{protocol}/{name}``; ValueError unless it names a package
    as this module makes them (``gcs``, ``_aioray_pkg_<hash>.zip|.whl``)."""
    if protocol != URI_SCHEME.rstrip(":/") or not PACKAGE_NAME.fullmatch(name):
        raise ValueError(
            f"{protocol}://{name} is not a package URI of the form "
            f"{URI_SCHEME}{PKG_PREFIX}<hash>.zip (or .whl)"
        )
    return f"{URI_SCHEME}{name}"


async def read_package(uri: str, gcs_call: AsyncGcsCall) -> bytes:
    """(raylet) The bytes of a package; LookupError if it was never uploaded."""
    header = await gcs_call("kv_get", [KV_NAMESPACE, uri.encode()])
    if header is None:
        raise LookupError(f"package {uri} is not in the GCS (was it uploaded by this cluster?)")
    meta = json.loads(bytes(header))
    parts = [
        bytes(await gcs_call("kv_get", [KV_NAMESPACE, f"{uri}#{i}".encode()]))
        for i in range(meta["chunks"])
    ]
    data = b"".join(parts)
    if len(data) != meta["size"]:
        raise LookupError(f"package {uri} is incomplete ({len(data)} of {meta['size']} bytes)")
    return data


def package_uris(env: dict[str, Any] | None) -> list[str]:
    """The packages a wire env needs on a node."""
    if not env:
        return []
    return [u for u in [env.get("working_dir"), *(env.get("py_modules") or ())] if u]
