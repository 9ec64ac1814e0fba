"""Entry-script processes forked from a fork server (core/worker/fork_server.py) behave as freshly started
ones: their own command line, environment, folder, session and files; different random numbers; their exit
status, with the PID kept until it is seen; a server per environment at import; the script's atexit hooks;
and a server killed under a job ends its processes, whose mini-batches run again."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psutil
import pytest

from airflow_parallel_run.core import FileDataset, ParallelRunConfig, TabularDataset, run_job
from airflow_parallel_run.core.worker import fork_server
from airflow_parallel_run.core.worker.fork_server import CHILD_MODULE, ForkServer
from airflow_parallel_run.core.worker.messages import Started
from tests.core.worker.test_entry_process import EXIT_SCRIPT, check_exit_traces

FORKED = re.compile(r"\|started pid (\d+); running init\(\) \(forked from fork server (\d+)\)")


def _started_lines(out: Path) -> list[str]:
    return [
        line
        for path in sorted((out / "logs" / "sys" / "node").rglob("*.txt"))
        for line in path.read_text().splitlines()
        if "|started pid " in line
    ]


def _servers(out: Path) -> set[int]:
    return {int(m.group(2)) for line in _started_lines(out) if (m := FORKED.search(line))}


def _assert_started_fresh(out: Path) -> None:
    lines = _started_lines(out)
    assert lines and not any("forked from" in line for line in lines), lines


def _file_job(script: str, folder: Path, out: Path, *, processes: int = 2, **options: Any) -> dict[str, Any]:
    """A job of one file per mini-batch; `options` of `ParallelRunConfig` or of `run_job` (the embedded cluster
    unless `client`)."""
    config = {key: options.pop(key) for key in ("environment_variables", "run_max_try") if key in options}
    return run_job(
        ParallelRunConfig(entry_script=script, mini_batch_size=1, process_count_per_node=processes, **config),
        [FileDataset.from_files(str(folder))],
        str(out),
        **options,
    )


def _first_words(out: Path) -> list[str]:
    """The output file's lines by their first word (the input file's name), sorted."""
    return sorted(row.split()[0] for row in (out / "parallel_run_step.txt").read_text().splitlines())


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ForkServer]:
    started = ForkServer({**os.environ, "PROBE": "server"}, str(tmp_path / "server.stderr.txt"))
    started.start()
    assert not started.dead, started.error
    yield started
    started.close()


def _fork(
    server: ForkServer, root: Path, env: dict[str, str]
) -> tuple[fork_server.ForkedProcess, Connection]:
    work = root / "work"
    work.mkdir(parents=True, exist_ok=True)
    parent, child = socket.socketpair()
    with open(root / "out.txt", "ab") as out, open(root / "err.txt", "ab") as err:
        process = server.spawn(env, str(work), out.fileno(), err.fileno(), child.fileno())
    child.close()
    assert process is not None
    conn = Connection(os.dup(parent.fileno()))
    parent.close()
    assert conn.poll(60), "the forked process did not say Started"
    assert isinstance(conn.recv(), Started)
    return process, conn


def test_a_forked_process_shows_its_own_command_line_environment_folder_and_files(
    server: ForkServer, tmp_path: Path
) -> None:
    env = {"PATH": os.environ.get("PATH", ""), "AZUREML_BI_OUTPUT_PATH": str(tmp_path / "out"), "Ü": "ö ü\tß"}
    process, conn = _fork(server, tmp_path, env)
    try:
        proc = psutil.Process(process.pid)
        assert proc.ppid() == server.pid
        assert proc.environ() == env  # what a fresh start with env= shows; none of the server's
        argv = proc.cmdline()
        assert argv[:3] == [sys.executable, "-m", CHILD_MODULE] and not any(argv[4:]), argv
        int(argv[3])  # the number its control socket had (the process keeps a duplicate of it)
        assert proc.cwd() == str(tmp_path / "work")
        assert os.getpgid(process.pid) == process.pid and os.getsid(process.pid) == process.pid
        fds = {
            int(name): os.readlink(f"/proc/{process.pid}/fd/{name}")
            for name in os.listdir(f"/proc/{process.pid}/fd")
        }
        others = [target for fd, target in fds.items() if fd > 2]
        assert len(others) == 1 and others[0].startswith("socket:"), fds  # nothing of the server's is open
        assert os.readlink(f"/proc/{process.pid}/fd/0") == os.devnull
        assert os.readlink(f"/proc/{process.pid}/fd/1") == str(tmp_path / "out.txt")
        assert os.readlink(f"/proc/{process.pid}/fd/2") == str(tmp_path / "err.txt")
    finally:
        process.kill()
        assert process.wait(30) == -signal.SIGKILL
        conn.close()


def test_an_exit_is_reported_and_the_pid_kept_until_it_is_seen(server: ForkServer, tmp_path: Path) -> None:
    """As with `subprocess.Popen`: the process stays a zombie (its PID, which is also the process group the
    runner kills, cannot be reused) until poll() or wait() has seen its status."""
    process, conn = _fork(server, tmp_path, dict(os.environ))
    os.kill(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while not process._ended.is_set() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert process._ended.is_set(), "the server did not report the exit"
    assert psutil.Process(process.pid).status() == psutil.STATUS_ZOMBIE
    assert process.poll() == -signal.SIGTERM
    deadline = time.monotonic() + 30
    while psutil.pid_exists(process.pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not psutil.pid_exists(process.pid), "not reaped once seen"
    conn.close()


def test_a_request_that_does_not_fit_is_refused_for_a_fresh_start(server: ForkServer, tmp_path: Path) -> None:
    huge = {"BIG": "x" * (fork_server.ENV_ROOM + server.env_room)}
    assert server.spawn(huge, str(tmp_path), 1, 2, 0) is None


RANDOM_SCRIPT = """
import gc, os, random, sys
import numpy as np
def init():
    # the server's objects are frozen out of this process's collections: they stay shared, unwalked
    assert gc.get_freeze_count() > 50_000, gc.get_freeze_count()
    global draws
    draws = [int(np.random.randint(0, 2**62)), random.getrandbits(62)]
    # on sys.path as `python -m` in its working folder puts it, not the server's folder
    assert os.getcwd() in sys.path and not [p for p in sys.path if p.endswith("fork-servers")], sys.path
