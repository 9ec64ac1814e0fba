"""Hung run(), hung init(), init() that ends its process, MemoryError and a real out-of-memory kill.

tests/core/driver/test_engine.py already proves: a run() that hangs once is killed and retried, os.abort() in run()
fails that attempt only, and an init() that raises on every process stops the job early. These tests
cover what it does not: a run() that always hangs, an init() that hangs or exits, and memory failures.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from faults_support import attempts, check_accounting, expected_line

from airflow_parallel_run.core import FileDataset, ParallelRunConfig, run_job


def job(client: Any, script: str, root: Path, out: Path, **settings: Any) -> dict[str, Any]:
    settings.setdefault("process_count_per_node", 2)
    settings.setdefault("mini_batch_size", 1)
    return run_job(
        ParallelRunConfig(entry_script=script, **settings),
        [FileDataset.from_files(str(root))],
        str(out),
        client=client,
    )


def test_run_that_always_hangs_fails_its_mini_batch_only(dask_client, echo_script, files, tmp_path) -> None:  # type: ignore[no-untyped-def]
    root, out = files(6), tmp_path / "out"
    script = echo_script("if mini_batch[0].endswith('f002.txt'):\n    time.sleep(600)")
    started = time.monotonic()
    summary = job(dask_client, script, root, out, run_invocation_timeout=2, run_max_try=2)
    assert time.monotonic() - started < 2 * (2 + 5) + 20
    check_accounting(summary, 6, expected_lines=[expected_line(i) for i in (0, 1, 3, 4, 5)])
    assert summary["status"] == "succeeded" and summary["failed_mini_batches"] == 1, summary
    rows = [r for r in attempts(out) if r["Mini-batch Id"] == "2"]
    assert [r["Status"] for r in rows] == ["RUN_TIMEOUT", "RUN_TIMEOUT"], rows
    assert all("did not finish in 2 s (run_invocation_timeout)" in r["Error Message"] for r in rows)
    assert "2 x RUN_TIMEOUT" in (out / "logs" / "user" / "error.txt").read_text()


def test_a_slow_process_start_is_not_charged_to_init(dask_client, write_script, files, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """run_invocation_timeout bounds the script's import and init(), not the interpreter's start: a machine
    so loaded (or a disk so cold) that Python takes 3 s to start must not turn into INIT_TIMEOUT at 1 s."""
    slow_start = tmp_path / "slow_start"
    slow_start.mkdir()
    # runs at the interpreter's start, before the engine's imports: a stand-in for a slow start
    (slow_start / "sitecustomize.py").write_text("import time\ntime.sleep(3)\n")
    root, out = files(4), tmp_path / "out"
    script = write_script("""
        def init():
            pass
        def run(mini_batch):
            return mini_batch
    """)
    summary = job(
        dask_client,
        script,
        root,
        out,
        run_invocation_timeout=1,
        run_max_try=1,
        environment_variables={"PYTHONPATH": str(slow_start)},
    )
    rows = attempts(out)
    assert summary["status"] == "succeeded" and summary["failed_mini_batches"] == 0, (summary, rows)
    assert [r["Status"] for r in rows] == ["RUN_DONE"] * 4, rows


def test_a_stop_while_processes_start_books_their_attempts_as_cancelled_in_init(  # type: ignore[no-untyped-def]
    dask_client, write_script, files, tmp_path
) -> None:
    """A stop that comes between a process's spawn and its `Started` (a slow interpreter start): each
    attempt whose process was spawned has its CANCELLED row, as a stop during init() always had; only an
    attempt that started nothing is left without a row."""
    slow_start = tmp_path / "slow_start"
    slow_start.mkdir()
    marks = tmp_path / "marks"
    marks.mkdir()
    (slow_start / "sitecustomize.py").write_text(
        f"import os, time\nopen(os.path.join({str(marks)!r}, str(os.getpid())), 'w').close()\ntime.sleep(30)\n"
    )
    root, out = files(2), tmp_path / "out"
    script = write_script("""
        def run(mini_batch):
            return mini_batch
    """)
    drivers: list[Any] = []
    result: list[Any] = []

    def run() -> None:
        try:
            result.append(
                run_job(
                    ParallelRunConfig(
                        entry_script=script,
                        mini_batch_size=1,
                        process_count_per_node=2,
                        environment_variables={"PYTHONPATH": str(slow_start)},
                    ),
                    [FileDataset.from_files(str(root))],
                    str(out),
                    client=dask_client,
                    on_driver=drivers.append,
                )
            )
        except BaseException as exc:  # noqa: BLE001 - reported below
            result.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while len(list(marks.iterdir())) < 2 and not result:  # both processes spawned, still starting
        assert time.monotonic() < deadline, "the entry-script processes never started"
        time.sleep(0.05)
    drivers[0].cancel("the Airflow task was killed")
    thread.join(60)
    assert result and isinstance(result[0], dict), result
    assert result[0]["message"] == "Job failed: the Airflow task was killed", result[0]
    rows = attempts(out)
    assert sorted(r["Mini-batch Id"] for r in rows) == ["0", "1"], rows
    for row in rows:
        assert (row["Status"], row["Error Message"]) == ("CANCELLED", "job stopped while init() ran"), row


def test_a_process_that_dies_while_starting_says_so(dask_client, write_script, files, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Before `Started` (the interpreter's start, before the engine's imports): PROCESS_DIED at stage start,
    with the exit code and the process's last stderr lines, not an init() failure."""
    dying_start = tmp_path / "dying_start"
    dying_start.mkdir()
    (dying_start / "sitecustomize.py").write_text(
        "import os, sys\nsys.stderr.write('no interpreter for you\\n')\nsys.stderr.flush()\nos._exit(7)\n"
    )
    root, out = files(2), tmp_path / "out"
    script = write_script("""
        def run(mini_batch):
            return mini_batch
    """)
    summary = job(
        dask_client, script, root, out, run_max_try=1, environment_variables={"PYTHONPATH": str(dying_start)}
    )
    rows = attempts(out)
    assert summary["status"] == "failed" and summary["failed_mini_batches"] == 2, (summary, rows)
    for row in rows:
        assert row["Status"] == "PROCESS_DIED", row
        assert "died during its start (exit code 7)" in row["Error Message"], row
    assert "no interpreter for you" in (out / "logs" / "user" / "error.txt").read_text() or any(
        "no interpreter for you" in p.read_text() for p in (out / "logs" / "user" / "error").rglob("*.txt")
    )


