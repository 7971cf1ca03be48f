"""The test folders themselves: pytest imports test modules by basename (rootdir-relative,
no packages), so two files of one name in tests/unit and tests/e2e break collection."""

from __future__ import annotations

import collections
import pathlib

TESTS = pathlib.Path(__file__).resolve().parent.parent


def test_no_two_test_modules_share_a_basename() -> None:
    names = collections.Counter(p.name for p in TESTS.rglob("test_*.py"))
    assert [n for n, c in names.items() if c > 1] == []
