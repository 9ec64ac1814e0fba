"""The output folder is the engine's or refused, and one running job holds it at a time, on any host.

- `append_row_file_name` may not name the engine's own entries (`logs`, `.staging`, the lock, anything
  starting with `.airflow-parallel-run`): refused before anything in the folder changes.
- An output folder that is, contains or lies inside an input, the reuse cache or a protected folder
  (AIRFLOW_HOME, the DAGs folder) is refused before anything is created.
- A folder whose `logs/` (or `.staging/`, or output file) no job of the engine wrote is refused and left
  as it was; a folder an earlier job wrote is reused, its logs replaced.
- The lock: a heartbeat, stale after `STALE_AFTER_S` on any host (a SIGKILLed task on another pod), at once
  for a dead process on this host; a fresh one is `OutputBusyError` (retriable).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import fsspec
import pytest
from faults_support import CLI, run_cli

from airflow_parallel_run.core import (
    ConfigError,
    FileDataset,
    OutputBusyError,
    ParallelRunConfig,
    run_job,
)
from airflow_parallel_run.core.output import folder as output_folder
from airflow_parallel_run.core.output.folder import LOCK_NAME, STALE_AFTER_S, OutputLock, StoreLock

ECHO = "import os\ndef run(mini_batch):\n    return [os.path.basename(p) for p in mini_batch]\n"


def tree(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder` with its content (None for folders)."""
    return {
        str(p.relative_to(folder)): (None if p.is_dir() else p.read_bytes())
        for p in sorted(folder.rglob("*"))
    }


def job(write_script, root: Path, out: Path | str, client: Any = None, **config: Any) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    return run_job(
        ParallelRunConfig(entry_script=write_script(ECHO), **config),
        [FileDataset.from_files(str(root))],
        str(out),
        client=client,
    )


# -- reserved names ----------------------------------------------------------------------------------------
RESERVED = [
    "logs",
    ".staging",
    ".airflow-parallel-run.lock",
    ".airflow-parallel-run",
    ".airflow-parallel-run-x",
    "Logs",
]


@pytest.mark.parametrize("name", RESERVED)
def test_reserved_output_file_names_are_refused_before_anything_changes(  # type: ignore[no-untyped-def]
    dask_client, write_script, files, tmp_path, name: str
) -> None:
    root, out = files(2), tmp_path / "out"
    assert job(write_script, root, out, dask_client)["status"] == "succeeded"  # an earlier job's folder
    before = tree(out)
    with pytest.raises(ConfigError) as info:
        job(write_script, root, out, dask_client, append_row_file_name=name)
    assert info.value.field == "append_row_file_name", info.value
    assert str(info.value) == (
        f"append_row_file_name={name!r} is not allowed: a name other than logs, .staging or one starting with "
        ".airflow-parallel-run (the engine keeps its logs, staging area and lock there)"
    )
    assert tree(out) == before


def test_cli_refuses_a_reserved_output_file_name_with_exit_2(write_script, files, tmp_path) -> None:  # type: ignore[no-untyped-def]
    root, out = files(2), tmp_path / "out"
    argv = [*CLI, "run", "--input", str(root), "--output", str(out), "--entry-script", write_script(ECHO)]
    done = run_cli([*argv, "--append-row-file-name", "logs"], timeout=120)
    assert done.returncode == 2, done
    assert "append_row_file_name='logs' is not allowed" in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()


