"""The progress watchdog on a real LocalCluster: a hung run() or init() under a huge run_invocation_timeout
stops the job with a message naming what hangs; a slow job that progresses is not stopped; nothing is left
running. And the watchdog's decisions on a fake clock."""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from distributed import Client

from airflow_parallel_run.core import FileDataset, ParallelRunConfig, run_job
from airflow_parallel_run.core.attempt import AttemptResult, AttemptStage, AttemptStatus
from airflow_parallel_run.core.driver.watchdog import PROBE_S, InFlight, Watchdog
from airflow_parallel_run.core.minibatch import MiniBatch
from tests.faults.faults_support import check_documented, entry_processes

NO_PROGRESS = (
    "Job failed: no mini-batch finished or failed for <seconds> s (progress_update_timeout 3 s): mini-batch 3 "
    "(<path>, attempt 1) has run for <seconds> s in <process> on <host> (pid <pid>). A run() that can hang needs a "
    "lower run_invocation_timeout; mini-batches this slow need a higher progress_update_timeout"
)
NOT_READY = (
    "Job failed: no entry-script process became ready within 4 s (first_task_creation_timeout): after <seconds> s "
    "<process> on <host> (pid <pid>, worker <address>) has not finished init() after <seconds> s. An init() that "
    "takes this long needs a higher first_task_creation_timeout; one that hangs needs fixing "
    "(run_invocation_timeout also bounds init())."
)


def job(client: Client, script: str, root: Path, out: Path, **kw: Any) -> dict[str, Any]:
    kw.setdefault("process_count_per_node", 2)
    kw.setdefault("mini_batch_size", 1)
    config = ParallelRunConfig(entry_script=script, **kw)
    return run_job(config, [FileDataset.from_files(str(root))], str(out), client=client)


