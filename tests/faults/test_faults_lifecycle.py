"""The lifecycle of a job: stopping stops, every process it started ends with it.

- A cancel (what `on_kill` does) on the embedded cluster, and SIGTERM to the CLI's whole process group
  followed by SIGKILL after Airflow 3's escalation delay: no entry-script process starts after the stop,
  `logs/job_result.txt` is complete within `STOP_BOUND_S` of the stop, the lock and `.staging` are gone,
  and no process of the job is left.
- Processes that `init()` and `run()` start (in the entry process's group, detached with a new session,
  or daemonised by a double fork) end with the job, and the master log counts them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil
from faults_support import cli_run_argv, entry_processes, lines_of, wait_for

from airflow_parallel_run.core import FileDataset, JobDriver, ParallelRunConfig, run_job
from airflow_parallel_run.core.driver.finish import with_unlisted_note

#: Airflow 3's task supervisor sends SIGTERM to the task's process group and SIGKILL 5 s later
#: (`kill(SIGTERM, force=True)`, escalation delay 5 s); the job's result must be written before that.
AIRFLOW_ESCALATION_S = 5.0
STOP_BOUND_S = AIRFLOW_ESCALATION_S

#: init() starts a helper that would outlive everything, run() a detached child; both note their pids.
SLOW_SCRIPT = """
import os, subprocess, sys, time

PIDS = {pids!r}
SLEEPER = [sys.executable, "-c", "import time; time.sleep(300)"]

def note(kind, pid):
    with open(PIDS, "a") as handle:
        handle.write(f"{{kind}} {{pid}}\\n")

def init():
    note("init-helper", subprocess.Popen(SLEEPER).pid)
    time.sleep({init_s})

def run(mini_batch):
    if os.path.basename(mini_batch[0]) < {fast_below!r}:  # quick successes open the full window
        return [os.path.basename(p) for p in mini_batch]
    note("run-detached", subprocess.Popen(SLEEPER, start_new_session=True).pid)
    with open({calls!r}, "a") as handle:
        handle.write(os.path.basename(mini_batch[0]) + "\\n")
    time.sleep({run_s})
    return [os.path.basename(p) for p in mini_batch]
"""


def slow_script(
    write_script: Callable[..., str], tmp_path: Path, init_s: float, run_s: float, quick: int = 0
) -> str:
    """`quick`: the first files' mini-batches succeed at once (then the driver keeps more attempts in flight)."""
    source = SLOW_SCRIPT.format(
        pids=str(tmp_path / "pids.txt"),
        calls=str(tmp_path / "calls.txt"),
        init_s=init_s,
        run_s=run_s,
        fast_below=f"f{quick:03d}.txt",
    )
    return write_script(source, name="slow.py")


def noted_pids(tmp_path: Path) -> list[int]:
    return [int(line.split()[1]) for line in lines_of(tmp_path / "pids.txt")]


