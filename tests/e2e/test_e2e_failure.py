"""A job whose entry script raises on every file: the task fails and its log explains why."""

from __future__ import annotations

from pathlib import Path

import pytest
from e2e_rest import Api

pytestmark = pytest.mark.usefixtures("stack_logs_on_failure")

DAG_ID = "apr_test_failing_scoring"
# tests/dags/apr_test_failing_scoring.py at e2e size: 20 files, all bad, 2 per mini-batch, 2 tries.
EVERY_FILE_FAILS = {
    "items": 20,
    "bad_every": 1,
    "mini_batch_size": 2,
    "run_max_try": 2,
    "error_threshold": 5,
    "process_count_per_node": 1,
}


def test_failing_entry_script_fails_the_task_with_the_error_summary(api: Api, demo_root: Path) -> None:
    response = api.trigger(DAG_ID, conf=EVERY_FILE_FAILS)
    assert response.status_code == 200, response.text
    run_id = response.json()["dag_run_id"]

    run = api.wait_run(DAG_ID, run_id)
    assert run["state"] == "failed"
    assert api.task_instance(DAG_ID, run_id, "write_inputs")["state"] == "success"
    assert api.task_instance(DAG_ID, run_id, "score")["state"] == "failed"

    log = api.task_log(DAG_ID, run_id, "score")
    assert "error_threshold exceeded" in log
    assert "> error_threshold 5" in log
    error_file = demo_root / "failing" / run_id / "out" / "logs" / "user" / "error.txt"
    assert f"First lines of {error_file}" in log
    head = [line for line in error_file.read_text().splitlines() if line.strip()][:3]
    assert head, "error.txt has a summary line"
    for line in head:
        assert line in log, f"error.txt line missing from the task log: {line!r}"
    assert "RUN_EXCEPTION: ValueError: cannot score 'bad'" in log

    summary = api.xcom(DAG_ID, run_id, "score", key="summary")
    assert summary["status"] == "failed"
    assert "error_threshold exceeded" in summary["message"]
