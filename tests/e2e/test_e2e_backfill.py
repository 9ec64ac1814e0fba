"""`airflow backfill create` over 3 dates, then again with `--reprocess-behavior completed`.

The first backfill gives one successful run per date, each with its own dated output. The second one
re-runs the same dates: every mini-batch comes from the reuse cache and the outputs are byte-identical.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from e2e_rest import Api, Stack

pytestmark = pytest.mark.usefixtures("stack_logs_on_failure")

DAG_ID = "daily_backfill_scoring"
TASK_ID = "score_daily_partition"
DATES = ("2024-01-01", "2024-01-02", "2024-01-03")
IMAGES_PER_DAY = 60
BACKFILL_TIMEOUT = 240.0


def _latest_backfill_id(api: Api) -> int:
    backfills = api.get("/backfills", dag_id=DAG_ID, limit=100)["backfills"]
    return max((int(b["id"]) for b in backfills), default=0)


def backfill(stack: Stack, api: Api, *extra: str) -> dict[str, Any]:
    """Creates a backfill over DATES with the CLI and waits until the scheduler marks it completed.

    SQLite can answer "database is locked" to the CLI while the stack writes; the command is tried
    again only when no backfill was created (it may also fail after its transaction committed).
    """
    before = _latest_backfill_id(api)
    args = ("backfill", "create", "--dag-id", DAG_ID, "--from-date", DATES[0], "--to-date", DATES[-1], *extra)
    for attempt in range(4):
        result = stack.airflow(*args, check=False)
        if result.returncode == 0 or _latest_backfill_id(api) > before:
            break
        output = result.stdout[-3000:] + result.stderr[-3000:]
        assert "database is locked" in output and attempt < 3, output
        time.sleep(2.0)
    backfill_id = _latest_backfill_id(api)
    assert backfill_id > before
    deadline = time.monotonic() + BACKFILL_TIMEOUT
    while True:  # the scheduler checks backfills for completion every 30 s
        doc = api.get(f"/backfills/{backfill_id}")
        if doc["completed_at"]:
            return dict(doc)
        assert time.monotonic() < deadline, f"backfill {backfill_id} not completed: {doc}"
        time.sleep(2.0)


def dated_runs(api: Api) -> dict[str, dict[str, Any]]:
    runs = api.runs(
        DAG_ID, logical_date_gte=f"{DATES[0]}T00:00:00Z", logical_date_lte=f"{DATES[-1]}T00:00:00Z"
    )
    return {run["logical_date"][:10]: run for run in runs}


def test_backfill_then_reprocess_reuses_everything(stack: Stack, api: Api, demo_root: Path) -> None:
    first = backfill(stack, api)
    runs = dated_runs(api)
    assert sorted(runs) == list(DATES)
    outputs: dict[str, bytes] = {}
    for day, run in runs.items():
        assert run["run_type"] == "backfill"
        assert run["state"] == "success", api.task_log(DAG_ID, run["dag_run_id"], TASK_ID)
        summary = api.xcom(DAG_ID, run["dag_run_id"], TASK_ID)
        assert summary["status"] == "succeeded"
        assert summary["total_items"] == summary["succeeded_items"] == IMAGES_PER_DAY
        output = demo_root / "output" / DAG_ID / day / "digits_predictions.txt"
        assert summary["append_row_file"] == str(output)
        outputs[day] = output.read_bytes()
        staged = sorted(p.name for p in (demo_root / "data" / "daily" / day).glob("*.png"))
        assert [line.split()[0] for line in outputs[day].decode().splitlines()] == staged
    assert len(set(outputs.values())) == len(DATES), "each date scored its own images"

    second = backfill(stack, api, "--reprocess-behavior", "completed")
    assert second["id"] != first["id"]
    assert second["reprocess_behavior"] == "completed"
    rerun = dated_runs(api)
    assert sorted(rerun) == list(DATES)
    for day, run in rerun.items():
        assert run["state"] == "success", api.task_log(DAG_ID, run["dag_run_id"], TASK_ID)
        assert run["start_date"] > second["created_at"], "the date ran again"
        task = api.task_instance(DAG_ID, run["dag_run_id"], TASK_ID)
        assert task["try_number"] == 2
        summary = api.xcom(DAG_ID, run["dag_run_id"], TASK_ID)
        assert summary["reused_mini_batches"] == summary["total_mini_batches"] > 0
        output = demo_root / "output" / DAG_ID / day / "digits_predictions.txt"
        assert output.read_bytes() == outputs[day], f"{day}: byte-identical output"
