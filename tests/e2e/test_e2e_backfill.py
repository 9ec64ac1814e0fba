"""Backfills of `daily_backfill_scoring`: through the REST API (what the UI's Backfill form sends) and
through `airflow backfill create`.

REST: a backfill over 2 dates gives one successful run per date, each with its own dated output; a
second one with `reprocess_behavior: completed` re-runs the same dates: every mini-batch comes from
the reuse cache and the outputs are byte-identical. The CLI creates a backfill over 2 other dates.
A backfill's runs exist as soon as it is created (same transaction): a backfill without them fails
at once instead of waiting for the scheduler to mark it complete with nothing run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from e2e_rest import Api, Stack

pytestmark = pytest.mark.usefixtures("stack_logs_on_failure")

DAG_ID = "daily_backfill_scoring"
TASK_ID = "score_daily_partition"
DATES = ("2024-01-01", "2024-01-02")
CLI_DATES = ("2024-02-01", "2024-02-02")
IMAGES_PER_DAY = 60
BACKFILL_TIMEOUT = 300.0


def dated_runs(api: Api, dates: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    runs = api.runs(
        DAG_ID, logical_date_gte=f"{dates[0]}T00:00:00Z", logical_date_lte=f"{dates[-1]}T00:00:00Z"
    )
    return {run["logical_date"][:10]: run for run in runs}


def rest_backfill(api: Api, dates: tuple[str, ...], reprocess: str = "none") -> dict[str, Any]:
    """POST /api/v2/backfills, as the UI's Backfill form does; returns the backfill."""
    body = {
        "dag_id": DAG_ID,
        "from_date": f"{dates[0]}T00:00:00Z",
        "to_date": f"{dates[-1]}T00:00:00Z",
        "reprocess_behavior": reprocess,
        "max_active_runs": len(dates),
    }
    return dict(api.post("/backfills", body))


def wait_backfill(api: Api, backfill: dict[str, Any], dates: tuple[str, ...]) -> dict[str, Any]:
    """Checks that the backfill's runs exist and are queued (or already running), then waits until the
    scheduler marks it completed (it checks every 30 s); returns the completed backfill."""
    runs = dated_runs(api, dates)
    assert sorted(runs) == list(dates), f"backfill {backfill['id']} has runs for {sorted(runs)} only"
    for day, run in runs.items():
        assert run["run_type"] == "backfill", run
        assert run["state"] in ("queued", "running"), (
            f"{day}: not (re)queued by backfill {backfill['id']}: {run}"
        )

    def completed() -> dict[str, Any] | None:
        doc = dict(api.get(f"/backfills/{backfill['id']}"))
        return doc if doc["completed_at"] else None

    return api.wait_for(
        completed, f"backfill {backfill['id']} completed", timeout=BACKFILL_TIMEOUT, interval=2.0
    )


def check_dated_outputs(api: Api, demo_root: Path, dates: tuple[str, ...]) -> dict[str, bytes]:
    """Each date's run succeeded and scored that date's images, in order; returns the outputs."""
    outputs: dict[str, bytes] = {}
    for day, run in dated_runs(api, dates).items():
        assert run["state"] == "success", api.task_log(DAG_ID, run["dag_run_id"], TASK_ID)
        summary = api.xcom(DAG_ID, run["dag_run_id"], TASK_ID)
        assert summary["status"] == "succeeded"
        assert summary["total_items"] == summary["succeeded_items"] == IMAGES_PER_DAY
        output = demo_root / "output" / DAG_ID / day / "digits_predictions.txt"
        assert summary["append_row_file"] == str(output)
        outputs[day] = output.read_bytes()
        staged = sorted(p.name for p in (demo_root / "data" / "daily" / day).glob("*.png"))
        assert [line.split()[0] for line in outputs[day].decode().splitlines()] == staged
    assert sorted(outputs) == list(dates)
    assert len(set(outputs.values())) == len(dates), "each date scored its own images"
    return outputs


def test_rest_backfill_then_reprocess_reuses_everything(api: Api, demo_root: Path) -> None:
    first = wait_backfill(api, rest_backfill(api, DATES), DATES)
    assert first["reprocess_behavior"] == "none"
    outputs = check_dated_outputs(api, demo_root, DATES)

    second = rest_backfill(api, DATES, reprocess="completed")
    assert second["id"] != first["id"]
    assert second["reprocess_behavior"] == "completed"
    second = wait_backfill(api, second, DATES)
    rerun = dated_runs(api, DATES)
    for day, run in rerun.items():
        assert run["state"] == "success", api.task_log(DAG_ID, run["dag_run_id"], TASK_ID)
        assert run["start_date"] > second["created_at"], "the date ran again"
        task = api.task_instance(DAG_ID, run["dag_run_id"], TASK_ID)
        assert task["try_number"] == 2
        summary = api.xcom(DAG_ID, run["dag_run_id"], TASK_ID)
        assert summary["reused_mini_batches"] == summary["total_mini_batches"] > 0
        output = demo_root / "output" / DAG_ID / day / "digits_predictions.txt"
        assert output.read_bytes() == outputs[day], f"{day}: byte-identical output"


def test_cli_backfill_runs_each_date(stack: Stack, api: Api, demo_root: Path) -> None:
    before = {b["id"] for b in api.get("/backfills", dag_id=DAG_ID, limit=100)["backfills"]}
    stack.airflow(
        "backfill", "create", "--dag-id", DAG_ID, "--from-date", CLI_DATES[0], "--to-date", CLI_DATES[-1]
    )
    created = [
        b for b in api.get("/backfills", dag_id=DAG_ID, limit=100)["backfills"] if b["id"] not in before
    ]
    assert len(created) == 1, created
    backfill = wait_backfill(api, created[0], CLI_DATES)
    assert backfill["from_date"][:10] == CLI_DATES[0] and backfill["to_date"][:10] == CLI_DATES[-1]
    check_dated_outputs(api, demo_root, CLI_DATES)
