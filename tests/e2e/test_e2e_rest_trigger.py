"""REST triggers against the running stack: conf overrides reach the operator; bad conf is refused or fails.

Runs `digits_file_scoring` (1797 digit PNGs) with a `conf` that overrides two trigger-form Params and
checks the task log, the XCom summary and the output file; then shows both kinds of bad `conf`:
one the Param schema refuses (HTTP 400, no run) and one only the operator's validation catches
(the run is created and its task fails, with the message in the task log).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from e2e_rest import Api
from sklearn.datasets import load_digits

pytestmark = pytest.mark.usefixtures("stack_logs_on_failure")

DIGITS = 1797
LINE = re.compile(r"^digit_(\d{4})\.png (\d)$")


def check_digits_output(path: Path) -> None:
    """One line per image, in input order, with a prediction that is right for most images."""
    lines = path.read_text().splitlines()
    assert len(lines) == DIGITS
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), [line for line, m in zip(lines, parsed, strict=True) if not m][:5]
    indices = [int(m.group(1)) for m in parsed if m]
    assert indices == list(range(DIGITS)), "every image exactly once, in input order"
    target = load_digits().target
    correct = sum(int(m.group(2)) == int(target[int(m.group(1))]) for m in parsed if m)
    assert correct / DIGITS > 0.9, f"accuracy {correct / DIGITS:.3f}"


def test_rest_trigger_with_conf_overrides(api: Api) -> None:
    conf = {"mini_batch_size": 25, "process_count_per_node": 1}
    response = api.trigger("digits_file_scoring", conf)
    assert response.status_code == 200, response.text
    run_id = response.json()["dag_run_id"]

    run = api.wait_run("digits_file_scoring", run_id)
    assert run["state"] == "success", api.task_log("digits_file_scoring", run_id, "score_digits")
    assert run["conf"] == conf
    assert run["triggered_by"] == "rest_api"

    log = api.task_log("digits_file_scoring", run_id, "score_digits")
    assert "mini_batch_size=25 files" in log
    assert "process_count_per_node=1" in log
    assert "Processed 72 of 72 mini-batches (100%)" in log, "progress lines in the task log"
    assert "Job succeeded: 1797 of 1797 items succeeded, 0 failed, in 72 mini-batches" in log

    summary = api.xcom("digits_file_scoring", run_id, "score_digits")
    assert summary["status"] == "succeeded"
    assert summary["total_items"] == summary["succeeded_items"] == DIGITS
    assert summary["failed_items"] == 0
    assert summary["total_mini_batches"] == math.ceil(DIGITS / 25) == 72
    check_digits_output(Path(summary["append_row_file"]))


@pytest.mark.parametrize(
    ("conf", "detail"),
    [
        ({"mini_batch_size": 0}, "0 is less than the minimum of 1"),
        ({"process_count_per_node": "two"}, "'two' is not of type 'integer'"),
        ({"error_threshold": -5}, "-5 is less than the minimum of -1"),
    ],
)
def test_conf_that_violates_a_param_schema_is_refused(api: Api, conf: dict[str, object], detail: str) -> None:
    before = {run["dag_run_id"] for run in api.runs("digits_file_scoring")}
    response = api.trigger("digits_file_scoring", conf)
    assert response.status_code == 400, response.text
    message = response.json()["detail"]
    assert f"Invalid input for param {next(iter(conf))}" in message
    assert detail in message
    assert {run["dag_run_id"] for run in api.runs("digits_file_scoring")} == before, "no run was created"


def test_conf_that_fails_the_operator_validation_fails_the_task(api: Api) -> None:
    # "0KB" matches the Param's pattern (digits and a unit) but a mini-batch needs at least 1 byte.
    response = api.trigger("iris_tabular_scoring", {"mini_batch_size": "0KB"})
    assert response.status_code == 200, response.text
    run_id = response.json()["dag_run_id"]

    run = api.wait_run("iris_tabular_scoring", run_id)
    assert run["state"] == "failed"
    task = api.task_instance("iris_tabular_scoring", run_id, "score_iris")
    assert task["state"] == "failed"
    assert task["try_number"] == 1, "a bad setting fails without retries"
    log = api.task_log("iris_tabular_scoring", run_id, "score_iris")
    assert "Invalid ParallelRunOperator setting: mini_batch_size='0KB' is not allowed" in log
    assert "at least 1" in log
