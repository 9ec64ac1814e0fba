"""SIGKILL of a Dask worker, an entry-script process, the Dask scheduler and the driver, mid-job.

Each test checks the exactly-once invariant (`check_accounting`): every input item is counted once as
succeeded or failed, and the output holds exactly the succeeded items, in order, without torn lines.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from faults_support import (
    ExternalCluster,
    attempts,
    check_accounting,
    cli_run_argv,
    entry_processes,
    expected_line,
    lines_of,
    run_cli,
    wait_for,
)

from airflow_parallel_run.core import FileDataset, ParallelRunConfig, run_job
from airflow_parallel_run.core.worker.plugin import held, registered


def counting_prelude(calls: Path, sleep: float) -> str:
    """run() appends its first file's name to `calls` (progress the test can watch), then sleeps."""
    return f"open({str(calls)!r}, 'a').write(os.path.basename(mini_batch[0]) + '\\n')\ntime.sleep({sleep})"


class JobThread(threading.Thread):
    """run_job in a thread, so the test can inject faults while it runs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(daemon=True)
        self.args, self.kwargs = args, kwargs
        self.summary: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self.seconds = 0.0

    def run(self) -> None:
        started = time.monotonic()
        try:
            self.summary = run_job(*self.args, **self.kwargs)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        self.seconds = time.monotonic() - started

    def result(self, timeout: float) -> dict[str, Any]:
        self.join(timeout)
        assert not self.is_alive(), f"the job did not finish within {timeout:g} s"
        if self.error is not None:
            raise self.error
        assert self.summary is not None
        return self.summary


# -- Dask workers ---------------------------------------------------------------------------------------
def _set_up(control: Any) -> set[str]:
    """Workers on which a job's worker plugin is set up (a restarted worker gets it from the scheduler)."""
    return {
        w for w, names in control.run(held, on_error="ignore").items() if isinstance(names, list) and names
    }


def _kill_workers(
    cluster: ExternalCluster, job: JobThread, calls: Path, kills: int, interval: float, workers: int
) -> list[int]:
    """SIGKILLs worker processes (the nannies restart them) one after another while `job` runs.

    Before each kill every worker is up again and has the job's plugin set up; restarting the only
    worker there is is `test_restarted_only_worker_sets_the_job_up_again`.
    """
    killed: list[int] = []
    wait_for(lambda: len(lines_of(calls)) >= 3 or not job.is_alive(), 90, "the first mini-batches")
    with cluster.client() as control:
        while job.is_alive() and len(killed) < kills:
            try:
                pids = control.run(os.getpid, on_error="ignore")
                holders = _set_up(control)
            except Exception:  # noqa: BLE001 - a worker is restarting: ask again
                pids, holders = {}, set()
            if len(pids) < workers or not set(pids) <= holders:
                time.sleep(0.1)
                continue
            victim = sorted(pids.items())[len(killed) % workers][1]
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)
            time.sleep(interval)
    return killed


def _worker_kill_job(
    external_cluster: Callable[..., ExternalCluster],
    echo_script: Callable[..., str],
    files: Callable[..., Path],
    tmp_path: Path,
    count: int,
    kills: int,
) -> None:
    cluster = external_cluster(workers=2, nthreads=1, nanny=True)
    root, calls, out = files(count), tmp_path / "calls.txt", tmp_path / "out"
    script = echo_script(counting_prelude(calls, 0.2))
    config = ParallelRunConfig(
        entry_script=script, mini_batch_size=1, process_count_per_node=2, run_max_try=5
    )
    job = JobThread(config, [FileDataset.from_files(str(root))], str(out), scheduler=cluster.address)
    job.start()
    killed = _kill_workers(cluster, job, calls, kills=kills, interval=1.0, workers=2)
    summary = job.result(timeout=300)
    assert len(killed) >= min(kills, 2), f"only {len(killed)} kills landed while the job ran"
    check_accounting(summary, count, expected_lines=[expected_line(i) for i in range(count)])
    assert summary["status"] == "succeeded", summary
    rows = attempts(out)
    assert {r["Status"] for r in rows} <= {"RUN_DONE", "PROCESS_DIED", "CANCELLED"}, rows
    for row in rows:
        if row["Status"] == "PROCESS_DIED":  # the message names the cause
            assert "lost" in row["Error Message"] or "SIGKILL" in row["Error Message"], row
    # the killed workers' entry-script processes noticed their dead parent and exited
    wait_for(lambda: not entry_processes(out, root_pid=0), 15, "orphaned entry-script processes to exit")


