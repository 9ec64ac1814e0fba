"""The entry-script process on its own, over a socketpair as the runner starts it: no Dask, no driver.

Started (before any Setup), Setup -> Ready (or Failed and the process ends), Run -> Loaded -> Done or Failed, Shutdown -> Bye."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest

from airflow_parallel_run.core import FileDataset
from airflow_parallel_run.core.attempt import AttemptStage, AttemptStatus
from airflow_parallel_run.core.minibatch import FileRef, MiniBatch
from airflow_parallel_run.core.worker.messages import (
    Bye,
    Done,
    Failed,
    Loaded,
    Ready,
    Run,
    Setup,
    Shutdown,
    Started,
)

SCRIPT = """
import os
def init():
    global tag
    tag = os.environ.get("TAG", "none")
def run(mini_batch):
    names = [os.path.basename(p) for p in mini_batch]
    if "boom.txt" in names:
        raise KeyError("boom")
    if "bad.txt" in names:
        return 42
    return [f"{name} {tag}" for name in names]
def shutdown():
    print("shutdown ran")
"""


@dataclass
class Child:
    conn: Connection
    proc: subprocess.Popen[bytes]
    root: Path

    def ask(self, message: Any, timeout: float = 60.0) -> Any:
        self.conn.send(message)
        return self.answer(timeout)

    def answer(self, timeout: float = 60.0) -> Any:
        assert self.conn.poll(timeout), "no answer from the entry-script process"
        return self.conn.recv()


def _start(
    root: Path, script: str, output_action: str = "append_row", datasets: tuple[Any, ...] = ()
) -> Child:
    (root / "code").mkdir(parents=True, exist_ok=True)
    (root / "work").mkdir(exist_ok=True)
    (root / "code" / "score.py").write_text(textwrap.dedent(script))
    parent, child = socket.socketpair()
    proc = subprocess.Popen(
        [sys.executable, "-m", "airflow_parallel_run.core.worker.child", str(child.fileno())],
        pass_fds=[child.fileno()],
        stdout=open(root / "stdout.txt", "wb"),  # noqa: SIM115 - the child keeps it
        stderr=open(root / "stderr.txt", "wb"),  # noqa: SIM115
        cwd=root / "work",
        env={**os.environ, "TAG": "t1"},
        start_new_session=True,
    )
    child.close()
    conn = Connection(os.dup(parent.fileno()))
    parent.close()
    setup = Setup(
        logging_level="INFO",
        working_dir=str(root / "work"),
        script_dir=str(root / "code"),
        entry_script=str(root / "code" / "score.py"),
        arguments=("--x",),
        datasets=datasets or (FileDataset.from_files(str(root / "in")),),
        output_action=output_action,
        append_row_format="text",
        storage_options={},
        output_dir=str(root / "staging" / "files" / "init-node-process001"),
    )
    conn.send(setup)
    started = Child(conn, proc, root)
    assert started.answer() == Started()  # first, before the script is imported
    return started


@pytest.fixture
def child(tmp_path: Path) -> Iterator[Child]:
    (tmp_path / "in").mkdir()
    for name in ("a.txt", "b.txt", "boom.txt", "bad.txt"):
        (tmp_path / "in" / name).write_text(name)
    started = _start(tmp_path, SCRIPT)
    try:
        yield started
    finally:
        if started.proc.poll() is None:
            started.proc.kill()
        started.proc.wait()
        started.conn.close()


def _run(child: Child, index: int, *names: str, attempt: int = 1) -> Run:
    files = tuple(FileRef(str(child.root / "in" / name)) for name in names)
    staging = child.root / "staging"
    return Run(
        MiniBatch(index, "file", 0, len(files), files=files),
        attempt,
        str(staging / f"mb{index:08d}-a{attempt}.txt"),
        str(staging / "files" / f"mb{index:08d}-a{attempt}"),
    )


def test_ready_then_done_with_the_part_written(child: Child) -> None:
    ready = child.answer()
    assert isinstance(ready, Ready) and ready.init_seconds >= 0
    loaded = child.ask(_run(child, 0, "a.txt", "b.txt"))
    assert loaded == Loaded(0, 1, 2, loaded.load_seconds)
    done = child.answer()
    assert isinstance(done, Done) and (done.index, done.attempt, done.total, done.succeeded) == (0, 1, 2, 2)
    assert done.part_url is not None and Path(done.part_url).read_text() == "a.txt t1\nb.txt t1\n"
    assert done.files == () and done.uncacheable == ""
    assert child.ask(Shutdown()) == Bye()
    assert child.proc.wait(30) == 0
    assert "shutdown ran" in (child.root / "stdout.txt").read_text()


def test_a_raising_run_and_an_invalid_result_fail_only_their_attempt(child: Child) -> None:
    assert isinstance(child.answer(), Ready)
    assert isinstance(child.ask(_run(child, 1, "boom.txt")), Loaded)
    failed = child.answer()
    assert isinstance(failed, Failed)
    assert (failed.status, failed.stage) == (AttemptStatus.RUN_EXCEPTION, AttemptStage.RUN)
    assert failed.message == "KeyError: 'boom'" and "raise KeyError" in failed.traceback
    assert isinstance(child.ask(_run(child, 2, "bad.txt")), Loaded)
    invalid = child.answer()
    assert isinstance(invalid, Failed) and invalid.status is AttemptStatus.RUN_INVALID_RESULT
    assert "It returned int" in invalid.message
    assert isinstance(child.ask(_run(child, 3, "a.txt", attempt=2)), Loaded)  # the process goes on
    assert isinstance(child.answer(), Done)


def test_an_unreadable_mini_batch_fails_while_loading(child: Child) -> None:
    assert isinstance(child.answer(), Ready)
    failed = child.ask(_run(child, 4, "gone.txt"))
    assert isinstance(failed, Failed)
    assert (failed.status, failed.stage) == (AttemptStatus.LOAD_EXCEPTION, AttemptStage.LOAD)
    assert "gone.txt" in failed.message


def test_summary_only_writes_no_part(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("a")
    child = _start(tmp_path, SCRIPT, output_action="summary_only")
    try:
        assert isinstance(child.answer(), Ready)
        assert isinstance(child.ask(_run(child, 0, "a.txt")), Loaded)
        done = child.answer()
        assert isinstance(done, Done) and done.succeeded == 1 and done.part_url is None
        assert not (tmp_path / "staging" / "mb00000000-a1.txt").exists()
    finally:
        child.proc.kill()
        child.proc.wait()


@pytest.mark.parametrize(
    ("init", "message"),
    [("raise ValueError('no model')", "ValueError: no model"), ("import sys; sys.exit(7)", "SystemExit: 7")],
)
def test_an_init_failure_is_reported_and_ends_the_process(tmp_path: Path, init: str, message: str) -> None:
    (tmp_path / "in").mkdir()
    child = _start(tmp_path, f"def init():\n    {init}\ndef run(mini_batch):\n    return mini_batch\n")
    try:
        failed = child.answer()
        assert isinstance(failed, Failed)
        assert (failed.status, failed.stage, failed.message) == (
            AttemptStatus.INIT_EXCEPTION,
            AttemptStage.INIT,
            message,
        )
        assert child.proc.wait(30) == 3
    finally:
        if child.proc.poll() is None:
            child.proc.kill()


FREED_AFTER_THE_ANSWER = """
import os, time, weakref