def run(mini_batch):
    return [f"{os.getpid()} {draws[0]} {draws[1]}" for _ in mini_batch]
"""


def test_forked_processes_draw_different_random_numbers(
    write_script: Callable[..., str], tmp_path: Path
) -> None:
    """numpy's global state was drawn once, in the server, at its import (a job of tables: its server
    preloads numpy, pandas and pyarrow): each forked process reseeds it. The embedded cluster: both processes
    forked from one server (its workers share this process)."""
    tables = tmp_path / "tables"
    tables.mkdir()
    for i in range(8):
        (tables / f"t{i}.csv").write_text(f"a\n{i}\n")
    out = tmp_path / "out"
    summary = run_job(
        ParallelRunConfig(
            entry_script=write_script(RANDOM_SCRIPT),
            mini_batch_size="1KB",
            process_count_per_node=2,
            run_invocation_timeout=60,
        ),
        [TabularDataset.from_delimited_files(str(tables))],
        str(out),
    )
    assert summary["status"] == "succeeded", summary
    servers = _servers(out)
    assert len(servers) == 1, f"not forked from one server: {_started_lines(out)}"
    (server,) = servers
    assert psutil.Process(server).cmdline()[-1] == fork_server.preload_argument(fork_server.TABULAR_PRELOAD)
    per_process = {tuple(line.split()) for line in (out / "parallel_run_step.txt").read_text().splitlines()}
    pids = {pid for pid, _, _ in per_process}
    assert len(pids) >= 2, per_process
    assert len(per_process) == len(pids), "a process drew twice?"
    assert len({numpy_draw for _, numpy_draw, _ in per_process}) == len(pids), per_process
    assert len({python_draw for _, _, python_draw in per_process}) == len(pids), per_process


PROBE_SCRIPT = """
import atexit, os
def init():
    marker = os.path.join(os.environ["MARKERS"], f"{os.getpid()}.atexit")
    atexit.register(lambda: open(marker, "w").write(os.environ["PROBE"]))
def run(mini_batch):
    return [os.environ["PROBE"] for _ in mini_batch]
