"""Worker logs: the driver's prefix and deduplication, per-worker log files, ``aioray logs``.

The deduplicator and the name markers are tested as pure state first; then real
clusters show the whole path (worker pipe -> raylet -> file and driver).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aioray.daemons import worker_output
from conftest import wait_for_condition

import aioray as ray
from aioray import cli
from aioray._private.owner import log_monitor
from aioray._private.owner.log_monitor import LogDeduplicator

GET_TIMEOUT = 30
NODE_IP = "127.0.0.1"


class Output:
    """Everything the test process printed so far (capfd reads consume)."""

    def __init__(self, capfd: pytest.CaptureFixture[str]) -> None:
        self.capfd = capfd
        self.text = ""

    def lines(self) -> list[str]:
        out, err = self.capfd.readouterr()
        self.text += out + err
        return self.text.splitlines()

    def wait_for(self, *needles: str) -> list[str]:
        """Wait until a line contains each needle; return all lines seen."""

        def seen() -> list[str] | None:
            lines = self.lines()
            ok = all(any(n in ln for ln in lines) for n in needles)
            return lines if ok else None

        return wait_for_condition(
            seen, 20, message=lambda: f"{needles} not printed; got:\n{self.text[-2000:]}"
        )


def _token(tag: str) -> str:
    return f"{tag}-{os.getpid()}-{time.time_ns()}"


# ------------------------------------------------------------ deduplication (pure)


def test_first_copy_prints_others_fold_into_one_summary():
    d = LogDeduplicator(window_s=5.0)
    assert d.add("(a) ", "stdout", ["hello"], "A", now=0.0) == [("stdout", "(a) hello")]
    assert d.add("(b) ", "stdout", ["hello"], "B", now=1.0) == []
    assert d.add("(c) ", "stdout", ["hello"], "C", now=2.0) == []
    assert d.next_deadline() == 5.0
    assert d.expire(4.9) == []
    [(stream, text)] = d.expire(5.0)
    assert stream == "stdout"
    assert text.startswith("(c) hello [repeated 2x across cluster]")  # the latest's prefix
    assert "AIORAY_DEDUP_LOGS=0" in text  # explained once, as Ray does
    # The next window keeps aggregating that text; an empty window forgets it.
    assert d.add("(a) ", "stdout", ["hello"], "A", now=6.0) == []
    [(_, again)] = d.expire(10.0)
    assert again == "(a) hello [repeated 1x across cluster]"
    assert d.expire(15.0) == []
    assert d.add("(b) ", "stdout", ["hello"], "B", now=16.0) == [("stdout", "(b) hello")]


def test_one_worker_repeating_itself_prints_every_line():
    d = LogDeduplicator(window_s=5.0)
    out = d.add("(a) ", "stdout", ["tick", "tick"], "A", now=0.0)
    out += d.add("(a) ", "stdout", ["tick"], "A", now=1.0)
    assert out == [("stdout", "(a) tick")] * 3
    assert d.next_deadline() is None
    assert d.flush() == []


def test_printed_lines_keep_each_workers_order():
    d = LogDeduplicator(window_s=5.0)
    assert d.add("(a) ", "stdout", ["start", "a1", "a2"], "A", now=0.0) == [
        ("stdout", "(a) start"),
        ("stdout", "(a) a1"),
        ("stdout", "(a) a2"),
    ]
    assert d.add("(b) ", "stdout", ["start", "b1", "b2"], "B", now=0.1) == [
        ("stdout", "(b) b1"),
        ("stdout", "(b) b2"),
    ]


def test_streams_and_blank_lines_are_not_merged():
    d = LogDeduplicator(window_s=5.0)
    d.add("(a) ", "stdout", ["same", ""], "A", now=0.0)
    out = d.add("(b) ", "stderr", ["same", ""], "B", now=0.1)
    assert out == [("stderr", "(b) same"), ("stderr", "(b) ")]


def test_flush_prints_every_pending_summary_and_forgets():
    d = LogDeduplicator(window_s=60.0)
    for source in "ABC":
        d.add(f"({source}) ", "stdout", ["x"], source, now=0.0)
        d.add(f"({source}) ", "stderr", ["y"], source, now=0.0)
    out = d.flush()
    assert sorted(stream for stream, _ in out) == ["stderr", "stdout"]
    assert all("[repeated 2x across cluster]" in text for _, text in out)
    assert d.flush() == [] and d.expire(100.0) == []


def test_print_lines_prefix_and_timer_summary(monkeypatch, capsys):
    """The module-level monitor prints the prefix, and its timer ends the window."""
    monkeypatch.setenv("AIORAY_DEDUP_LOGS_WINDOW_S", "0.2")
    token = _token("timer")
    log_monitor.print_lines([11, "10.0.0.1", "stdout", [token], "work"])
    log_monitor.print_lines([12, "10.0.0.2", "stdout", [token], "work"])
    log_monitor.print_lines([13, "10.0.0.2", "stderr", ["oops"]])  # no name yet
    seen: list[str] = []

    def summary() -> bool:
        out, err = capsys.readouterr()
        seen.append(out + err)
        return "[repeated 1x across cluster]" in "".join(seen)

    wait_for_condition(summary, 10, message=lambda: "".join(seen))
    text = "".join(seen)
    assert f"(work pid=11, ip=10.0.0.1) {token}\n" in text
    assert f"(work pid=12, ip=10.0.0.2) {token} [repeated 1x across cluster]" in text
    assert "(pid=13, ip=10.0.0.2) oops\n" in text
    assert text.count(token) == 2


def test_dedup_off_prints_every_copy(monkeypatch, capsys):
    monkeypatch.setenv("AIORAY_DEDUP_LOGS", "0")
    token = _token("nodedup")
    for pid in (21, 22, 23):
        log_monitor.print_lines([pid, NODE_IP, "stdout", [token], "f"])
    log_monitor.flush()
    out = capsys.readouterr().out
    assert [ln.split(" ", 1)[1] for ln in out.splitlines()] == [
        f"pid={p}, ip={NODE_IP}) {token}" for p in (21, 22, 23)
    ]


# ------------------------------------------------------------ worker-side names (pure)


def test_name_markers_label_lines_where_they_fall():
    m = worker_output.NAME_MARKER
    groups, name = worker_output.split_names(
        [b"boot", m + b"f", b"f1", b"f2", b"tail" + m + b"g", b"g1"], None
    )
    assert groups == [(None, ["boot"]), ("f", ["f1", "f2", "tail"]), ("g", ["g1"])]
    assert name == "g"
    groups, name = worker_output.split_names([b"g2"], name)  # the name carries over
    assert groups == [("g", ["g2"])]


def test_display_names_match_rays():
    assert worker_output.display_name("f", actor=False) == "f"
    assert worker_output.display_name("test_x.<locals>.f", actor=False) == "f"
    assert worker_output.display_name("Counter.incr", actor=True) == "Counter"
    assert worker_output.display_name("test_x.<locals>.Counter.__init__", actor=True) == "Counter"


# ------------------------------------------------------------ aioray logs helpers (pure)


def test_tail_lines_reads_the_end_of_a_large_file(tmp_path):
    path = tmp_path / "big.out"
    path.write_text("".join(f"line {i}\n" for i in range(50_000)))
    assert cli.tail_lines(str(path), 3) == ["line 49997\n", "line 49998\n", "line 49999\n"]
    assert len(cli.tail_lines(str(path), 20_000)) == 20_000
    assert cli.tail_lines(str(path), 0) == []
    (tmp_path / "short.out").write_text("only\nno newline")
    assert cli.tail_lines(str(tmp_path / "short.out"), 5) == ["only\n", "no newline"]


def test_latest_session_is_the_newest(tmp_path):
    for name in ("session_2024-01-01_00-00-00_1_aa", "session_2025-06-01_12-00-00_2_bb"):
        (tmp_path / name / "logs").mkdir(parents=True)
    (tmp_path / "started_nodes.json").write_text("[]")
    latest = cli.latest_session(str(tmp_path))
    assert latest == str(tmp_path / "session_2025-06-01_12-00-00_2_bb")
    assert cli.latest_session(str(tmp_path / "missing")) is None


# ------------------------------------------------------------ clusters


@pytest.fixture
def long_dedup_window(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A window no test outlasts: summaries come from flush(), not the timer."""
    monkeypatch.setenv("AIORAY_DEDUP_LOGS_WINDOW_S", "600")
    yield
    log_monitor.flush()


