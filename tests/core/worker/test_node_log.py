"""The node log's lines (two per attempt) go through one file descriptor kept open while the entry-script
process lives: every line whole and in the file at once, from any thread, and still written after the
process was killed."""

from __future__ import annotations

import threading
from pathlib import Path

from airflow_parallel_run.core.worker.process import EntryProcess


def _process(path: Path) -> EntryProcess:
    process = object.__new__(EntryProcess)  # only what node_log uses: no spec, no host, no child
    process.node, process.name = "node0", "process000"
    process.paths = {"node": str(path)}
    process._killed = False
    process._node_fd = None
    process._node_fd_lock = threading.Lock()
    return process


def test_lines_from_many_threads_are_whole_and_in_the_file_at_once(tmp_path: Path) -> None:
    path = tmp_path / "process000.txt"
    process = _process(path)
    process.node_log("first")
    fields = path.read_text().split("|")  # in the file before the descriptor is closed
    assert fields[1:3] == ["node0", "process000"] and fields[-1] == "first\n"

    def write(thread: int) -> None:
        for i in range(200):
            process.node_log(f"thread {thread} line {i} " + "x" * 300)

    threads = [threading.Thread(target=write, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = path.read_text().splitlines()
    assert len(lines) == 1 + 4 * 200
    assert all(line.endswith("first") or line.endswith("x" * 300) for line in lines)
    assert {line.split("|")[4].rsplit(" ", 1)[0] for line in lines[1:]} == {
        f"thread {t} line {i}" for t in range(4) for i in range(200)
    }


def test_after_the_kill_the_file_is_closed_and_lines_still_written(tmp_path: Path) -> None:
    path = tmp_path / "process000.txt"
    process = _process(path)
    process.node_log("picked")
    fd = process._node_fd
    assert fd is not None
    process._killed = True
    process._close_node_log()
    assert process._node_fd is None
    process.node_log("stopped")  # as finish_shutdown logs after kill()
    assert process._node_fd is None  # not opened again for a dead process
    assert [line.rsplit("|", 1)[1] for line in path.read_text().splitlines()] == ["picked", "stopped"]
