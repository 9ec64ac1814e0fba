"""Two schedulers on PostgreSQL: SIGKILL one while a 20-mini-batch job runs; the run still succeeds.

The stack runs `scheduler` and `scheduler-2`. With the LocalExecutor a task runs under the scheduler
that queued it. The test triggers `apr_e2e_twenty_batches`, waits until a few mini-batches are done,
finds (from the environment tag of a live entry-script process) which scheduler runs the task, and
SIGKILLs either that one or the other one:

- the other one: the task is not disturbed; it finishes in its first try, as one job;
- the one running it: the stack's supervisor kills what that scheduler left running (as systemd does
  with a service's control group) and restarts it; the surviving scheduler declares the dead
  scheduler's job failed, resets its task instance, and the task runs again (try 2), reusing the
  mini-batches the first try finished.

Either way the output is exact (every input line once, in order), and the ledger the entry script
writes shows that two jobs never ran at the same time: no call of a first-try process after the
kill, and never more calls at once than `process_count_per_node` in the job that finished.
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from e2e_rest import RUN_TIMEOUT, Api, Progress, Stack

pytestmark = pytest.mark.usefixtures("stack_logs_on_failure")

DAG_ID = "apr_e2e_twenty_batches"
FILES, PER_BATCH, PROCESSES = 40, 2, 2
BATCHES = FILES // PER_BATCH


def _ledger(root: Path) -> list[tuple[str, int, float, str]]:
    """(event, pid, time, files) per line of the entry script's ledger."""
    path = root / "ledger.txt"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        event, pid, stamp, names = line.split(" ", 3)
        rows.append((event, int(pid), float(stamp), names))
    return rows


def _max_concurrent(rows: list[tuple[str, int, float, str]]) -> int:
    """The most entry-script calls in flight at once; every call must have ended."""
    open_calls: dict[tuple[int, str], float] = {}
    edges = []
    for event, pid, stamp, names in rows:
        if event == "begin":
            open_calls[(pid, names)] = stamp
        else:
            edges += [(open_calls.pop((pid, names)), 1), (stamp, -1)]
    assert not open_calls, f"calls that never ended: {sorted(open_calls)}"
    best = current = 0
    for _, step in sorted(edges):  # at equal times an end (-1) sorts before a begin (+1)
        current += step
        best = max(best, current)
    return best


@pytest.mark.parametrize("victim", ["the scheduler running the task", "the other scheduler"])
def test_sigkilled_scheduler_leaves_the_run_to_the_other_one(
    stack: Stack, api: Api, tmp_path: Path, victim: str
) -> None:
    assert stack.schedulers == 2
    root = tmp_path / "job"
    (root / "in").mkdir(parents=True)
    token = secrets.token_hex(4)  # fresh content: nothing comes from the reuse cache of another test
    expected = []
    for i in range(FILES):
        (root / "in" / f"row{i:02d}.txt").write_text(f"{token}-{i}\n")
        expected.append(f"row{i:02d}.txt {token}-{i}")

    response = api.trigger(DAG_ID, {"root": str(root)})
    assert response.status_code == 200, response.text
    run_id = response.json()["dag_run_id"]

    def entry_process() -> int | None:
        """A live entry-script process, once a few mini-batches are done."""
        rows = _ledger(root)
        if sum(1 for row in rows if row[0] == "end") < 3:
            return None
        ended = {(pid, names) for event, pid, _, names in rows if event == "end"}
        running = [pid for event, pid, _, names in rows if event == "begin" and (pid, names) not in ended]
        return next((pid for pid in running if stack.component_of(pid)), None)

    pid = api.wait_for(entry_process, "a running entry-script process after 3 mini-batches", timeout=180)
    runner = stack.component_of(pid)
    assert runner in ("scheduler", "scheduler-2"), f"entry process {pid} runs under {runner}"
    target = (
        runner
        if victim.startswith("the scheduler running")
        else ({"scheduler", "scheduler-2"} - {runner}).pop()
    )
    done_before = sum(1 for row in _ledger(root) if row[0] == "end")
    assert done_before < BATCHES, "the job must still be running when the scheduler dies"

    with stack.expect_restart(target):
        os.kill(stack.processes[target].pid, signal.SIGKILL)
    killed_at = time.time()  # the supervisor has killed what the dead scheduler left running

    run = api.wait_run(DAG_ID, run_id, timeout=RUN_TIMEOUT + Progress(api).orphan_grace)
    task = api.task_instance(DAG_ID, run_id, "score")
    assert run["state"] == "success", api.task_log(DAG_ID, run_id, "score")

    out = Path(api.xcom(DAG_ID, run_id, "score")["append_row_file"])
    assert out.read_text().splitlines() == expected, "every input line exactly once, in input order"
    summary: dict[str, Any] = api.xcom(DAG_ID, run_id, "score")
    assert summary["status"] == "succeeded"
    assert summary["succeeded_items"] == FILES and summary["total_mini_batches"] == BATCHES

    ledger = _ledger(root)
    tries = api.task_tries(DAG_ID, run_id, "score")
    if target == runner:
        # The first try died with its scheduler (its calls in flight never ended); the second try
        # started after the kill, with processes of its own, and ran only what was not reused.
        assert task["try_number"] == 2, tries
        first = [row for row in ledger if row[2] < killed_at]
        second = [row for row in ledger if row[2] >= killed_at]
        assert second, "the second try ran the rest of the job"
        assert not {row[1] for row in first} & {row[1] for row in second}, (
            "a process of the first try went on after the kill"
        )
        assert _max_concurrent(second) <= PROCESSES, (
            "the second try ran more calls at once than it has processes"
        )
        calls = [names for event, _, _, names in second if event == "begin"]
        assert summary["reused_mini_batches"] >= 1, "the first try's finished mini-batches were reused"
        assert len(calls) == len(set(calls)) == BATCHES - summary["reused_mini_batches"], (
            "the second try ran exactly the mini-batches it did not reuse, each once"
        )
    else:
        # Nothing disturbed the job: one try, one job, every call ended, never more than its processes.
        assert task["try_number"] == 1, tries
        assert len(tries) == 1
        assert _max_concurrent(ledger) <= PROCESSES, "two jobs ran at the same time"
        calls = [names for event, _, _, names in ledger if event == "begin"]
        assert len(calls) == len(set(calls)) == BATCHES, "one job: each mini-batch ran once"
        assert summary["reused_mini_batches"] == 0
    assert [t["try_number"] for t in tries][-1] == task["try_number"]

    # The restarted scheduler rejoined: a scheduler job started after the kill heartbeats.
    def rejoined() -> bool:
        jobs = api.get("/jobs", job_type="SchedulerJob", is_alive="true", limit=100)["jobs"]
        return any(_epoch(job["start_date"]) > killed_at for job in jobs)

    api.wait_for(rejoined, "a live scheduler job started after the kill", timeout=120)


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()