# -- separate from inputs, the cache and protected folders -------------------------------------------------
@pytest.mark.parametrize(
    ("input_of", "output_of", "words"),
    [
        (lambda t: t / "data", lambda t: t / "data", "the input"),
        (lambda t: t / "data", lambda t: t / "data" / "out", "the input"),
        (lambda t: t / "data", lambda t: t, "the input"),
        (lambda t: str(t / "data" / "*.txt"), lambda t: t / "data" / "out", "the input"),
        (lambda t: t / "data", lambda t: t / "reuse-cache" / "out", "the reuse cache"),
    ],
    ids=["output-is-input", "output-inside-input", "input-inside-output", "output-under-a-glob", "in-cache"],
)
def test_output_overlapping_an_input_or_the_cache_is_refused_up_front(  # type: ignore[no-untyped-def]
    dask_client, tmp_path, input_of, output_of, words
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        (data / f"f{i}.txt").write_text(f"{i}\n")
    script = tmp_path / "script" / "echo.py"
    script.parent.mkdir()
    script.write_text(ECHO)
    before = tree(tmp_path)
    with pytest.raises(
        ConfigError,
        match=f"output_path=.* is not allowed: a folder that neither is, contains nor lies inside {words}",
    ):
        run_job(
            ParallelRunConfig(entry_script=str(script)),
            [FileDataset.from_files(str(input_of(tmp_path)))],
            str(output_of(tmp_path)),
            client=dask_client,
        )
    assert tree(tmp_path) == before, "a refused job changed something"


def test_run_twice_into_a_folder_inside_the_input_is_refused(
    dask_client, write_script, files, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """The attack: output under the input folder; without the check the second run read the first one's logs."""
    root = files(3)
    with pytest.raises(ConfigError, match="lies inside the input"):
        job(write_script, root, root / "out", dask_client)
    assert sorted(p.name for p in root.iterdir()) == ["f000.txt", "f001.txt", "f002.txt"]


@pytest.mark.parametrize("relation", ["inside", "contains", "same"])
def test_protected_folders_are_refused(dask_client, write_script, files, tmp_path, relation: str) -> None:  # type: ignore[no-untyped-def]
    home = tmp_path / "srv" / "airflow-home"
    (home / "logs").mkdir(parents=True)
    output = {"inside": home / "out", "contains": home.parent, "same": home}[relation]
    with pytest.raises(ConfigError, match=f"lies inside {home}, which is protected"):
        run_job(
            ParallelRunConfig(entry_script=write_script(ECHO)),
            [FileDataset.from_files(str(files(2, folder="elsewhere/in")))],
            str(output),
            client=dask_client,
            protected_paths=[str(home)],
        )
    assert sorted(p.name for p in home.iterdir()) == ["logs"]


# -- a folder that is someone else's -----------------------------------------------------------------------
def _foreign_home(tmp_path: Path) -> Path:
    """Like AIRFLOW_HOME: a logs/ folder full of another program's logs, and other files."""
    home = tmp_path / "home"
    for i in range(5):
        task_log = home / "logs" / "dag_id=d" / f"run_id=r{i}" / "task_id=t" / "attempt=1.log"
        task_log.parent.mkdir(parents=True)
        task_log.write_text(f"task log {i}\n")
    (home / "airflow.cfg").write_text("[core]\n")
    return home


def test_a_folder_with_someone_elses_logs_is_refused_and_left_alone(  # type: ignore[no-untyped-def]
    dask_client, write_script, files, tmp_path
) -> None:
    root, home = files(2), _foreign_home(tmp_path)
    before = tree(home)
    with pytest.raises(ConfigError) as info:
        job(write_script, root, home, dask_client)
    assert str(info.value) == (
        f"output_path='{home}' is not allowed: a folder where airflow-parallel-run replaces only what it wrote: "
        f"{home}/logs is someone else's (it has no marker logs/.airflow-parallel-run) and would be replaced; use "
        "another output_path, or remove it yourself if it may go"
    )
    assert tree(home) == before


def test_dot_as_output_in_a_folder_with_foreign_logs_is_refused(write_script, files, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`output_path="."` in a worker whose current directory is AIRFLOW_HOME (the attack that deleted
    every task log), through the CLI: exit 2, the resolved folder named."""
    root, home = files(2), _foreign_home(tmp_path)
    script = write_script(ECHO)
    before = tree(home)
    done = run_cli([*CLI, "run", "--input", str(root), "--output", ".", "--entry-script", script], cwd=home)
    assert done.returncode == 2, done
    assert (
        f"output_path='{home}' is not allowed: a folder where airflow-parallel-run replaces only what it "
        f"wrote: {home}/logs is someone else's" in done.stderr
    ), done.stderr
    assert tree(home) == before


@pytest.mark.parametrize("entry", [".staging", "parallel_run_step.txt"])
def test_a_folder_with_a_foreign_staging_or_output_file_is_refused(  # type: ignore[no-untyped-def]
    dask_client, write_script, files, tmp_path, entry: str
) -> None:
    root, out = files(2), tmp_path / "out"
    target = out / entry
    if entry == ".staging":
        (target / "x").mkdir(parents=True)
    else:
        out.mkdir()
        target.write_text("someone's results\n")
    before = tree(out)
    with pytest.raises(ConfigError, match=f"{out}/{entry} is someone else's"):
        job(write_script, root, out, dask_client)
    assert tree(out) == before


def test_a_folder_an_earlier_job_wrote_is_reused_and_its_logs_replaced(  # type: ignore[no-untyped-def]
    dask_client, write_script, files, tmp_path
) -> None:
    root, out = files(3), tmp_path / "out"
    first = job(write_script, root, out, dask_client)
    assert first["status"] == "succeeded"
    marker = json.loads((out / "logs" / ".airflow-parallel-run").read_text())
    assert marker["tool"] == "airflow-parallel-run" and marker["outputs"] == ["parallel_run_step.txt"]
    (out / "logs" / "user" / "left-from-before.txt").write_text("old\n")
    (out / "mine.txt").write_text("a file of the user's, next to the output\n")
    second = job(write_script, root, out, dask_client, append_row_file_name="scores.txt")
    assert second["status"] == "succeeded", second
    assert not (out / "logs" / "user" / "left-from-before.txt").exists(), "logs/ was not replaced"
    assert (out / "mine.txt").read_text() == "a file of the user's, next to the output\n"
    marker = json.loads((out / "logs" / ".airflow-parallel-run").read_text())
    assert marker["outputs"] == ["parallel_run_step.txt", "scores.txt"] and marker["job_id"] != first.get(
        "job"
    )
    third = job(write_script, root, out, dask_client)  # the first output file is still ours to replace
    assert third["status"] == "succeeded", third


# -- locks on many hosts -----------------------------------------------------------------------------------
def _lock(folder: Path, **fields: Any) -> dict[str, Any]:
    now = time.time()
    data = {"host": "airflow-worker-pod-3", "pid": 7, "started": now - 600, "heartbeat": now, "token": "x"}
    data.update(fields)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_NAME).write_text(json.dumps(data))
    return data


def test_a_stale_lock_of_another_host_is_taken_over(dask_client, write_script, files, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A task SIGKILLed on another pod left its lock: its heartbeat stopped, so a retry takes over."""
    root, out = files(2), tmp_path / "out"
    _lock(out, heartbeat=time.time() - STALE_AFTER_S - 5)
    summary = job(write_script, root, out, dask_client)
    assert summary["status"] == "succeeded", summary
    assert not (out / LOCK_NAME).exists()


def test_a_fresh_lock_of_another_host_is_refused_retriably(
    dask_client, write_script, files, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    root, out = files(2), tmp_path / "out"
    held = _lock(out)
    with pytest.raises(OutputBusyError) as info:
        job(write_script, root, out, dask_client)
    assert isinstance(info.value, ConfigError)  # the CLI exits with 2
    assert "job pid 7 on airflow-worker-pod-3 has used it since" in str(info.value)
    assert json.loads((out / LOCK_NAME).read_text()) == held
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]


def test_a_dead_process_on_this_host_frees_its_lock_at_once(tmp_path: Path) -> None:
    _lock(tmp_path, host=socket.gethostname(), pid=999_999_999)  # fresh heartbeat, but the process is gone
    lock = OutputLock(str(tmp_path))
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_lock_of_another_pid_namespace_waits_for_its_heartbeat(tmp_path: Path) -> None:
    """Same host name, another container: its pid means nothing here, so only the heartbeat counts."""
    _lock(tmp_path, host=socket.gethostname(), pid=999_999_999, pid_namespace="pid:[1]")
    with pytest.raises(OutputBusyError):
        OutputLock(str(tmp_path))


def test_an_unreadable_lock_is_judged_by_its_age(tmp_path: Path) -> None:
    """A lock file that is not JSON (half written, or written by something else) blocks only while fresh."""
    (tmp_path / LOCK_NAME).write_text("{not json")
    with pytest.raises(OutputBusyError, match="last heartbeat 0 s ago"):
        OutputLock(str(tmp_path))
    old = time.time() - STALE_AFTER_S - 5
    os.utime(tmp_path / LOCK_NAME, (old, old))
    OutputLock(str(tmp_path)).release()
    assert not (tmp_path / LOCK_NAME).exists()


class _Interrupt(BaseException):
    """What a signal handler raises (the CLI's `Interrupted`, Python's KeyboardInterrupt), at a chosen line."""


def _interrupted_at(line_number: int, folder: Path) -> bool:
    """Takes the lock in `folder` with an interrupt raised at the `line_number`-th line the lock's own code
    runs (folder.py, the file the lock lives in): what a SIGINT/SIGTERM does to a job claiming its output
    folder. True when the interrupt came before the lock was taken (False: it never came)."""
    count = 0
    source = output_folder.__file__

    def trace(frame: Any, event: str, _arg: Any) -> Any:
        nonlocal count
        if frame.f_code.co_filename != source:
            return None
        if event == "line":
            count += 1
            if count == line_number:
                raise _Interrupt
        return trace

    sys.settrace(trace)
    try:
        lock = OutputLock(str(folder), "job1")
    except _Interrupt:
        return True
    finally:
        sys.settrace(None)
    lock.release()
    return False


def test_an_interrupt_at_any_line_of_taking_the_lock_leaves_no_half_written_lock(tmp_path: Path) -> None:
    """A signal while the lock is being taken (the CLI or an Airflow task interrupted as it claims its
    output folder, Ctrl-C in a notebook) leaves nothing behind: no empty or half-written lock file, which
    refused every job for STALE_AFTER_S with no owner to name, and no whole lock naming a process that
    lives on (a notebook's: its own next job was refused), nor a temp file; a retry takes the lock."""
    for line_number in range(1, 500):
        folder = tmp_path / f"at{line_number}"
        folder.mkdir()
        if not _interrupted_at(line_number, folder):
            break  # the lock was taken before the line came: every line of the way was tried
        left = sorted(p.name for p in folder.iterdir())
        contents = {name: (folder / name).read_bytes() for name in left}
        assert left == [], (line_number, contents)  # no lock, whole or half-written, and no mutex or temp
        OutputLock(str(folder), "job2").release()  # a retry in the same process (a notebook) takes it
    else:
        pytest.fail("taking the lock never finished within 500 lines")
    assert line_number > 5, "the trace never reached the lock's code"


def test_an_interrupt_at_any_line_of_a_job_claiming_its_folder_leaves_it_claimable(
    write_script, files, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """The same for a job's start from its claim of the output folder to the point where it runs (the lock,
    the checks that the folder is ours, its marker, its logs and spec: the end of `JobDriver`): interrupted
    at any line of the driver's or the output folder's code from the claim on, the folder keeps no lock and
    nothing that makes it look like someone else's: the next job, in the same process too, takes it."""
    from airflow_parallel_run.core import JobDriver
    from airflow_parallel_run.core.driver import loop as driver_loop

    root = files(2)
    config = ParallelRunConfig(entry_script=write_script(ECHO))
    watched = {output_folder.__file__, driver_loop.__file__}
    for line_number in range(1, 2000):
        out = tmp_path / f"out{line_number}"
        count, where, armed = 0, "", False

        def trace(frame: Any, event: str, _arg: Any, target: int = line_number) -> Any:
            nonlocal count, where, armed
            if frame.f_code.co_filename not in watched:
                return None
            armed = armed or frame.f_code.co_name == "claim"  # before it, nothing of the folder is ours
            if event == "line" and armed:
                count += 1
                if count == target:
                    where = f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno} {frame.f_code.co_name}"
                    raise _Interrupt
            return trace

        sys.settrace(trace)
        try:
            driver = JobDriver(
                config, [FileDataset.from_files(str(root))], str(out), cache_dir=str(tmp_path / "c")
            )
        except _Interrupt:
            driver = None
        finally:
            sys.settrace(None)
        if driver is not None:
            driver.release()
            break  # the driver was built before the line came: every line of the way was tried
        # what would refuse the next job: a lock (busy), or something in logs/ or .staging/ without the
        # engine's marker (someone else's)
        assert not (out / LOCK_NAME).exists(), where
        output_folder.check_ours(fsspec.filesystem("file"), str(out), str(out), None)
    else:
        pytest.fail("building the driver never finished within 2000 lines")
    assert line_number > 20, "the trace never reached the driver's code"


def test_an_on_driver_callback_that_raises_frees_the_output_folder(write_script, files, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`run_job(on_driver=...)` (the operator records the job there) raising: the folder is let go with the
    error, not left locked by a heartbeat for as long as the process lives (a notebook, a long-lived worker)."""
    root, out = files(2), tmp_path / "out"

    def refuse(_driver: Any) -> None:
        raise RuntimeError("the callback failed")

    config = ParallelRunConfig(entry_script=write_script(ECHO))
    with pytest.raises(RuntimeError, match="the callback failed"):
        run_job(config, [FileDataset.from_files(str(root))], str(out), on_driver=refuse)
    assert not (out / LOCK_NAME).exists()
    OutputLock(str(out)).release()  # taken at once in the same process


def test_the_heartbeat_is_refreshed_and_a_lost_lock_stops_its_job(  # type: ignore[no-untyped-def]
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(output_folder, "HEARTBEAT_S", 0.05)
    lost: list[str] = []
    lock = OutputLock(str(tmp_path), "job1", on_lost=lost.append)
    first = json.loads((tmp_path / LOCK_NAME).read_text())
    assert first["job_id"] == "job1" and first["host"] == socket.gethostname()
    deadline = time.monotonic() + 10
    while json.loads((tmp_path / LOCK_NAME).read_text())["heartbeat"] == first["heartbeat"]:
        assert time.monotonic() < deadline, "the heartbeat was never refreshed"
        time.sleep(0.02)
    taker = _lock(tmp_path, token="someone-else")  # as if another job had judged ours stale
    deadline = time.monotonic() + 10
    while not lost:
        assert time.monotonic() < deadline, "the lost lock was not noticed"
        time.sleep(0.02)
    assert "was taken over by job pid 7 on airflow-worker-pod-3" in lost[0]
    lock.release()
    assert json.loads((tmp_path / LOCK_NAME).read_text()) == taker, "release removed someone else's lock"


def test_many_takers_of_one_stale_lock_leave_one_owner(tmp_path: Path) -> None:
    """Twelve jobs see the same lock stale at once, twenty times over: each time exactly one gets the
    folder (a takeover that removed a lock renewed meanwhile would let two in)."""
    for round_ in range(20):
        folder = tmp_path / f"round{round_}"
        _lock(folder, heartbeat=time.time() - STALE_AFTER_S - 5)
        outcomes: list[Any] = []
        start = threading.Barrier(12)

        def take(
            folder: Path = folder, start: threading.Barrier = start, outcomes: list[Any] = outcomes
        ) -> None:
            start.wait()
            try:
                outcomes.append(OutputLock(str(folder)))
            except OutputBusyError as exc:
                outcomes.append(exc)

        threads = [threading.Thread(target=take) for _ in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        owners = [o for o in outcomes if isinstance(o, OutputLock)]
        assert len(outcomes) == 12 and len(owners) == 1, (round_, outcomes)
        assert json.loads((folder / LOCK_NAME).read_text())["token"] == owners[0].me["token"]
        owners[0].release()


def test_a_remote_folder_is_locked_on_the_store_with_the_same_rule() -> None:
    fs = fsspec.filesystem("memory")
    folder = f"/apr-lock-test-{time.time_ns()}"
    first = StoreLock(fs, folder, f"memory://{folder}", "job1")
    assert first.supported
    with pytest.raises(OutputBusyError, match="has used it since"):
        StoreLock(fs, folder, f"memory://{folder}", "job2")
    first.release()
    assert not fs.exists(f"{folder}/{LOCK_NAME}")
    stale = {"host": "elsewhere", "pid": 1, "heartbeat": time.time() - STALE_AFTER_S - 5, "token": "old"}
    fs.pipe_file(f"{folder}/{LOCK_NAME}", json.dumps(stale).encode())
    second = StoreLock(fs, folder, f"memory://{folder}", "job3")
    assert json.loads(fs.cat_file(f"{folder}/{LOCK_NAME}"))["job_id"] == "job3"
    second.release()
