"""A killed scheduler is restarted by the stack's supervisor and the next run still succeeds.

On SQLite the scheduler can die of a lock race under load; `make airflow` and the e2e fixture restart
a component that exits on its own (as systemd or compose's `restart:` would), and say so.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from e2e_rest import Api, Stack

pytestmark = pytest.mark.usefixtures("stack_logs_on_failure")


def test_killed_scheduler_is_restarted_and_runs_continue(stack: Stack, api: Api) -> None:
    before = len(stack.restarts)
    old = stack.processes["scheduler"]
    os.kill(old.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while stack.processes["scheduler"] is old:
        assert time.monotonic() < deadline, "the scheduler was not restarted within 30 s"
        time.sleep(0.5)
    assert len(stack.restarts) == before + 1
    assert stack.restarts[-1].startswith("scheduler exited with -9 and was restarted")

    response = api.trigger("digits_file_scoring", {"mini_batch_size": 300})
    assert response.status_code == 200, response.text
    run_id = response.json()["dag_run_id"]
    run = api.wait_run("digits_file_scoring", run_id)
    assert run["state"] == "success", api.task_log("digits_file_scoring", run_id, "score_digits")
    summary = api.xcom("digits_file_scoring", run_id, "score_digits")
    assert summary["succeeded_items"] == 1797 and summary["total_mini_batches"] == 6