def test_hung_init_times_out_and_stops_the_job_soon(dask_client, write_script, files, tmp_path) -> None:  # type: ignore[no-untyped-def]
    root, out = files(30), tmp_path / "out"
    script = write_script("""
        import time
        def init():
            time.sleep(600)
        def run(mini_batch):
            return mini_batch
    """)
    started = time.monotonic()
    summary = job(dask_client, script, root, out, run_invocation_timeout=2, run_max_try=3)
    seconds = time.monotonic() - started
    # max(3, 2 * 2 slots) = 4 init timeouts of 2 s each, two at a time, then the job stops
    assert seconds < 45, f"the job took {seconds:.0f} s to stop"
    check_accounting(summary, 30)
    assert summary["status"] == "failed" and summary["succeeded_items"] == 0
    message = summary["message"]
    assert "init() failed 4 times and no mini-batch has succeeded" in message, message
    assert "init() did not finish in 2 s (run_invocation_timeout)" in message, message
    rows = attempts(out)
    assert {r["Status"] for r in rows} <= {"INIT_TIMEOUT", "CANCELLED"}, rows
    assert sum(r["Status"] == "INIT_TIMEOUT" for r in rows) >= 4
    assert len({r["Mini-batch Id"] for r in rows}) < 30, "the job did not stop early"


INIT_EXITS = {
    "sys.exit": "import sys\n            sys.exit(7)",
    "os._exit": "import os\n            os._exit(7)",
}


