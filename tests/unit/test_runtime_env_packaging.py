"""Unit tests of runtime_env packaging: file selection, content hash, chunked upload."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import zipfile
from pathlib import Path
from typing import Any

import pytest

from aioray._private.node import runtime_env_packaging as packaging


class FakeKV:
    """The GCS's kv_put/kv_get, in memory, counting puts."""

    def __init__(self) -> None:
        self.data: dict[tuple[str, bytes], bytes] = {}
        self.puts = 0

    def __call__(self, method: str, body: Any) -> Any:
        if method == "kv_put":
            ns, key, value, _ = body
            self.data[(ns, key)] = value
            self.puts += 1
            return True
        assert method == "kv_get"
        return self.data.get((body[0], body[1]))

    async def call_async(self, method: str, body: Any) -> Any:
        return self(method, body)


def make_tree(root: Path) -> None:
    (root / "pkg").mkdir(parents=True)
    (root / "main.py").write_text("X = 1\n")
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "data.log").write_text("log")
    for junk in (".git", ".venv", "venv", "__pycache__", "pkg/__pycache__"):
        (root / junk).mkdir(exist_ok=True)
        (root / junk / "junk").write_text("junk")
    (root / "build").mkdir()
    (root / "build" / "out.bin").write_text("out")
    (root / "keep.log").write_text("kept")
    (root / ".gitignore").write_text("# generated\nbuild/\n*.log\n!keep.log\n")


def test_default_excludes_gitignore_and_patterns(tmp_path: Path) -> None:
    make_tree(tmp_path)
    rels = [rel for rel, _ in packaging.files_of(str(tmp_path))]
    assert rels == [".gitignore", "keep.log", "main.py", "pkg/__init__.py"]
    rels = [rel for rel, _ in packaging.files_of(str(tmp_path), ["pkg/", "/main.py"])]
    assert rels == [".gitignore", "keep.log"]


def test_excludes_globs() -> None:
    rules = packaging.Excludes(["**/tmp/*.csv", "/top", "docs/*.md"])
    assert rules.excluded("a/b/tmp/x.csv", False) and rules.excluded("tmp/x.csv", False)
    assert rules.excluded("top", True) and not rules.excluded("a/top", True)
    assert rules.excluded("docs/a.md", False) and not rules.excluded("docs/sub/a.md", False)


def test_hash_and_zip_are_deterministic_and_content_addressed(tmp_path: Path) -> None:
    make_tree(tmp_path / "a")
    make_tree(tmp_path / "b")
    files_a = packaging.files_of(str(tmp_path / "a"))
    files_b = packaging.files_of(str(tmp_path / "b"))
    hash_a = packaging.content_hash(files_a, "working_dir")
    assert hash_a == packaging.content_hash(files_b, "working_dir")
    assert packaging.zip_files(files_a) == packaging.zip_files(files_b)
    (tmp_path / "b" / "main.py").write_text("X = 2\n")
    assert packaging.content_hash(files_b, "working_dir") != hash_a


def test_upload_once_in_chunks_and_read_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(packaging, "CHUNK_BYTES", 1000)
    make_tree(tmp_path)
    blob = os.urandom(10_000)  # incompressible: several chunks
    (tmp_path / "blob.bin").write_bytes(blob)
    kv = FakeKV()
    wire = packaging.upload_env({"working_dir": str(tmp_path), "env_vars": {"A": "1"}}, kv)
    uri = wire["working_dir"]
    assert uri.startswith("gcs://_aioray_pkg_") and uri.endswith(".zip")
    assert wire["env_vars"] == {"A": "1"} and "excludes" not in wire
    assert kv.puts > 3
    puts = kv.puts
    assert packaging.upload_env({"working_dir": str(tmp_path)}, kv)["working_dir"] == uri
    assert kv.puts == puts  # already there: not zipped nor uploaded again
    data = asyncio.run(packaging.read_package(uri, kv.call_async))
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        assert "main.py" in z.namelist() and z.read("blob.bin") == blob
    with pytest.raises(LookupError, match="not in the GCS"):
        asyncio.run(packaging.read_package("gcs://_aioray_pkg_missing.zip", kv.call_async))


def test_py_modules_keep_their_package_name(tmp_path: Path) -> None:
    (tmp_path / "mylib").mkdir()
    (tmp_path / "mylib" / "__init__.py").write_text("")
    (tmp_path / "single.py").write_text("")
    kv = FakeKV()
    wire = packaging.upload_env(
        {"py_modules": [str(tmp_path / "mylib"), str(tmp_path / "single.py")]}, kv
    )
    names = []
    for uri in wire["py_modules"]:
        data = asyncio.run(packaging.read_package(uri, kv.call_async))
        names += zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert names == ["mylib/__init__.py", "single.py"]


def test_size_limit_and_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(packaging, "FILE_SIZE_WARNING", 100)
    (tmp_path / "big.bin").write_bytes(b"x" * 200)
    with caplog.at_level(logging.WARNING):
        packaging.plan_env({"working_dir": str(tmp_path)})
    assert "big.bin is 0.0 MiB" in caplog.text
    monkeypatch.setattr(packaging, "MAX_PACKAGE_BYTES", 150)
    with pytest.raises(ValueError, match=r"runtime_env\['working_dir'\].*over the"):
        packaging.plan_env({"working_dir": str(tmp_path)})