def rows(out: Path) -> list[dict[str, str]]:
    with open(out / "logs" / "sys" / "job_report" / "processed_mini-batches.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def no_entry_processes_left(out: Path, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while entry_processes(out):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


HANGS_ON_F003 = """
import os, time
def run(mini_batch):
    for path in mini_batch:
        if os.path.basename(path) == "f003.txt":
            time.sleep(3600)
    return [os.path.basename(p) for p in mini_batch]
"""


def test_a_hung_run_is_stopped_by_progress_update_timeout(
    dask_client: Client, write_script: Callable[..., str], files: Callable[..., Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    started = time.monotonic()
    summary = job(
        dask_client,
        write_script(HANGS_ON_F003),
        files(6),
        out,
        run_invocation_timeout=3600,
        progress_update_timeout=3,
    )
    took = time.monotonic() - started
    assert summary["status"] == "failed", summary
    message = summary["message"]
    check_documented(NO_PROGRESS, message)
    assert "no mini-batch finished or failed for" in message and "progress_update_timeout 3 s" in message
    assert "mini-batch 3 (" in message and "f003.txt" in message and "attempt 1) has run for" in message
    assert " in process0" in message and " on 127.0.0.1 (pid " in message, message
    # what finished is counted (and in the reuse cache); the hung mini-batch was cancelled and counts
    # as not processed, as with any stopped job
    assert (summary["succeeded_mini_batches"], summary["failed_mini_batches"]) == (5, 1), summary
    assert (summary["succeeded_items"], summary["failed_items"]) == (5, 1), summary
    assert ("3", "CANCELLED") in {(r["Mini-batch Id"], r["Status"]) for r in rows(out)}
    assert took < 60, took
    assert no_entry_processes_left(out)
    result = (out / "logs" / "job_result.txt").read_text()
    assert "progress_update_timeout" in result.splitlines()[0]
    # what finished was committed to the reuse cache: a re-run reuses it and runs only the hung one
    again = job(
        dask_client,
        write_script(HANGS_ON_F003),
        files(6),
        tmp_path / "again",
        run_invocation_timeout=3600,
        progress_update_timeout=3,
    )
    assert again["status"] == "failed" and again["reused_mini_batches"] == 5, again
    assert no_entry_processes_left(tmp_path / "again")


INIT_HANGS = """
import os, sys, time
def init():
    print("connecting with", os.environ["API_TOKEN"], file=sys.stderr, flush=True)
    print("loading the model from /models/big", file=sys.stderr, flush=True)
    time.sleep(3600)
def run(mini_batch):
    return mini_batch
"""


def test_an_init_that_never_returns_is_stopped_by_first_task_creation_timeout(
    dask_client: Client, write_script: Callable[..., str], files: Callable[..., Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    started = time.monotonic()
    summary = job(
        dask_client,
        write_script(INIT_HANGS),
        files(4),
        out,
        run_invocation_timeout=3600,
        first_task_creation_timeout=4,
        progress_update_timeout=1,  # never applies before a process is ready
        environment_variables={"API_TOKEN": "tok-8f2c61d9e4"},
    )
    took = time.monotonic() - started
    assert summary["status"] == "failed", summary
    message = summary["message"]
    assert message.startswith(
        "Job failed: no entry-script process became ready within 4 s (first_task_creation_timeout): after "
    ), message
    check_documented(NOT_READY, message.splitlines()[0])
    assert "has not finished init() after" in message and " on 127.0.0.1 (pid " in message
    assert "last lines of the stderr of process0" in message
    assert "loading the model from /models/big" in message
    assert (
        "tok-8f2c61d9e4" not in message and "connecting with ***" in message
    )  # the job's secrets are masked
    assert "logs/user/stderr/127.0.0.1/process0" in message
    assert summary["succeeded_mini_batches"] == 0
    result = (out / "logs" / "job_result.txt").read_text()
    lines = result[: result.index("\n{")]  # before the summary document (which holds the message too)
    assert lines.count("loading the model from /models/big") == message.count("loading the model"), result
    assert took < 60, took
    assert no_entry_processes_left(out)


SLOW_BUT_STEADY = """
import os, time
def init():
    time.sleep(3)  # longer than progress_update_timeout: the limit counts from a ready process
def run(mini_batch):
    time.sleep(0.4)
    return [os.path.basename(p) for p in mini_batch]
"""


def test_a_slow_job_that_progresses_is_not_stopped(
    dask_client: Client, write_script: Callable[..., str], files: Callable[..., Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    summary = job(
        dask_client,
        write_script(SLOW_BUT_STEADY),
        files(12),
        out,
        progress_update_timeout=2.5,
        first_task_creation_timeout=20,
    )
    assert summary["status"] == "succeeded", summary
    assert summary["succeeded_mini_batches"] == 12
    assert Path(summary["append_row_file"]).read_text() == "".join(f"f{i:03d}.txt\n" for i in range(12))


# -- the decisions, on a fake clock ---------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _config(tmp_path: Path, **kw: Any) -> ParallelRunConfig:
    script = tmp_path / "s.py"
    script.write_text("def run(mini_batch):\n    return mini_batch\n")
    return ParallelRunConfig(entry_script=str(script), **kw)


def _worker(ready_s_ago: float | None, running: list[list[float]] | None = None) -> dict[str, Any]:
    process = {
        "process": "process_001",
        "node": "10.0.0.5",
        "pid": 77,
        "ready": ready_s_ago is not None,
        "for_s": 12.0,
        "running": running or [],
        "stderr": "user/stderr/10.0.0.5/process_001.stderr.txt",
        "stderr_tail": "line 1\nImportError: no module named torch",
        "entry_log": "user/entry_script_log/10.0.0.5/process_001.log.txt",
        "entry_log_tail": "",
    }
    return {"node": "10.0.0.5", "ready_s_ago": ready_s_ago, "processes": [process]}


def test_first_task_creation_timeout_on_a_fake_clock(tmp_path: Path) -> None:
    clock, asked = Clock(), []

    def probe(tails: bool) -> dict[str, Any]:
        asked.append(tails)
        return {"tcp://10.0.0.5:4000": _worker(None)}

    dog = Watchdog(_config(tmp_path, first_task_creation_timeout=10, progress_update_timeout=1), probe, clock)
    assert dog.check(list) is None and asked == [False]  # a first look at once
    clock.now += PROBE_S / 2
    assert dog.check(list) is None and asked == [False]  # not asked again within PROBE_S
    clock.now += 9.9 - PROBE_S / 2
    assert dog.check(list) is None  # progress_update_timeout does not apply before a process is ready
    clock.now += 0.1
    reason = dog.check(list)
    assert asked[-1] is True and reason is not None
    assert reason.startswith(
        "no entry-script process became ready within 10 s (first_task_creation_timeout): after 10.0 s "
        "process_001 on 10.0.0.5 (pid 77, worker tcp://10.0.0.5:4000) has not finished init() after 12.0 s."
    ), reason
    assert (
        "last lines of the stderr of process_001 on 10.0.0.5 (logs/user/stderr/10.0.0.5/process_001.stderr.txt):\n"
        "    line 1\n    ImportError: no module named torch" in reason
    )
    assert "the entry-script log of process_001 on 10.0.0.5 (logs/user/entry_script_log/" in reason


def test_progress_update_timeout_counts_from_the_last_attempt_or_readiness(tmp_path: Path) -> None:
    clock = Clock()
    mb = MiniBatch(index=4, kind="file", input_index=0, items=1)
    report: dict[str, Any] = {"tcp://10.0.0.5:4000": _worker(None)}
    dog = Watchdog(
        _config(tmp_path, first_task_creation_timeout=100, progress_update_timeout=5),
        lambda tails: report,
        clock,
    )
    clock.now += 50
    assert dog.check(list) is None  # not ready yet: the first-task limit is 100
    report["tcp://10.0.0.5:4000"] = _worker(2.0, [[4, 1, 2.0]])
    clock.now += PROBE_S
    assert dog.check(lambda: [InFlight(mb, 1, clock.now - 10)]) is None  # ready 2 s ago
    clock.now += 3
    reason = dog.check(lambda: [InFlight(mb, 1, clock.now - 10)])
    assert reason is not None and reason.startswith(
        "no mini-batch finished or failed for 5.0 s (progress_update_timeout 5 s): mini-batch 4 ("
    ), reason
    assert "attempt 1) has run for 2.0 s in process_001 on 10.0.0.5 (pid 77)" in reason
    ended = AttemptResult(4, 1, AttemptStatus.RUN_EXCEPTION, stage=AttemptStage.RUN)
    dog.attempt_ended(ended)  # any attempt that ends is progress
    clock.now += 4.9
    assert dog.check(list) is None
    clock.now += 0.1
    assert dog.check(list) is not None


def test_an_attempt_past_init_proves_readiness_without_asking(tmp_path: Path) -> None:
    clock, asked = Clock(), []
    dog = Watchdog(
        _config(tmp_path, first_task_creation_timeout=1, progress_update_timeout=100),
        lambda tails: asked.append(tails) or {},
        clock,
    )
    dog.attempt_ended(AttemptResult(0, 1, AttemptStatus.RUN_DONE))
    clock.now += 50
    assert dog.check(list) is None and asked == []


def test_defaults_follow_azure(tmp_path: Path) -> None:
    from airflow_parallel_run.core.config import TASK_OVERHEAD_S
    from airflow_parallel_run.core.worker.spec import JobSpec

    config = _config(tmp_path)
    assert JobSpec.__dataclass_fields__["load_timeout"].default == TASK_OVERHEAD_S  # one task overhead
    assert config.progress_update_limit == 3 * (60 + 600)
    assert config.first_task_creation_limit == 600
    assert _config(tmp_path, run_invocation_timeout=1800).first_task_creation_limit == 1800
    assert _config(tmp_path, progress_update_timeout=7).progress_update_limit == 7


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("progress_update_timeout", 0, "a number of seconds > 0"),
        ("progress_update_timeout", float("inf"), "a finite number of seconds > 0"),
        ("first_task_creation_timeout", -1, "a number of seconds > 0"),
        ("first_task_creation_timeout", "600", "a number of seconds > 0"),
    ],
)
def test_bad_limits_name_the_field(tmp_path: Path, field: str, value: object, allowed: str) -> None:
    from airflow_parallel_run.core import ConfigError

    with pytest.raises(ConfigError) as info:
        _config(tmp_path, **{field: value})
    assert str(info.value) == f"{field}={value!r} is not allowed: {allowed}"


def test_a_question_to_the_workers_is_given_up_when_the_job_stops() -> None:
    """The watchdog's and speculation's calls to the workers are bounded, and a stop does not wait for
    them (the stop's own time bound, core/driver/stopping.py, must hold)."""
    from airflow_parallel_run.core.driver.stopping import bounded

    stop_at = time.monotonic() + 0.2
    started = time.monotonic()
    answered, value = bounded(lambda: time.sleep(5), 5.0, lambda: time.monotonic() >= stop_at)
    assert (answered, value) == (False, None)
    assert time.monotonic() - started < 1.0
    assert bounded(lambda: 42, 5.0, lambda: False) == (True, 42)


def test_workers_that_start_no_process_or_do_not_answer_are_named(tmp_path: Path) -> None:
    clock = Clock()
    answers: list[Any] = [{"tcp://10.0.0.6:4000": {"node": "10.0.0.6", "ready_s_ago": None, "processes": []}}]
    config = _config(tmp_path, first_task_creation_timeout=5)
    dog = Watchdog(config, lambda tails: answers[0], clock)
    clock.now += 5
    reason = dog.check(list)
    assert (
        reason is not None
        and "after 5.0 s worker tcp://10.0.0.6:4000 on 10.0.0.6 started no entry-script process." in reason
    )
    answers[0] = None  # the workers did not answer in time
    dog = Watchdog(config, lambda tails: answers[0], clock)
    clock.now += 5
    reason = dog.check(list)
    assert reason is not None and "the workers did not answer when asked what their processes do" in reason
    answers[0] = {"tcp://10.0.0.6:4000": None}  # the job's plugin is on no worker
    dog = Watchdog(config, lambda tails: answers[0], clock)
    clock.now += 5
    reason = dog.check(list)
    assert reason is not None and "no worker holds the job" in reason
