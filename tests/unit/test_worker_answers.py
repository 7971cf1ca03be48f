"""Which replies a worker writes from the thread that ran the task, and which go through
its loop (daemons/worker.py, ``TaskExecutor.answer``): only a reply nothing must precede
leaves at once; one lending refs, releasing borrowed arguments, ending a stream, or with
other calls queued behind it (their replies leave together) goes through the loop."""

from __future__ import annotations

from typing import Any

import pytest
from aioray.daemons.actor_host import Job
from aioray.daemons.worker import TaskExecutor

from aioray._private.wire.task_spec import STREAMING


class FakeAnswer:
    """Stands in for an rpc.Answer: records what was sent from the thread."""

    def __init__(self) -> None:
        self.sent_now: list[Any] = []

    def send_now(self, body: Any, buffers: Any) -> bool:
        self.sent_now.append(body)
        return True


class FakeCoreWorker:
    def __init__(self) -> None:
        self.posted: list[Any] = []

    def post(self, fn: Any, *args: Any) -> None:
        self.posted.append(args[1])


class Executor:
    """The part of TaskExecutor ``answer`` uses (it is called unbound on this)."""

    def __init__(self) -> None:
        self.cw = FakeCoreWorker()
        self.reply = "loop reply"


def answer(
    spec: dict[str, Any], body: dict[str, Any], *, holds: bool = False, more: bool = False
) -> tuple[str, Any]:
    ex, fut = Executor(), FakeAnswer()
    job = Job(spec, [], fut)
    if holds:
        job.holds.append(b"borrowed")
    TaskExecutor.answer(ex, job, body, [], more)
    return ("thread" if fut.sent_now else "loop"), (fut.sent_now or ex.cw.posted)[0]


def test_a_plain_reply_leaves_from_the_thread() -> None:
    assert answer({"nret": 1}, {"r": []}) == ("thread", {"r": []})


@pytest.mark.parametrize(
    ("spec", "body", "holds", "more"),
    [
        ({"nret": 1}, {"r": [], "_lend": ["ref"]}, False, False),  # the caller borrows first
        ({"nret": 1}, {"r": []}, True, False),  # borrowed arguments are released after it
        ({"nret": STREAMING}, {"r": [], "n": 3}, False, False),  # its items go first
        ({"nret": 1}, {"r": []}, False, True),  # calls queued behind: replies go together
    ],
    ids=["lends refs", "holds borrowed args", "ends a stream", "more calls queued"],
)
def test_replies_that_must_wait_for_the_loop_go_through_it(
    spec: dict[str, Any], body: dict[str, Any], holds: bool, more: bool
) -> None:
    assert answer(spec, body, holds=holds, more=more) == ("loop", body)


class BrokenAnswer(FakeAnswer):
    def send_now(self, body: Any, buffers: Any) -> bool:
        raise OSError(9, "Bad file descriptor")


def test_a_reply_the_thread_cannot_write_goes_through_the_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An error writing from the thread (a bug of ours) must not kill the execution thread
    and leave the caller waiting forever: the loop answers instead, and it is logged."""
    ex, job = Executor(), Job({"nret": 1}, [], BrokenAnswer())
    TaskExecutor.answer(ex, job, {"r": []}, [], False)  # type: ignore[arg-type]
    assert ex.cw.posted == [{"r": []}]
    assert "answering" in caplog.text