@pytest.mark.parametrize(
    "how",
    [
        "sys.exit",
        pytest.param(
            "os._exit",
        ),
    ],
)
def test_init_that_ends_its_process_on_every_process_stops_the_job(
    dask_client: Any, write_script: Callable[..., str], files: Callable[..., Path], tmp_path: Path, how: str
) -> None:
    root, out = files(6), tmp_path / "out"
    script = write_script(f"""
        def init():
            {INIT_EXITS[how]}
        def run(mini_batch):
            return mini_batch
    """)
    summary = job(dask_client, script, root, out, run_max_try=2)
    check_accounting(summary, 6)
    assert summary["status"] == "failed" and summary["succeeded_items"] == 0
    failed_inits = [r for r in attempts(out) if r["Status"] != "CANCELLED"]
    # every status names the cause: SystemExit is an init() exception, os._exit ends the process
    for row in failed_inits:
        assert ("SystemExit: 7" in row["Error Message"]) or (
            "died during init() (exit code 7)" in row["Error Message"]
        )
    assert "init() failed" in summary["message"], summary["message"]
    assert len(failed_inits) <= 2 * 4, f"{len(failed_inits)} init failures: the job did not stop early"


# -- memory ---------------------------------------------------------------------------------------------
MEMORY_ERROR_RUN = """
import os, resource
def run(mini_batch):
    if mini_batch[0].endswith("f003.txt"):
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        in_use = int(open("/proc/self/statm").read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        resource.setrlimit(resource.RLIMIT_AS, (in_use + 300 * 1024 * 1024, hard))
        try:
            hog = bytearray(2 * 1024**3)  # MemoryError: the address space is capped at +300 MB
        finally:
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    return [f"{os.path.basename(p)} {open(p).read().strip()}" for p in mini_batch]
"""


def test_memory_error_in_run_fails_that_mini_batch(dask_client, write_script, files, tmp_path) -> None:  # type: ignore[no-untyped-def]
    root, out = files(6), tmp_path / "out"
    summary = job(dask_client, write_script(MEMORY_ERROR_RUN), root, out, run_max_try=2)
    check_accounting(summary, 6, expected_lines=[expected_line(i) for i in (0, 1, 2, 4, 5)])
    assert summary["status"] == "succeeded" and summary["failed_items"] == 1, summary
    rows = [r for r in attempts(out) if r["Mini-batch Id"] == "3"]
    assert [r["Status"] for r in rows] == ["RUN_EXCEPTION", "RUN_EXCEPTION"], rows
    assert all(r["Error Message"].startswith("MemoryError") for r in rows), rows
    assert "RUN_EXCEPTION: MemoryError" in (out / "logs" / "user" / "error.txt").read_text()


def test_out_of_memory_kill_of_an_entry_script_process(  # type: ignore[no-untyped-def]
    dask_client, write_script, files, tmp_path, memory_cgroup
) -> None:
    """A real kernel OOM kill: run() moves its own process into a 200 MB memory cgroup and allocates."""
    group = memory_cgroup(200 * 1024 * 1024)
    root, out = files(6), tmp_path / "out"
    script = write_script(f"""
        import os
        def run(mini_batch):
            if mini_batch[0].endswith("f003.txt"):
                open({str(group / "cgroup.procs")!r}, "w").write(str(os.getpid()))
                hog = []
                for _ in range(100):  # 2 GB at most; the kernel kills this process at 200 MB
                    hog.append(bytearray(20 * 1024 * 1024))
                print("the OOM killer did not act", flush=True)
                os._exit(99)
            return [f"{{os.path.basename(p)}} {{open(p).read().strip()}}" for p in mini_batch]
    """)
    summary = job(dask_client, script, root, out, run_max_try=2)
    check_accounting(summary, 6, expected_lines=[expected_line(i) for i in (0, 1, 2, 4, 5)])
    assert summary["status"] == "succeeded" and summary["failed_items"] == 1, summary
    rows = [r for r in attempts(out) if r["Mini-batch Id"] == "3"]
    assert [r["Status"] for r in rows] == ["PROCESS_DIED", "PROCESS_DIED"], rows
    for row in rows:
        assert "died during run() of mini-batch 3 (killed by SIGKILL)" in row["Error Message"], row
    assert "2 x PROCESS_DIED" in (out / "logs" / "user" / "error.txt").read_text()