def test_identical_lines_from_several_workers_print_once_with_a_count(
    long_dedup_window, ray_start, capfd
):
    @ray.remote
    class Speaker:
        def say(self, text: str) -> int:
            print(text, flush=True)
            return os.getpid()

    speakers = [Speaker.remote() for _ in range(3)]
    token = _token("dedup")
    pids = ray.get([s.say.remote(token) for s in speakers], timeout=GET_TIMEOUT)
    assert len(set(pids)) == 3
    # Each worker's lines reach the driver in order: once every worker's unique
    # line is printed, all three copies of the token have been seen.
    ray.get([s.say.remote(f"done-{token}-{i}") for i, s in enumerate(speakers)])
    output = Output(capfd)
    output.wait_for(*(f"done-{token}-{i}" for i in range(3)))
    log_monitor.flush()
    copies = [ln for ln in output.lines() if token in ln and "done-" not in ln]
    assert len(copies) == 2, copies
    assert copies[0].endswith(f") {token}")
    assert f"{token} [repeated 2x across cluster]" in copies[1]
    for line in copies:
        assert any(f"pid={pid}, ip={NODE_IP})" in line for pid in pids), line


@pytest.mark.parametrize("ray_start", [{"log_to_driver": False}], indirect=True)
def test_log_to_driver_false_silences_but_still_writes_the_file(ray_start, capfd):
    token = _token("quiet")

    @ray.remote
    def talk(text):
        print(text, flush=True)
        return os.getpid()

    pid = ray.get(talk.remote(token), timeout=GET_TIMEOUT)
    path = Path(ray_start.address_info["session_dir"], "logs", f"worker-{pid}.out")
    wait_for_condition(lambda: path.exists() and token in path.read_text())
    out, err = capfd.readouterr()
    assert token not in out + err