def test_worker_processes_killed_repeatedly(external_cluster, echo_script, files, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _worker_kill_job(external_cluster, echo_script, files, tmp_path, count=40, kills=3)


@pytest.mark.soak
def test_worker_processes_killed_repeatedly_soak(external_cluster, echo_script, files, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _worker_kill_job(external_cluster, echo_script, files, tmp_path, count=240, kills=15)


def test_restarted_only_worker_sets_the_job_up_again(external_cluster, echo_script, files, tmp_path) -> None:  # type: ignore[no-untyped-def]
    cluster = external_cluster(workers=1, nthreads=2, nanny=True)
    root, calls, out = files(20), tmp_path / "calls.txt", tmp_path / "out"
    config = ParallelRunConfig(
        entry_script=echo_script(counting_prelude(calls, 0.2)), mini_batch_size=1, process_count_per_node=2
    )
    job = JobThread(config, [FileDataset.from_files(str(root))], str(out), scheduler=cluster.address)
    job.start()
    wait_for(lambda: len(lines_of(calls)) >= 3 or not job.is_alive(), 90, "the first mini-batches")
    with cluster.client() as control:
        [pid] = control.run(os.getpid).values()
    os.kill(pid, signal.SIGKILL)  # the nanny starts a new worker process at once
    summary = job.result(timeout=240)
    check_accounting(summary, 20)
    assert summary["status"] == "succeeded", summary.get("message")
    with cluster.client() as control:  # and it is gone from the scheduler and the new worker afterwards
        assert control.run_on_scheduler(registered) == []
        assert all(names == [] for names in control.run(held).values())


# -- entry-script processes -----------------------------------------------------------------------------
def _entry_kill_job(
    dask_client: Any,
    echo_script: Callable[..., str],
    files: Callable[..., Path],
    tmp_path: Path,
    count: int,
    kills: int,
) -> None:
    root, calls, out = files(count), tmp_path / "calls.txt", tmp_path / "out"
    script = echo_script(counting_prelude(calls, 0.4))
    config = ParallelRunConfig(
        entry_script=script, mini_batch_size=1, process_count_per_node=2, run_max_try=6
    )
    job = JobThread(config, [FileDataset.from_files(str(root))], str(out), client=dask_client)
    job.start()
    wait_for(lambda: len(lines_of(calls)) >= 2 or not job.is_alive(), 90, "the first mini-batches")
    killed: list[int] = []
    while job.is_alive() and len(killed) < kills:
        running = [p for p in entry_processes(out) if p.pid not in killed]
        if running:
            victim = running[0]
            target = len(lines_of(calls)) + 2
            victim.send_signal(signal.SIGKILL)
            killed.append(victim.pid)

            def progressed(target: int = target) -> bool:  # a replacement started and picked up work
                return len(lines_of(calls)) >= target or not job.is_alive()

            wait_for(progressed, 60, "progress after a kill")
        else:
            time.sleep(0.1)
    summary = job.result(timeout=240)
    assert len(killed) == kills, f"only {len(killed)} of {kills} kills landed while the job ran"
    check_accounting(summary, count, expected_lines=[expected_line(i) for i in range(count)])
    assert summary["status"] == "succeeded", summary
    died = [r for r in attempts(out) if r["Status"] == "PROCESS_DIED"]
    assert 1 <= len(died) <= kills, died
    for row in died:
        assert "killed by SIGKILL" in row["Error Message"], row
    assert "PROCESS_DIED" in (out / "logs" / "user" / "error.txt").read_text()


def test_entry_script_processes_killed_repeatedly(dask_client, echo_script, files, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _entry_kill_job(dask_client, echo_script, files, tmp_path, count=30, kills=4)


@pytest.mark.soak
def test_entry_script_processes_killed_repeatedly_soak(dask_client, echo_script, files, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _entry_kill_job(dask_client, echo_script, files, tmp_path, count=150, kills=25)


# -- the Dask scheduler ---------------------------------------------------------------------------------
@dataclass
class SchedulerKill:
    done: subprocess.CompletedProcess[str]
    seconds_after_kill: float
    out: Path
    root: Path
    script: str
    cache: Path
    calls: Path
    count: int


@pytest.fixture(scope="module")
def scheduler_kill(tmp_path_factory: pytest.TempPathFactory) -> SchedulerKill:
    """One CLI job on an external cluster whose scheduler is SIGKILLed mid-job (shared by two tests)."""
    tmp = tmp_path_factory.mktemp("scheduler-kill")
    count = 30
    root = tmp / "in"
    root.mkdir()
    for i in range(count):
        (root / f"f{i:03d}.txt").write_text(f"{i}\n")
    calls, out, cache = tmp / "calls.txt", tmp / "out", tmp / "cache"
    script = tmp / "echo.py"
    script.write_text(
        "import os, time\n"
        "def run(mini_batch):\n"
        f"    open({str(calls)!r}, 'a').write(os.path.basename(mini_batch[0]) + '\\n')\n"
        "    time.sleep(0.3)\n"
        '    return [f"{os.path.basename(p)} {open(p).read().strip()}" for p in mini_batch]\n'
    )
    cluster = ExternalCluster(tmp / "dask")
    try:
        cluster.start_scheduler()
        cluster.start_worker(nthreads=2, death_timeout=10)
        cluster.wait_for_workers(1)
        # A lost scheduler is noticed by every call the driver still makes; keep each such wait short.
        env = {**os.environ, "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "5s"}
        argv = cli_run_argv(
            root,
            out,
            str(script),
            "--scheduler",
            cluster.address,
            "--cache-dir",
            str(cache),
            "--mini-batch-size",
            "1",
            "--process-count-per-node",
            "2",
        )
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        wait_for(lambda: len(lines_of(calls)) >= 8 or proc.poll() is not None, 120, "8 mini-batches")
        time.sleep(0.2)
        cluster.kill_scheduler()
        killed_at = time.monotonic()
        try:
            stdout, stderr = proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        seconds = time.monotonic() - killed_at
        done = subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)
    finally:
        cluster.stop()
    return SchedulerKill(done, seconds, out, root, str(script), cache, calls, count)


def test_scheduler_killed_fails_in_bounded_time_and_rerun_resumes(scheduler_kill: SchedulerKill) -> None:
    run = scheduler_kill
    assert run.seconds_after_kill < 120, f"the driver needed {run.seconds_after_kill:.0f} s to give up"
    assert run.done.returncode not in (0, None), run.done.stderr[-2000:]
    text = run.done.stdout + run.done.stderr
    assert "scheduler" in text.lower() or "cluster" in text.lower(), text[-2000:]
    assert not (run.out / "parallel_run_step.txt").exists(), "a failed job presented an output file"
    ran_before = len(lines_of(run.calls))
    # a re-run on another cluster (the embedded one) resumes from the committed mini-batches
    again = run_cli(
        cli_run_argv(
            run.root,
            run.out,
            run.script,
            "--cache-dir",
            str(run.cache),
            "--mini-batch-size",
            "1",
            "--process-count-per-node",
            "2",
        )
    )
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads(again.stdout)
    assert summary["reused_mini_batches"] > 0, summary
    assert summary["reused_mini_batches"] + len(lines_of(run.calls)) - ran_before == run.count
    check_accounting(summary, run.count, expected_lines=[expected_line(i) for i in range(run.count)])
    assert not (run.out / ".staging").exists()


def test_scheduler_killed_returns_a_failed_summary(scheduler_kill: SchedulerKill) -> None:
    run = scheduler_kill
    assert run.done.returncode == 1, run.done.stderr[-2000:]
    summary = json.loads(run.done.stdout)
    assert "the Dask cluster failed during the job" in summary["message"], summary
    check_accounting(summary, run.count)


# -- the driver (CLI) -----------------------------------------------------------------------------------
def scratch_folders(temp: Path) -> list[tuple[str, str]]:
    """(kind, name) of the job scratch folders in the temp folder `temp` and in the workers' scratch
    root under it: spills (apr-plan, apr-commits, apr-logs), code, side inputs, working folders."""
    found = [(name.rsplit("-", 2)[0], name) for name in os.listdir(temp) if name.startswith("apr-")]
    root = temp / f"airflow-parallel-run-{os.getuid()}"
    for kind in ("code", "side", "work"):
        if (root / kind).is_dir():
            found += [(name.split("-", 1)[0].rstrip("0123456789"), name) for name in os.listdir(root / kind)]
    return sorted(found)


def test_killed_driver_rerun_into_the_same_folder(echo_script, files, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """tests/core/reuse/test_reuse.py resumes into a new folder; here the same folder: the dead driver's lock,
    staging parts and entry-script processes must not get in the way, and nothing is duplicated. The dead
    driver's scratch folders (its plan and commit spills, its workers' code and working folders) are
    removed by the re-run, which leaves none of its own."""
    count = 24
    root, calls, out, cache = files(count), tmp_path / "calls.txt", tmp_path / "out", tmp_path / "cache"
    script = echo_script(counting_prelude(calls, 0.3))
    args = ("--cache-dir", str(cache), "--mini-batch-size", "2", "--process-count-per-node", "1")
    temp = tmp_path / "temp"  # the temp folder of the drivers and their workers (TMPDIR)
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp)}
    driver = subprocess.Popen(
        cli_run_argv(root, out, script, *args),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
    )
    wait_for(lambda: len(lines_of(calls)) >= 4 or driver.poll() is not None, 90, "4 mini-batches")
    children = [p for p in entry_processes(out, driver.pid)]
    assert children, "no entry-script process found under the driver"
    workers = psutil.Process(driver.pid).children(recursive=True)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    # the orphaned entry-script processes (and the Dask workers) exit by themselves (they watch their parent)
    wait_for(
        lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in children + workers),
        30,
        "orphaned entry-script and worker processes to exit",
    )
    scratch = temp / f"airflow-parallel-run-{os.getuid()}"
    left = scratch_folders(temp)
    assert {"apr-plan", "code", "process"} <= {kind for kind, _ in left}, left
    lock = json.loads((out / ".airflow-parallel-run.lock").read_text())
    assert lock["pid"] == driver.pid, lock  # the dead driver's lock is still there...
    ran_before = len(lines_of(calls))
    done = run_cli(cli_run_argv(root, out, script, *args), env=env)  # ...and does not block the re-run
    assert done.returncode == 0, done.stderr[-3000:]
    assert scratch_folders(temp) == [], "the dead driver's scratch went with the re-run, which left none"
    assert scratch.is_dir()
    summary = json.loads(done.stdout)
    # run() calls logged before the kill minus those in flight (their results were never committed)
    assert 0 < summary["reused_mini_batches"] <= ran_before
    assert summary["reused_mini_batches"] + len(lines_of(calls)) - ran_before == count // 2
    check_accounting(summary, count, expected_lines=[expected_line(i) for i in range(count)])
    assert not (out / ".staging").exists() and not (out / ".airflow-parallel-run.lock").exists()
    assert "Job succeeded" in (out / "logs" / "job_result.txt").read_text()
