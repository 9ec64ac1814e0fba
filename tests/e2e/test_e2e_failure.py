"""A DAG whose entry script raises in every run(): the task fails and its log explains why."""

from __future__ import annotations

from pathlib import Path

import pytest
from e2e_rest import Api

pytestmark = pytest.mark.usefixtures("stack_logs_on_failure")

DAG_ID = "apr_e2e_always_failing"


def test_failing_entry_script_fails_the_task_with_the_error_summary(api: Api, demo_root: Path) -> None:
    response = api.trigger(DAG_ID)
    assert response.status_code == 200, response.text
    run_id = response.json()["dag_run_id"]

    run = api.wait_run(DAG_ID, run_id)
    assert run["state"] == "failed"
    assert api.task_instance(DAG_ID, run_id, "write_inputs")["state"] == "success"
    assert api.task_instance(DAG_ID, run_id, "score")["state"] == "failed"

    log = api.task_log(DAG_ID, run_id, "score")
    assert "error_threshold exceeded" in log
    assert "> error_threshold 5" in log
    error_file = demo_root / "always_failing" / "out" / "logs" / "user" / "error.txt"
    assert f"First lines of {error_file}" in log
    head = [line for line in error_file.read_text().splitlines() if line.strip()][:3]
    assert head, "error.txt has a summary line"
    for line in head:
        assert line in log, f"error.txt line missing from the task log: {line!r}"
    assert "model server unreachable" in log

    summary = api.xcom(DAG_ID, run_id, "score", key="summary")
    assert summary["status"] == "failed"
    assert "error_threshold exceeded" in summary["message"]