def test_prefix_names_the_task_and_the_actor_class(ray_start, capfd):
    token = _token("named")

    @ray.remote
    def shout(text):
        print(text, flush=True)
        return os.getpid()

    @ray.remote
    class Herald:
        def announce(self, text):
            print(text, flush=True)
            return os.getpid()

    task_pid = ray.get(shout.remote(f"task-{token}"), timeout=GET_TIMEOUT)
    herald = Herald.remote()
    actor_pid = ray.get(herald.announce.remote(f"actor-{token}"), timeout=GET_TIMEOUT)
    lines = Output(capfd).wait_for(f"task-{token}", f"actor-{token}")
    assert f"(shout pid={task_pid}, ip={NODE_IP}) task-{token}" in lines
    assert f"(Herald pid={actor_pid}, ip={NODE_IP}) actor-{token}" in lines


@pytest.mark.parametrize("ray_start", [{"num_cpus": 1}], indirect=True)
def test_output_keeps_the_name_of_the_task_that_wrote_it(ray_start, capfd):
    """A line finished by the next task on the worker is split where the task changed."""
    token = _token("handover")

    @ray.remote
    def first(text):
        os.write(1, f"{text}-unterminated".encode())  # no newline: still in the pipe
        return os.getpid()

    @ray.remote
    def second(text):
        print(f"{text}-second", flush=True)
        return os.getpid()

    pid = ray.get(first.remote(token), timeout=GET_TIMEOUT)
    assert ray.get(second.remote(token), timeout=GET_TIMEOUT) == pid  # the only worker
    lines = Output(capfd).wait_for(f"{token}-second")
    assert f"(first pid={pid}, ip={NODE_IP}) {token}-unterminated" in lines
    assert f"(second pid={pid}, ip={NODE_IP}) {token}-second" in lines


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_worker_log_files_and_the_logs_command(ray_start, tmp_path):
    token = _token("file")

    @ray.remote
    class Writer:  # one worker for the whole test, so --follow sees the later lines
        def both(self, text):
            print(f"out {text}", flush=True)
            print(f"err {text}", file=sys.stderr, flush=True)
            return os.getpid()

    writer = Writer.remote()
    pid = ray.get(writer.both.remote(token), timeout=GET_TIMEOUT)
    session = ray_start.address_info["session_dir"]
    logs = Path(session, "logs")
    out_file, err_file = logs / f"worker-{pid}.out", logs / f"worker-{pid}.err"
    wait_for_condition(lambda: out_file.exists() and f"out {token}" in out_file.read_text())
    wait_for_condition(lambda: err_file.exists() and f"err {token}" in err_file.read_text())
    assert f"err {token}" not in out_file.read_text()

    def aioray_logs(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "aioray.cli", "logs", *args],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    # The latest session under the root is this test's.
    listing = aioray_logs()
    assert session in listing
    for name in ("gcs.log", "raylet.log", out_file.name, err_file.name):
        assert name in listing
    assert f"out {token}" in aioray_logs(out_file.name, "--session-dir", session)
    by_pid = aioray_logs(str(pid), "--session-dir", session)
    assert f"==> {out_file.name} <==" in by_pid and f"err {token}" in by_pid
    assert aioray_logs("raylet.log", "-n", "2").count("\n") <= 2

    missing = subprocess.run(
        [sys.executable, "-m", "aioray.cli", "logs", "nope.log", "--session-dir", session],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert missing.returncode == 1 and "no log file" in missing.stderr

    # --follow prints what the worker writes later, until interrupted.
    followed = tmp_path / "followed.txt"
    with open(followed, "w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "aioray.cli", "logs", str(pid), "-f", "-n", "1"],
            stdout=sink,
            stderr=subprocess.STDOUT,
            # Ctrl-C as a terminal delivers it: a suite started in the background (`cmd &`
            # in a script) runs with SIGINT ignored, which the child would inherit.
            preexec_fn=_default_sigint,
        )
    try:
        wait_for_condition(lambda: f"err {token}" in followed.read_text(), 20)
        later = _token("later")
        assert ray.get(writer.both.remote(later), timeout=GET_TIMEOUT) == pid
        wait_for_condition(
            lambda: (
                f"out {later}" in followed.read_text() and f"err {later}" in followed.read_text()
            ),
            20,
            message=lambda: followed.read_text(),
        )
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
