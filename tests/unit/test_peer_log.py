"""Unit tests for aioray._private.rpc.peer_log: the per-kind budget of warnings and its summary."""

from __future__ import annotations

import logging

import pytest

from aioray._private.rpc.peer_log import RateLimitedLog


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def log(clock: Clock, caplog: pytest.LogCaptureFixture) -> RateLimitedLog:
    caplog.set_level(logging.WARNING, logger="test.peer_log")
    return RateLimitedLog(logging.getLogger("test.peer_log"), burst=2, window_s=60.0, clock=clock)


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def test_a_kind_writes_its_burst_then_counts(
    log: RateLimitedLog, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    assert log.warning("frame", "bad %d", 1) is None
    assert log.warning("frame", "bad %d", 2) is None
    clock.now = 10.0
    assert log.warning("frame", "bad %d", 3) == 50.0  # the first held back: flush is due then
    assert log.warning("frame", "bad %d", 4) is None
    assert messages(caplog) == ["bad 1", "bad 2"]
    clock.now = 59.999  # a timer that fired a little early (uvloop rounds to the ms)
    assert log.flush() == pytest.approx(0.001)  # the window has not ended: due again then
    assert messages(caplog) == ["bad 1", "bad 2"]
    clock.now = 60.0
    assert log.flush() is None
    assert messages(caplog)[2:] == ["2 more such warnings (frame) in the last 60 s"]
    log.flush()  # summarised once
    assert len(messages(caplog)) == 3


def test_kinds_have_separate_budgets(log: RateLimitedLog, caplog: pytest.LogCaptureFixture) -> None:
    for kind in ("a", "a", "a", "b", "b"):
        log.warning(kind, "from %s", kind)
    assert messages(caplog) == ["from a", "from a", "from b", "from b"]


def test_a_new_window_summarises_the_last_and_writes_again(
    log: RateLimitedLog, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    for i in range(5):
        log.warning("k", "w%d", i)
    clock.now = 61.0  # no flush ran: the next warning summarises the ended window
    log.warning("k", "w%d", 5)
    assert messages(caplog) == [
        "w0",
        "w1",
        "3 more such warnings (k) in the last 60 s",
        "w5",
    ]


def test_a_quiet_window_writes_no_summary(
    log: RateLimitedLog, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    log.warning("k", "once")
    clock.now = 100.0
    log.flush()
    assert messages(caplog) == ["once"]