"""


def test_each_environment_gets_a_server_imported_under_it_and_atexit_hooks_run(
    write_script: Callable[..., str],
    files: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The embedded cluster, whose workers run in this process: their environment is this process's."""
    script, folder, markers = write_script(PROBE_SCRIPT), files(4), tmp_path / "markers"
    markers.mkdir()
    monkeypatch.setenv("MARKERS", str(markers))
    seen: dict[str, set[int]] = {}
    for run, probe in enumerate(("a", "b", "a")):
        monkeypatch.setenv("PROBE", probe)
        for old in markers.iterdir():
            old.unlink()
        out = tmp_path / f"out{run}"
        summary = _file_job(script, folder, out, allow_reuse=False)  # the third is the first's again: run
        assert summary["status"] == "succeeded", summary
        assert set((out / "parallel_run_step.txt").read_text().split()) == {probe}
        servers = _servers(out)
        assert len(servers) == 1, f"not forked from one server: {_started_lines(out)}"
        for pid in servers:  # the server imported under the job's environment (what /proc shows of it)
            assert psutil.Process(pid).environ()["PROBE"] == probe
            # a job of files with text output: the engine only, so its first process is not kept waiting
            assert psutil.Process(pid).cmdline()[-1] == fork_server.preload_argument(
                fork_server.ENGINE_PRELOAD
            )
            assert CHILD_MODULE not in psutil.Process(pid).cmdline()  # not taken for an entry process
        seen.setdefault(probe, set()).update(servers)
        # the script's atexit hooks ran when its processes ended, as at a fresh interpreter's exit
        written = [p.read_text() for p in markers.iterdir()]
        assert written == [probe, probe], written
    assert not seen["a"] & seen["b"], seen  # another environment, another server
    assert len(seen["a"]) == 1, seen  # the third job forked from the first one's server


