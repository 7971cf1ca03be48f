"""Notebooks: examples/notebook.ipynb run headless, HTML views, progress bars, Ctrl-C.

The notebook runs in a real Jupyter kernel (nbclient + ipykernel) started from this
interpreter through a kernelspec written to a temporary JUPYTER_PATH, so the tests
never depend on which kernels the machine has installed. Where nbclient cannot
look (which cell a late print belongs to, interrupting a running cell) the tests
drive a kernel with jupyter_client, as a notebook frontend does. Interrupting a
blocking ``get`` is also tested on a plain driver subprocess, signalled alone and
as a process group (what Ctrl-C in a terminal and Jupyter's interrupt both do).

Order matters: the tests whose cluster lives in a kernel or a subprocess, the
cluster-free tests and the ``ray_start`` test come before the tests on the
module's ``ray_shared`` cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from conftest import aioray_processes, assert_no_leaks, shm_entries, wait_for_condition

import aioray as ray
from aioray import _html
from aioray.exceptions import GetTimeoutError
from aioray.util.progress import PlainBar, make_bar, progress

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "examples" / "notebook.ipynb"
KERNEL_NAME = "aioray-test"
CELL_TIMEOUT_S = 60

# The module itself: once aioray.util exports the function ``progress``, the attribute
# aioray.util.progress names the function, not this module.
progress_module = sys.modules["aioray.util.progress"]


# ------------------------------------------------------------------ the notebook


def _write_kernelspec(root: Path) -> None:
    """A kernelspec for this interpreter (a venv's own python, with aioray installed)."""
    spec = root / "kernels" / KERNEL_NAME
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel = {"argv": argv, "display_name": "aioray tests", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(kernel))


@contextlib.contextmanager
def _kernel_manager(root: Path) -> Iterator[Any]:
    """A KernelManager for our kernelspec, talking over Unix sockets.

    The kernelspec comes first on JUPYTER_PATH; runtime files and IPython's profile
    live in ``root``. IPC rather than TCP: picking free TCP ports races with
    anything else binding ports (the cluster's daemons), and a kernel that loses the
    race dies at start.
    """
    manager = pytest.importorskip("jupyter_client.manager")
    pytest.importorskip("ipykernel")
    _write_kernelspec(root)
    sockets = tempfile.mkdtemp(prefix="aioray-kernel-")  # short: a socket path is <108 bytes
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("JUPYTER_PATH", str(root))
            mp.setenv("JUPYTER_RUNTIME_DIR", str(root / "runtime"))
            mp.setenv("IPYTHONDIR", str(root / "ipython"))
            yield manager.KernelManager(
                kernel_name=KERNEL_NAME, transport="ipc", ip=os.path.join(sockets, "k")
            )
    finally:
        shutil.rmtree(sockets, ignore_errors=True)


@pytest.fixture(scope="module")
def executed_notebook(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """examples/notebook.ipynb after running it top to bottom; it must leave nothing behind."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    processes_before, shm_before = aioray_processes(), shm_entries()
    with _kernel_manager(tmp_path_factory.mktemp("jupyter")) as km:
        client = nbclient.NotebookClient(
            nb,
            km=km,
            kernel_name=KERNEL_NAME,
            timeout=CELL_TIMEOUT_S,
            startup_timeout=CELL_TIMEOUT_S,
            allow_errors=True,  # report every failing cell below, not only the first
            resources={"metadata": {"path": str(NOTEBOOK.parent)}},
        )
        client.execute()
    assert_no_leaks(processes_before, shm_before, None, "examples/notebook.ipynb")
    return nb


def _code_cells(nb: Any) -> list[Any]:
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def _cell(nb: Any, marker: str) -> Any:
    """The code cell whose source contains ``marker``."""
    found = [cell for cell in _code_cells(nb) if marker in cell.source]
    assert len(found) == 1, f"expected one cell containing {marker!r}, found {len(found)}"
    return found[0]


def _stream(cell: Any, name: str) -> str:
    return "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == name)


def _result(cell: Any, mime: str = "text/plain") -> str:
    results = [o for o in cell.outputs if o.output_type == "execute_result"]
    assert results, f"cell has no result: {cell.source!r}"
    return str(results[0].data.get(mime, ""))


def test_notebook_runs_top_to_bottom(executed_notebook: Any) -> None:
    failures = [
        f"cell {cell.source.splitlines()[0]!r}: {o.ename}: {o.evalue}"
        for cell in _code_cells(executed_notebook)
        for o in cell.outputs
        if o.output_type == "error"
    ]
    assert not failures, "\n".join(failures)
    assert all(cell.execution_count for cell in _code_cells(executed_notebook))


def test_notebook_results(executed_notebook: Any) -> None:
    nb = executed_notebook
    assert _result(_cell(nb, "ray.get(square.remote(7))")) == "49"
    assert _result(_cell(nb, "ray.get(refs)")) == "[0, 1, 4, 9]"
    assert "writeable: False sum: 1000000.0" in _stream(_cell(nb, "ray.put(np.ones"), "stdout")
    assert _result(_cell(nb, "counter = Counter.remote()")) == "[1, 2, 3]"
    assert _result(_cell(nb, "await square.remote(9)")) == "81"
    assert _result(_cell(nb, "await asyncio.gather")) == "[100, 121, 144, 169, 13]"
    assert _result(_cell(nb, "again = ray.init(ignore_reinit_error=True)")) == "400"
    assert _result(_cell(nb, "ray.shutdown()")) == "False"


def test_notebook_shows_html_views(executed_notebook: Any) -> None:
    nb = executed_notebook
    context = _result(_cell(nb, "ctx = ray.init("), "text/html")
    assert "aioray cluster" in context and "CPU: " in context
    assert 'href="http://127.0.0.1:' in context  # the dashboard init started
    ref = _result(_cell(nb, "ray.put(np.ones"), "text/html")
    assert "ObjectRef" in ref and "ready (shared memory" in ref
    actor = _result(_cell(nb, "counter  #"), "text/html")
    assert "<code>Counter</code>" in actor and "ALIVE" in actor


def test_notebook_progress_bar(executed_notebook: Any) -> None:
    cell = _cell(executed_notebook, "progress([slow_square")
    assert _result(cell) == "2470"
    bar = _stream(cell, "stderr")
    assert "squares" in bar and "20/20" in bar


def test_notebook_task_prints_in_their_cell(executed_notebook: Any) -> None:
    out = _stream(_cell(executed_notebook, "ray.get(square.remote(7))"), "stdout")
    assert "squaring 7" in out and "pid=" in out, f"cell stdout: {out!r}"


def test_notebook_cells_do_not_warn(executed_notebook: Any) -> None:
    warned = [
        _stream(cell, "stderr")
        for cell in _code_cells(executed_notebook)
        if "Warning" in _stream(cell, "stderr")
    ]
    assert not warned, "\n".join(warned)


# ------------------------------------------------------------- a live kernel


class _Kernel:
    """A Jupyter kernel driven as a frontend does: execute, read iopub, interrupt."""

    def __init__(self, km: Any, kc: Any) -> None:
        self.km, self.kc = km, kc
        self.messages: list[dict[str, Any]] = []  # every iopub message read so far

    def run(self, code: str, timeout: float = CELL_TIMEOUT_S) -> dict[str, Any]:
        """Execute ``code``; return its execute_reply once the cell is idle again."""
        return self.finish(self.kc.execute(code), timeout)

    def finish(self, msg_id: str, timeout: float = CELL_TIMEOUT_S) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:  # skip late replies to earlier requests (a slow kernel_info, say)
            reply = self.kc.get_shell_msg(timeout=max(0.1, deadline - time.monotonic()))
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        self.wait_for(
            lambda m: (
                m["msg_type"] == "status"
                and m["content"]["execution_state"] == "idle"
                and m["parent_header"].get("msg_id") == msg_id
            ),
            timeout,
        )
        return dict(reply["content"])

    def outputs(self, msg_id: str) -> str:
        """What the cell printed and returned, as text."""
        return "".join(
            m["content"].get("text", "") + str(m["content"].get("data", {}).get("text/plain", ""))
            for m in self.messages
            if m["parent_header"].get("msg_id") == msg_id
        )

    def wait_for(self, match: Any, timeout: float) -> dict[str, Any]:
        """The first iopub message (already read or still to come) that ``match``es."""
        for m in self.messages:
            if match(m):
                return m
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"no such iopub message in {timeout}s; read {len(self.messages)}")
            try:
                m = self.kc.get_iopub_msg(timeout=left)
            except queue.Empty:
                continue
            self.messages.append(m)
            if match(m):
                return m

    def wait_for_stream(self, text: str, timeout: float = CELL_TIMEOUT_S) -> dict[str, Any]:
        return self.wait_for(
            lambda m: m["msg_type"] == "stream" and text in m["content"]["text"], timeout
        )


@pytest.fixture
def kernel(tmp_path: Path) -> Iterator[_Kernel]:
    """A fresh kernel running this interpreter; its cluster is shut down afterwards."""
    with _kernel_manager(tmp_path) as km:
        km.start_kernel()
        kc = km.client()
        try:
            kc.start_channels()
            kc.wait_for_ready(timeout=CELL_TIMEOUT_S)
            k = _Kernel(km, kc)
            yield k
            try:
                k.run("import aioray\naioray.shutdown()", timeout=15)
            except queue.Empty:
                pass  # a stuck kernel: killing it below stops its cluster (the lifeline)
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=True)


KERNEL_SETUP = """
import time

import aioray as ray

ray.init(num_cpus=2)


@ray.remote
def shout(text):
    print(text)
    return text


@ray.remote
def sleeper():
    time.sleep(60)


@ray.remote
def quick(x):
    return x + 1
"""


def test_task_prints_go_to_the_cell_that_started_them(kernel: _Kernel) -> None:
    assert kernel.run(KERNEL_SETUP)["status"] == "ok"
    for word in ("first", "second"):  # the second task reuses the first's worker
        msg_id = kernel.kc.execute(f"ray.get(shout.remote('from-{word}-cell'))")
        assert kernel.finish(msg_id)["status"] == "ok"
        # Filed under this cell (Jupyter shows it there), and before the cell went idle.
        printed = kernel.outputs(msg_id)
        assert f"from-{word}-cell" in printed and "pid=" in printed, printed


def test_interrupting_a_cell_stuck_in_get(kernel: _Kernel) -> None:
    assert kernel.run(KERNEL_SETUP)["status"] == "ok"
    stuck = kernel.kc.execute("ref = sleeper.remote()\nprint('BLOCKING', flush=True)\nray.get(ref)")
    kernel.wait_for_stream("BLOCKING")
    kernel.km.interrupt_kernel()  # SIGINT to the kernel's process group, as the UI does
    reply = kernel.finish(stuck, timeout=15)
    assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt", reply
    after = kernel.kc.execute("ray.get(quick.remote(41), timeout=20)")
    assert kernel.finish(after)["status"] == "ok"
    assert "42" in kernel.outputs(after)


# ------------------------------------------------------------- Ctrl-C in a get

INTERRUPTED_DRIVER = textwrap.dedent(
    """
    import time

    import aioray as ray

    ray.init(num_cpus=2)


    @ray.remote
    def sleeper():
        time.sleep(60)


    @ray.remote
    def quick(x):
        return x + 1


    ref = sleeper.remote()
    try:
        print("READY", flush=True)
        ray.get(ref)
        print("NOT INTERRUPTED", flush=True)
    except KeyboardInterrupt:
        print("INTERRUPTED", flush=True)
    print("RESULT", ray.get(quick.remote(41), timeout=20), flush=True)
    ray.shutdown()
    """
)


class _Driver:
    """A driver subprocess in a session of its own, its output collected by threads."""

    def __init__(self, script: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", script],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            start_new_session=True,  # a group signal must not reach pytest
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.out: list[str] = []
        self.err: list[str] = []
        self._threads = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out, True)),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err, False)),
        ]
        for t in self._threads:
            t.start()

    def _read(self, stream: Any, into: list[str], lines: bool) -> None:
        for line in stream:
            into.append(line)
            if lines:
                self.lines.put(line)
        if lines:
            self.lines.put(None)

    def wait_for_line(self, text: str, timeout: float) -> None:
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                pytest.fail(f"driver printed no {text!r} in {timeout}s; stderr:\n{self.output}")
            if line is None:
                pytest.fail(f"driver exited before printing {text!r}:\n{self.output}")
            if line.strip() == text:
                return

    def wait(self, timeout: float) -> int:
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            for t in self._threads:
                t.join(5)
        return code

    @property
    def output(self) -> str:
        return "".join(self.out) + "".join(self.err)


@pytest.mark.parametrize("target", ["driver", "process group"])
def test_interrupting_a_blocking_get_keeps_the_cluster_usable(target: str) -> None:
    driver = _Driver(INTERRUPTED_DRIVER)
    try:
        driver.wait_for_line("READY", timeout=30)
        main_thread = psutil.Process(driver.proc.pid)
        # The main thread waits inside get (the state is the thread group leader's).
        wait_for_condition(lambda: main_thread.status() == psutil.STATUS_SLEEPING, timeout=10)
        if target == "driver":
            os.kill(driver.proc.pid, signal.SIGINT)
        else:
            os.killpg(driver.proc.pid, signal.SIGINT)
        code = driver.wait(timeout=30)
    finally:
        if driver.proc.poll() is None:
            driver.wait(timeout=0)
    out = "".join(driver.out)
    assert "INTERRUPTED" in out.split(), driver.output
    assert "RESULT 42" in out, driver.output
    assert code == 0, driver.output


# ------------------------------------------------------------------ HTML views


def test_html_views_never_raise() -> None:
    assert "view failed" in _html.context_html(object())
    assert "view failed" in _html.object_ref_html(object())
    assert "view failed" in _html.actor_handle_html(object())


@ray.remote
class Gate:
    """Calls to ``wait`` stay pending until ``open`` is called (an async actor)."""

    def __init__(self) -> None:
        self.event: asyncio.Event | None = None

    def _ev(self) -> asyncio.Event:
        if self.event is None:
            self.event = asyncio.Event()
        return self.event

    async def wait(self) -> str:
        await self._ev().wait()
        return "opened"

    async def open(self) -> None:
        self._ev().set()


@ray.remote
class Counter:
    def __init__(self) -> None:
        self.n = 0

    def incr(self) -> int:
        self.n += 1
        return self.n


@ray.remote
def fail() -> None:
    raise ValueError("boom")


@ray.remote
def square(x: int) -> int:
    return x * x


def test_html_views_after_shutdown_do_not_reconnect(ray_start: Any) -> None:
    ref = ray.put(1)
    counter = Counter.remote()
    ray.get(counter.incr.remote())
    ray.shutdown()
    assert "not connected" in ray_start._repr_html_()
    assert ref.hex() in ref._repr_html_() and "unknown" in ref._repr_html_()
    assert "unknown" in counter._repr_html_()
    assert not ray.is_initialized(), "an HTML view started a cluster"


def test_context_html_shows_resources_and_dashboard(ray_shared: Any) -> None:
    view = ray_shared._repr_html_()
    assert ray_shared["gcs_address"] in view
    assert "connected" in view and "CPU: " in view and " of 2<" in view
    assert f'href="http://{ray_shared.dashboard_url}"' in view
    again = ray.init(ignore_reinit_error=True)
    assert again.dashboard_url == ray_shared.dashboard_url
    again.dashboard_url = None
    assert "no dashboard" in again._repr_html_()


def test_object_ref_html_follows_the_object(ray_shared: Any) -> None:
    gate = Gate.remote()
    pending = gate.wait.remote()
    view = pending._repr_html_()
    assert pending.hex() in view and "pending" in view
    gate.open.remote()
    assert ray.get(pending, timeout=20) == "opened"
    assert "ready (inline" in pending._repr_html_()
    assert "ready (shared memory" in ray.put(np.ones(1_000_000))._repr_html_()
    failed = fail.remote()
    ray.wait([failed], timeout=20)
    assert "the task failed" in failed._repr_html_()


def test_actor_handle_html_shows_class_id_and_state(ray_shared: Any) -> None:
    counter = Counter.remote()
    assert ray.get(counter.incr.remote(), timeout=20) == 1
    view = counter._repr_html_()
    assert "<code>Counter</code>" in view and counter._actor_id.hex() in view
    assert "ALIVE" in view
    ray.kill(counter)
    wait_for_condition(lambda: "DEAD" in counter._repr_html_(), timeout=10)


# ---------------------------------------------------------------------- progress


def test_plain_bar_draws_in_place_and_ends_the_line() -> None:
    out = io.StringIO()
    bar = PlainBar(3, "work", file=out)
    bar.update(1)
    bar.update(2)
    bar.close()
    text = out.getvalue()
    assert text.startswith("\rwork: 0/3 (0%)") and text.endswith("\rwork: 3/3 (100%)\n")
    assert text.count("3/3") == 1


def test_progress_returns_values_in_order(ray_shared: Any, capsys: Any) -> None:
    refs = [square.remote(i) for i in range(20)]
    assert progress(refs, desc="squares") == [i * i for i in range(20)]
    assert "squares" in capsys.readouterr().err
    assert progress(refs[3]) == 9
    assert progress([refs[2], refs[2]]) == [4, 4]
    assert progress([]) == []


def test_progress_without_tqdm(ray_shared: Any, monkeypatch: Any) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm now raises ImportError
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    assert isinstance(make_bar(1), PlainBar)
    refs = [square.remote(i) for i in range(5)]
    assert progress(refs, desc="plain") == [0, 1, 4, 9, 16]
    assert "plain: 5/5 (100%)" in err.getvalue()


class _RecordingBar:
    def __init__(self) -> None:
        self.updates: list[int] = []
        self.closed = False

    def update(self, n: int) -> None:
        self.updates.append(n)

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def recording_bar(monkeypatch: Any) -> Iterator[_RecordingBar]:
    bar = _RecordingBar()
    monkeypatch.setattr(progress_module, "make_bar", lambda total, desc=None: bar)
    yield bar


def test_progress_advances_as_refs_complete(ray_shared: Any, recording_bar: _RecordingBar) -> None:
    gate = Gate.remote()
    refs = [ray.put("now"), gate.wait.remote()]
    result: list[Any] = []
    waiter = threading.Thread(target=lambda: result.append(progress(refs)))
    waiter.start()
    wait_for_condition(lambda: recording_bar.updates == [1], timeout=10)
    assert waiter.is_alive()
    gate.open.remote()
    waiter.join(20)
    assert result == [["now", "opened"]]
    assert recording_bar.updates == [1, 1] and recording_bar.closed


def test_progress_timeout_and_errors(ray_shared: Any, recording_bar: _RecordingBar) -> None:
    gate = Gate.remote()
    pending = gate.wait.remote()
    with pytest.raises(GetTimeoutError):
        progress([pending], timeout=0.2)
    assert recording_bar.closed
    gate.open.remote()
    with pytest.raises(ValueError, match="boom"):
        progress([pending, fail.remote()])
    with pytest.raises(TypeError):
        progress("not a ref")