def running(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            continue
    return alive


def complete_result(out: Path) -> dict[str, Any] | None:
    """The summary at the end of logs/job_result.txt once the file is whole, else None."""
    try:
        text = (out / "logs" / "job_result.txt").read_text()
        return dict(json.loads(text[text.index("\n{") :]))
    except (OSError, ValueError):
        return None


def _utc(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=timezone.utc).timestamp()


def process_starts(out: Path) -> list[tuple[float, str]]:
    """(time, line) of every entry-script process start in logs/sys/node/<ip>/<process>.txt."""
    starts = []
    for path in (out / "logs" / "sys" / "node").glob("*/*.txt"):
        for line in path.read_text().splitlines():
            if "|started pid " in line:
                starts.append((_utc(line.split("|", 1)[0]), line))
    return starts


def stop_time(out: Path) -> float | None:
    """When the stop had reached every worker, from sys/master_role.txt."""
    text = (out / "logs" / "sys" / "master_role.txt").read_text()
    found = re.search(r"stopped on every worker at (\S+ \S+) UTC", text)
    return _utc(found.group(1)) if found else None


def check_stopped_cleanly(out: Path, tmp_path: Path, stopped: float, within: float) -> dict[str, Any]:
    """`stopped`: when the test stopped the job (the stop line of the driver comes a little later)."""
    summary = complete_result(out)
    assert summary is not None, "logs/job_result.txt is missing or incomplete"
    assert summary["status"] == "failed", summary
    broadcast = stop_time(out)
    late = [line for when, line in process_starts(out) if when > (broadcast or stopped)]
    assert not late, "entry-script processes started after the stop:\n" + "\n".join(late)
    assert broadcast is not None and stopped <= broadcast < stopped + 2, "no (or a late) stop line"
    result = (out / "logs" / "job_result.txt").read_text()
    stop_line = re.search(
        r"^Stopped at \S+ \S+ UTC \(.+\): \d+ running attempt\(s\) cancelled, (\d+) process\(es\) the entry "
        r"script left running ended( on the workers that answered within [\d.]+ s)?",
        result,
        re.M,
    )
    assert stop_line, result
    assert not (out / ".airflow-parallel-run.lock").exists(), "the lock is left"
    assert not (out / ".staging").exists(), ".staging is left"
    pids = noted_pids(tmp_path)
    assert any(k.startswith("init-helper") for k in lines_of(tmp_path / "pids.txt")), "init() never ran"
    wait_for(lambda: not running(pids), within, "every process init() and run() started to end")
    # every worker answered in time: the count is exact; a loaded machine may leave it to the workers
    # themselves (the line says so, and the processes ended all the same, above)
    if stop_line.group(2) is None:
        assert int(stop_line.group(1)) == len(pids), (result, lines_of(tmp_path / "pids.txt"))
    else:
        assert int(stop_line.group(1)) <= len(pids), (result, lines_of(tmp_path / "pids.txt"))
    return summary


def test_cancel_stops_at_once_on_the_embedded_cluster(write_script, files, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """on_kill's cancel, 2 processes in slow run()s after 4 quick successes: 24 attempts in flight, most
    of them queued on the workers (before the fix each started a new process and init() after the stop)."""
    root, out = files(40), tmp_path / "out"
    script = slow_script(write_script, tmp_path, init_s=1.5, run_s=20, quick=4)
    drivers: list[JobDriver] = []
    result: list[Any] = []

    def job() -> None:
        try:
            result.append(
                run_job(
                    ParallelRunConfig(
                        entry_script=script, mini_batch_size=1, process_count_per_node=2, run_max_try=1
                    ),
                    [FileDataset.from_files(str(root))],
                    str(out),
                    on_driver=drivers.append,
                )
            )
        except BaseException as exc:  # noqa: BLE001 - reported below
            result.append(exc)

    thread = threading.Thread(target=job, daemon=True)
    thread.start()
    wait_for(lambda: len(lines_of(tmp_path / "calls.txt")) >= 2 or bool(result), 120, "two run() calls")
    assert not result, result
    stopped = time.time()
    drivers[0].cancel("the Airflow task was killed")
    wait_for(lambda: complete_result(out) is not None, 60, "logs/job_result.txt")
    seconds = time.time() - stopped
    thread.join(60)
    assert isinstance(result[0], dict), result
    summary = check_stopped_cleanly(out, tmp_path, stopped, within=5)
    words = "Job failed: the Airflow task was killed"  # 40 inputs: the stop may come before they are listed
    assert summary["message"] in (words, with_unlisted_note(words, summary["total_mini_batches"])), summary
    assert seconds < STOP_BOUND_S, f"job_result.txt took {seconds:.1f} s after the cancel"
    assert not entry_processes(out, 0), "entry-script processes are left"


def test_sigterm_to_the_process_group_then_sigkill_like_airflow(write_script, files, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """What Airflow 3 does when a task is marked failed or cleared: SIGTERM to the task's process group
    (the CLI and its embedded Dask workers), SIGKILL 5 s later."""
    root, out = files(16), tmp_path / "out"
    script = slow_script(write_script, tmp_path, init_s=1.5, run_s=20)
    argv = cli_run_argv(
        root, out, script, "--mini-batch-size", "1", "--process-count-per-node", "2", "--run-max-try", "1"
    )
    cli = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        wait_for(
            lambda: len(lines_of(tmp_path / "calls.txt")) >= 2 or cli.poll() is not None,
            120,
            "two run() calls",
        )
        assert cli.poll() is None, cli.communicate()
        stopped = time.time()
        os.killpg(cli.pid, signal.SIGTERM)
        try:
            cli.wait(AIRFLOW_ESCALATION_S)
        except subprocess.TimeoutExpired:
            os.killpg(cli.pid, signal.SIGKILL)
        seconds = time.time() - stopped
        stdout, stderr = cli.communicate(timeout=30)
    finally:
        if cli.poll() is None:
            os.killpg(cli.pid, signal.SIGKILL)
    summary = check_stopped_cleanly(out, tmp_path, stopped, within=5)
    assert "interrupted by signal SIGTERM" in summary["message"], summary
    # the CLI itself may still be closing its embedded cluster when SIGKILL comes: that is fine
    assert cli.returncode in (1, -signal.SIGKILL), (cli.returncode, seconds, stderr[-3000:])
    if cli.returncode == 1:
        assert json.loads(stdout)["status"] == "failed"
    wait_for(lambda: not entry_processes(out, 0), 5, "entry-script processes to end")


# -- processes started by init() and run() ---------------------------------------------------------------
DAEMONISE = (
    "import os, sys, time\n"
    "if os.fork():\n    os._exit(0)\n"
    "os.setsid()\n"
    "if os.fork():\n    os._exit(0)\n"
    "open(sys.argv[1], 'a').write(f'run-daemon {os.getpid()}\\n')\n"
    "time.sleep(300)\n"
)

LEAKY_SCRIPT = """
import os, subprocess, sys, time

PIDS = {pids!r}
SLEEPER = [sys.executable, "-c", "import time; time.sleep(300)"]

def note(kind, pid):
    with open(PIDS, "a") as handle:
        handle.write(f"{{kind}} {{pid}}\\n")

def init():
    note("init-helper", subprocess.Popen(SLEEPER).pid)

def run(mini_batch):
    note("run-same-group", subprocess.Popen(SLEEPER).pid)
    note("run-detached", subprocess.Popen(SLEEPER, start_new_session=True).pid)
    subprocess.run([sys.executable, "-c", {daemonise!r}, PIDS], check=True)
    return [os.path.basename(p) for p in mini_batch]
"""


def test_processes_started_by_the_entry_script_end_with_the_job(  # type: ignore[no-untyped-def]
    dask_client, write_script, files, tmp_path
) -> None:
    root, out = files(4), tmp_path / "out"
    script = write_script(LEAKY_SCRIPT.format(pids=str(tmp_path / "pids.txt"), daemonise=DAEMONISE))
    summary = run_job(
        ParallelRunConfig(entry_script=script, mini_batch_size=2, process_count_per_node=1),
        [FileDataset.from_files(str(root))],
        str(out),
        client=dask_client,
    )
    assert summary["status"] == "succeeded", summary
    kinds = [line.split()[0] for line in lines_of(tmp_path / "pids.txt")]
    assert sorted(set(kinds)) == ["init-helper", "run-daemon", "run-detached", "run-same-group"], kinds
    pids = noted_pids(tmp_path)
    assert not running(pids), (
        f"still running after the job: {running(pids)} of {lines_of(tmp_path / 'pids.txt')}"
    )
    master = (out / "logs" / "sys" / "master_role.txt").read_text()
    ended = re.search(r"ended (\d+) process\(es\) that entry scripts started", master)
    assert ended and int(ended.group(1)) == len(pids), master
    node_logs = "\n".join(p.read_text() for p in (out / "logs" / "sys" / "node").glob("*/*.txt"))
    for pid in pids:
        assert re.search(rf"\b{pid}\b", node_logs), f"pid {pid} is not named in the node logs"


def test_a_killed_worker_takes_the_entry_scripts_children_along(  # type: ignore[no-untyped-def]
    write_script, files, tmp_path
) -> None:
    """An entry-script process whose Dask worker dies ends itself and what it started (also detached)."""
    root, out = files(2), tmp_path / "out"
    script = slow_script(write_script, tmp_path, init_s=0, run_s=60)
    cli = subprocess.Popen(
        cli_run_argv(root, out, script, "--mini-batch-size", "1", "--process-count-per-node", "1"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(lambda: len(lines_of(tmp_path / "calls.txt")) >= 1 or cli.poll() is not None, 120, "run()")
        children = entry_processes(out, cli.pid)
        assert children
        os.killpg(cli.pid, signal.SIGKILL)  # the driver and its Dask workers, not the entry process's session
        cli.wait()
        pids = noted_pids(tmp_path)
        wait_for(lambda: not running([c.pid for c in children] + pids), 10, "the orphans to end")
    finally:
        if cli.poll() is None:
            os.killpg(cli.pid, signal.SIGKILL)


class TaskTimeout(BaseException):
    """Stands for Airflow's AirflowTaskTimeout: a BaseException raised by a SIGALRM handler in the task's
    main thread, wherever the driver is at that moment."""


def test_a_timeout_raised_inside_the_driver_stops_finishes_and_re_raises(  # type: ignore[no-untyped-def]
    dask_client, write_script, files, tmp_path
) -> None:
    root, out = files(8), tmp_path / "out"
    script = slow_script(write_script, tmp_path, init_s=0.5, run_s=20, quick=2)

    fired: list[float] = []

    def alarm(_signum: int, _frame: Any) -> None:
        fired.append(time.time())
        raise TaskTimeout("Timeout, PID: 1")

    def alarm_once_running(main: int) -> None:
        """SIGALRM to the main thread 1 s after the first run() call, as Airflow's timeout would arrive
        (a fixed delay from the start may come before any run() on a loaded machine)."""
        with contextlib.suppress(AssertionError):
            wait_for(lambda: bool(lines_of(tmp_path / "calls.txt")), 120, "a first run() call")
        time.sleep(1.0)
        signal.pthread_kill(main, signal.SIGALRM)

    previous = signal.signal(signal.SIGALRM, alarm)
    timer = threading.Thread(target=alarm_once_running, args=(threading.get_ident(),), daemon=True)
    try:
        timer.start()
        try:
            run_job(
                ParallelRunConfig(entry_script=script, mini_batch_size=1, process_count_per_node=2),
                [FileDataset.from_files(str(root))],
                str(out),
                client=dask_client,
            )
        except TaskTimeout:
            pass
        else:
            raise AssertionError("the timeout did not reach the caller")
    finally:
        timer.join()
        signal.signal(signal.SIGALRM, previous)
    assert len(lines_of(tmp_path / "calls.txt")) >= 1, "the timeout came before any run()"
    summary = check_stopped_cleanly(out, tmp_path, fired[0], within=5)
    assert summary["message"] == "Job failed: interrupted by TaskTimeout: Timeout, PID: 1", summary


def test_entry_process_listing_of_a_root_that_ended_is_empty() -> None:
    """Tests poll `entry_processes(out, proc.pid)` while `proc` ends: a root that ended (here a zombie,
    not yet reaped) has no descendants to list, rather than raising psutil.NoSuchProcess."""
    ended = subprocess.Popen(["/bin/sh", "-c", "exit 0"])
    try:
        wait_for(lambda: psutil.Process(ended.pid).status() == psutil.STATUS_ZOMBIE, 30, "the zombie")
        assert entry_processes("/nowhere", ended.pid) == []
    finally:
        ended.wait()
    assert entry_processes("/nowhere", ended.pid) == [], "and once reaped"