def _forked_job_with_exits(
    script: str, inputs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Runs `script` (it writes into $EXITS) over `inputs` in forked processes; returns that folder."""
    exits = tmp_path / "exits"
    exits.mkdir()
    monkeypatch.setenv("EXITS", str(exits))
    out = tmp_path / "out"
    summary = _file_job(script, inputs, out, allow_reuse=False)
    assert summary["status"] == "succeeded", summary
    assert _servers(out), f"not forked: {_started_lines(out)}"
    return exits


def test_a_forked_process_exits_as_an_interpreter_exits(
    write_script: Callable[..., str],
    files: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A forked process ends without tearing its modules down (the job's end does not wait for it), but
    its threads, atexit hooks and open files end as at an interpreter's exit. The files are made after
    the fork server's `gc.freeze()`, so they are the objects `_flush_open_files` walks."""
    exits = _forked_job_with_exits(write_script(EXIT_SCRIPT), files(6), tmp_path, monkeypatch)
    items = {
        int(path.name.split("-")[1]): len(path.read_text().splitlines()) - 1 for path in exits.glob("text-*")
    }
    assert sum(items.values()) == 6 and len(items) == 2, items
    for pid, count in items.items():
        check_exit_traces(exits, pid, count)


FROZEN_FILE_SCRIPT = """
import gc, os
def init():
    global out
    out = open(os.path.join(os.environ["EXITS"], f"frozen-{os.getpid()}"), "w")
    gc.freeze()  # the script's own freeze: its open file leaves the collector's view
def run(mini_batch):
    out.write("".join(f"{p}\\n" for p in mini_batch))
    return [str(p) for p in mini_batch]
"""


def test_a_file_the_script_froze_out_of_the_collector_is_still_flushed_at_the_exit(
    write_script: Callable[..., str],
    files: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The exit looks for open files among the objects made since the fork server's `gc.freeze()`; a script
    that calls `gc.freeze()` itself hides its own from that view, so the exit looks at everything then."""
    exits = _forked_job_with_exits(write_script(FROZEN_FILE_SCRIPT), files(6), tmp_path, monkeypatch)
    written = sorted(line for path in exits.glob("frozen-*") for line in path.read_text().splitlines())
    assert len(written) == 6, written


def test_a_job_with_environment_variables_starts_its_processes_fresh(
    dask_client, write_script: Callable[..., str], files: Callable[..., Path], tmp_path: Path
) -> None:
    """Its variables (credentials, often) stay in processes that end with the job, and hold before any
    import: no fork server holds them."""
    markers = tmp_path / "markers"
    markers.mkdir()
    out = tmp_path / "out"
    summary = _file_job(
        write_script(PROBE_SCRIPT),
        files(4),
        out,
        environment_variables={"PROBE": "secret-value", "MARKERS": str(markers)},
        client=dask_client,
    )
    assert summary["status"] == "succeeded", summary
    _assert_started_fresh(out)
    for proc in psutil.process_iter():  # no process outlives the job with its variables
        with contextlib.suppress(psutil.Error):
            assert "secret-value" not in proc.environ().values(), proc.cmdline()


SLOW_SCRIPT = """
import os, time
def run(mini_batch):
    time.sleep(0.4)
    return [f"{os.path.basename(p)} {os.getpid()}" for p in mini_batch]
"""


def test_a_fork_server_killed_under_a_job_ends_its_processes_and_their_mini_batches_run_again(
    write_script: Callable[..., str],
    files: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The embedded cluster (its workers in this process): the server is this process's child. Killed
    while its two processes run, they end with it (they watch their parent); the attempts they ran fail as
    PROCESS_DIED and run again in processes started anew, and every mini-batch is in the output once."""
    monkeypatch.setenv("FORK_TEST_RUN", str(tmp_path))  # an environment of this test's own: a new server
    out = tmp_path / "out"
    killed: list[int] = []

    def kill_server(driver: object) -> None:
        def watch() -> None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                servers = _servers(out) if (out / "logs").exists() else set()
                if servers:
                    time.sleep(0.6)  # a mini-batch under way in each process
                    for pid in servers:
                        os.kill(pid, signal.SIGKILL)
                        killed.append(pid)
                    return
                time.sleep(0.05)

        threading.Thread(target=watch, daemon=True).start()

    summary = _file_job(write_script(SLOW_SCRIPT), files(12), out, run_max_try=3, on_driver=kill_server)
    assert killed, "the fork server was never seen"
    assert summary["status"] == "succeeded", summary
    assert _first_words(out) == [f"f{i:03d}.txt" for i in range(12)]
    attempts = (out / "logs" / "sys" / "job_report" / "processed_mini-batches.csv").read_text()
    assert "PROCESS_DIED" in attempts, "no attempt died with the server"
    lines = _started_lines(out)
    assert len(lines) > 2, lines  # processes started again after the server was killed
    summary_json = json.dumps(summary)
    assert "Traceback" not in summary_json


def test_with_fork_servers_off_processes_start_fresh(
    write_script: Callable[..., str],
    files: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(fork_server.SWITCH_ENV, "0")
    out = tmp_path / "out"
    summary = _file_job(write_script(SLOW_SCRIPT), files(2), out)
    assert summary["status"] == "succeeded", summary
    _assert_started_fresh(out)


def test_a_stuck_fork_server_fails_one_start_which_runs_again_in_a_process_of_its_own(
    write_script: Callable[..., str],
    files: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server that does not answer (stopped here with SIGSTOP) holds no start for long: the request's wait
    is bounded, the server is ended (a process it may have forked holds the control socket, so no other
    process is started on that socket) and the attempt fails at its start, then runs again; the job
    succeeds."""
    monkeypatch.setenv("FORK_TEST_RUN", str(tmp_path))  # an environment of this test's own: a new server
    monkeypatch.setattr(fork_server, "FORK_ANSWER_S", 2.0)
    script, folder = write_script(SLOW_SCRIPT), files(4)
    first = _file_job(script, folder, tmp_path / "first", processes=1)
    assert first["status"] == "succeeded", first
    (server,) = _servers(tmp_path / "first")
    os.kill(server, signal.SIGSTOP)
    try:
        began = time.monotonic()
        out = tmp_path / "out"
        summary = _file_job(script, folder, out, processes=1, allow_reuse=False)
        assert summary["status"] == "succeeded", summary
        assert time.monotonic() - began < 60
        assert _first_words(out) == [f"f{i:03d}.txt" for i in range(4)]
        assert not psutil.pid_exists(server) or psutil.Process(server).status() == psutil.STATUS_ZOMBIE
        errors = (out / "logs" / "user" / "error.txt").read_text()
        assert f"the fork server (pid {server}) did not answer within 2 s" in errors, errors
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(server, signal.SIGCONT)


def test_a_request_without_its_three_files_is_refused_and_nothing_forked(
    server: ForkServer, tmp_path: Path
) -> None:
    before = {p.pid for p in psutil.Process(server.pid).children()}
    with open(tmp_path / "out.txt", "ab") as out:
        socket.send_fds(
            server.sock, [pickle.dumps(("fork", -1, dict(os.environ), str(tmp_path)))], [out.fileno()]
        )
    deadline = time.monotonic() + 30
    while -1 not in server._answers and time.monotonic() < deadline:
        time.sleep(0.02)
    answer = server._answers.pop(-1)
    assert answer[0] == "failed" and "1 of its 3 files" in answer[2], answer
    assert {p.pid for p in psutil.Process(server.pid).children()} == before
    process, conn = _fork(server, tmp_path, dict(os.environ))  # and it still serves
    process.kill()
    assert process.wait(30) == -signal.SIGKILL
    conn.close()