def _wait_for(name):
    # the test creates the file once it has this mini-batch's answer: freeing before the answer waits here
    deadline = time.monotonic() + 120
    while not os.path.exists(name) and time.monotonic() < deadline:
        time.sleep(0.01)

def _freed(what, index, wait):
    if wait:
        _wait_for(f"../answered-{index}")
    with open(f"../freed-{what}-{index}", "w"):
        pass

class Result(list):
    def __del__(self):
        _freed("result", self.index, wait=True)

def run(mini_batch):
    index = int(mini_batch["id"].iloc[0]) // 10
    weakref.finalize(mini_batch, _freed, "data", index, False)
    result = Result(mini_batch["id"].tolist())
    result.index = index
    return result
"""


def test_a_mini_batchs_result_and_data_are_freed_after_its_answer(tmp_path: Path) -> None:
    """run()'s result and the mini-batch's data (a large table: millions of Python objects) are freed
    once the answer is sent, not before it (the driver would wait for the freeing) and not when the next
    mini-batch has been read (two mini-batches' data alive at once). A result whose freeing waits for
    the test to have the answer deadlocks until the test gives up when it is freed first; the data's
    finalizer must have run before the next mini-batch is sent."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from airflow_parallel_run.core import TabularDataset
    from airflow_parallel_run.core.plan.planner import plan_inputs

    (tmp_path / "tables").mkdir()
    pq.write_table(pa.table({"id": list(range(30))}), tmp_path / "tables" / "t.parquet", row_group_size=10)
    dataset = TabularDataset.from_parquet_files(str(tmp_path / "tables"))
    batches = plan_inputs([dataset], mini_batch_size=10).mini_batches
    assert [mb.items for mb in batches] == [10, 10, 10]
    child = _start(tmp_path, FREED_AFTER_THE_ANSWER, output_action="summary_only", datasets=(dataset,))
    try:
        assert isinstance(child.answer(), Ready)
        for mb in batches:
            staging = tmp_path / "staging"
            run = Run(mb, 1, str(staging / f"mb{mb.index:08d}-a1.txt"), str(staging / f"mb{mb.index:08d}-a1"))
            assert isinstance(child.ask(run), Loaded)
            done = child.answer(timeout=30)  # the result's freeing waits for this answer
            assert isinstance(done, Done) and done.succeeded == 10, done
            (tmp_path / f"answered-{mb.index}").touch()
            for what in ("result", "data"):  # both freed without another message
                freed = tmp_path / f"freed-{what}-{mb.index}"
                deadline = time.monotonic() + 30
                while not freed.exists() and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert freed.exists(), f"mini-batch {mb.index}'s {what} is still alive after its answer"
        assert child.ask(Shutdown()) == Bye()
    finally:
        if child.proc.poll() is None:
            child.proc.kill()
        child.proc.wait()
        child.conn.close()


# What an interpreter's exit does that a script can rely on, each leaving a trace in the folder EXITS: a
# non-daemon thread still sleeping when shutdown() returns, an idle thread pool (it must not hang the exit),
# an atexit hook, and files opened for writing and never closed, text and binary, whose last writes are
# still in their buffers (a few bytes: far below a buffer's size).
EXIT_SCRIPT = """
import atexit, concurrent.futures, os, threading, time
EXITS = os.environ["EXITS"]

def _late():
    time.sleep(0.5)
    with open(os.path.join(EXITS, f"thread-{os.getpid()}"), "w") as f:
        f.write("joined")

def init():
    global text, binary, pool
    text = open(os.path.join(EXITS, f"text-{os.getpid()}"), "w")
    binary = open(os.path.join(EXITS, f"binary-{os.getpid()}"), "wb")
    pool = concurrent.futures.ThreadPoolExecutor(2)
    pool.submit(time.sleep, 0).result()
    atexit.register(lambda: open(os.path.join(EXITS, f"atexit-{os.getpid()}"), "w").write("ran"))

def run(mini_batch):
    text.write("".join(f"{p}\\n" for p in mini_batch))
    binary.write(b"x" * len(mini_batch))
    return [str(p) for p in mini_batch]

def shutdown():
    text.write("shutdown\\n")
    threading.Thread(target=_late).start()
"""


def check_exit_traces(exits: Path, pid: int, items: int) -> None:
    """What EXIT_SCRIPT's process `pid` left, having run `items` items and exited."""
    assert (exits / f"thread-{pid}").read_text() == "joined"
    assert (exits / f"atexit-{pid}").read_text() == "ran"
    lines = (exits / f"text-{pid}").read_text().splitlines()
    assert len(lines) == items + 1 and lines[-1] == "shutdown", lines
    assert (exits / f"binary-{pid}").read_bytes() == b"x" * items


def test_the_exit_keeps_what_an_interpreter_exit_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process ends without tearing its modules down (core/worker/child.py, `_end_process`), but its
    non-daemon threads are joined, its atexit hooks run and the files it left open are written."""
    (tmp_path / "in").mkdir()
    for name in ("a.txt", "b.txt"):
        (tmp_path / "in" / name).write_text(name)
    exits = tmp_path / "exits"
    exits.mkdir()
    monkeypatch.setenv("EXITS", str(exits))
    child = _start(tmp_path, EXIT_SCRIPT)
    try:
        assert isinstance(child.answer(), Ready)
        assert isinstance(child.ask(_run(child, 0, "a.txt", "b.txt")), Loaded)
        assert isinstance(child.answer(), Done)
        assert child.ask(Shutdown()) == Bye()
        assert child.proc.wait(30) == 0
        check_exit_traces(exits, child.proc.pid, 2)
    finally:
        if child.proc.poll() is None:
            child.proc.kill()
