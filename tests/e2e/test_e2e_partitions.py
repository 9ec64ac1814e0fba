"""Airflow-native partitions on the real stack (dags/partition_assets.py and the DAGs that use it).

- Arrival: three partitions land in `<demo root>/data/arrivals/`; the `AssetWatcher` fires one event per
  partition, `announce_digit_arrivals` re-announces them with partition keys, and `arrival_driven_scoring`
  runs exactly once per partition with that `partition_key`, scoring only its partition; the consumer
  `scored_partition_report` runs once per scored partition and reads its event's extra. The triggerer
  is SIGKILLed between partitions 2 and 3, and partition 3 lands while it is down: still exactly three
  scoring runs.
- Backfill: `partitioned_daily_scoring` over five days through the REST API, then again after one
  image of one day changed: only that day's changed mini-batch runs (executed = total - reused over the
  five summaries), the other days' outputs are byte-identical. A CLI backfill of the week's last two
  days completes the week, and `weekly_digit_scores` (RollupMapper, WaitForAll) runs once for it.
- Lineage: OpenLineage's file transport (tests/e2e/conftest.py) holds the COMPLETE event of a real run
  of `apr_e2e_lineage`, naming its input and output datasets and the job's counts.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from e2e_rest import Api, Stack

pytestmark = pytest.mark.usefixtures("stack_logs_on_failure")

ARRIVAL_DAGS = ("announce_digit_arrivals", "arrival_driven_scoring", "scored_partition_report")
BACKFILL_DAGS = ("partitioned_daily_scoring", "weekly_digit_scores")
IMAGES = {"batch-a": 6, "batch-b": 4, "batch-c": 5}
WEEK = [f"2024-03-{day:02d}" for day in range(4, 11)]  # Monday 4 to Sunday 10 March 2024: ISO week 10
RUN_WAIT = 240.0
WATCHED_ASSET = "digit_arrivals"
# Nothing more may start for this long after the last event that could start something: several polls
# of the arrival watcher (every 2 s in the e2e stack) and many scheduler loops.
QUIET_S = 3 * 2 + 10


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def _digits(demo_root: Path) -> list[Path]:
    return sorted((demo_root / "data" / "digits").glob("*.png"))


def land(demo_root: Path, key: str, images: list[Path]) -> list[str]:
    """What an upstream writer does: the images first, the `_SUCCESS` marker last."""
    folder = demo_root / "data" / "arrivals" / key
    folder.mkdir(parents=True)
    for image in images:
        shutil.copy2(image, folder / image.name)
    (folder / "_SUCCESS").touch()
    return sorted(image.name for image in images)


def partition_runs(api: Api, dag_id: str) -> list[dict[str, Any]]:
    return api.runs(dag_id)


def watcher_events(api: Api) -> list[dict[str, Any]]:
    """The events the arrival watcher put on `digit_arrivals` (one per landed partition)."""
    (asset,) = [
        a for a in api.get("/assets", name_pattern=WATCHED_ASSET)["assets"] if a["name"] == WATCHED_ASSET
    ]
    return list(api.get("/assets/events", asset_id=asset["id"], limit=100)["asset_events"])


def wait_partition_runs(
    api: Api, dag_id: str, keys: set[str], timeout: float = RUN_WAIT
) -> dict[str, dict[str, Any]]:
    """Waits until `dag_id` has a finished run for every key; returns the runs by partition key."""

    def finished() -> dict[str, dict[str, Any]] | None:
        runs = {r["partition_key"]: r for r in partition_runs(api, dag_id) if r["partition_key"] in keys}
        done = keys <= set(runs) and all(r["state"] in ("success", "failed") for r in runs.values())
        return runs if done else None

    return api.wait_for(
        finished, f"{dag_id}: finished runs for {sorted(keys)}", timeout=timeout, interval=2.0
    )


def _told_to_the_watcher(stack: Stack) -> set[str]:
    """The keys the router recorded as announced beside the watcher's state (``...announced.json``)."""
    cache_root = stack.cache_root or stack.home / "parallel_run_cache"
    told: set[str] = set()
    for path in (Path(cache_root) / "watchers").glob("*.announced.json"):
        told |= set(json.loads(path.read_text())["announced"])
    return told


def test_each_arriving_partition_is_scored_once_across_a_triggerer_restart(
    stack: Stack, api: Api, demo_root: Path
) -> None:
    stack.wait_for_dags(ARRIVAL_DAGS)
    digits = _digits(demo_root)
    keys = list(IMAGES)
    landed: dict[str, list[str]] = {}
    start = 0
    for key in keys[:2]:
        landed[key] = land(demo_root, key, digits[start : start + IMAGES[key]])
        start += IMAGES[key]
    wait_partition_runs(api, "arrival_driven_scoring", set(keys[:2]))
    # The router told the watcher the keys it announced once Airflow stored them (its success callback),
    # so however late the restart below comes after `refire_after`, the watcher cannot fire them again.
    assert set(keys[:2]) <= _told_to_the_watcher(stack), _told_to_the_watcher(stack)

    with stack.expect_restart("triggerer"):
        os.kill(stack.processes["triggerer"].pid, signal.SIGKILL)
        landed[keys[2]] = land(
            demo_root, keys[2], digits[start : start + IMAGES[keys[2]]]
        )  # while it is down
    last_landed = time.monotonic()
    scoring = wait_partition_runs(api, "arrival_driven_scoring", set(keys))
    reports = wait_partition_runs(api, "scored_partition_report", set(keys))
    # Several watcher polls and scheduler loops after the last partition landed (the waits above mostly
    # took longer than that): the restarted watcher fired once for the partition that landed while it was
    # down, and never again for the two it had announced. A repeated event is in the asset's events at
    # once, before any run it would start.
    time.sleep(max(0.0, last_landed + QUIET_S - time.monotonic()))
    assert len(watcher_events(api)) == len(keys), watcher_events(api)

    runs = partition_runs(api, "arrival_driven_scoring")
    assert sorted(r["partition_key"] for r in runs) == sorted(keys), "exactly one scoring run per partition"
    for key, run in scoring.items():
        assert run["state"] == "success", api.task_log(
            "arrival_driven_scoring", run["dag_run_id"], "score_arrival"
        )
        summary = api.xcom("arrival_driven_scoring", run["dag_run_id"], "score_arrival")
        assert (summary["partition_key"], summary["succeeded_items"]) == (key, IMAGES[key])
        lines = Path(summary["append_row_file"]).read_text().splitlines()
        assert [line.split()[0] for line in lines] == landed[key], "only its own partition's items"
    assert sorted(r["partition_key"] for r in partition_runs(api, "scored_partition_report")) == sorted(keys)
    for key, run in reports.items():
        assert run["state"] == "success", api.task_log("scored_partition_report", run["dag_run_id"], "report")
        report = api.xcom("scored_partition_report", run["dag_run_id"], "report")
        assert (report["partition_key"], report["succeeded_items"]) == (key, IMAGES[key])
        assert sum(report["digits"].values()) == IMAGES[key]
        assert (
            report["cache_key"]
            == api.xcom("arrival_driven_scoring", scoring[key]["dag_run_id"], "score_arrival")["cache_key"]
        )


def _backfill(api: Api, first: str, last: str, reprocess: str = "none") -> dict[str, Any]:
    body = {
        "dag_id": "partitioned_daily_scoring",
        "from_date": f"{first}T00:00:00Z",
        "to_date": f"{last}T00:00:00Z",
        "reprocess_behavior": reprocess,
        "max_active_runs": 5,
    }
    return dict(api.post("/backfills", body))


def _completed(api: Api, backfill: dict[str, Any]) -> None:
    """Waits until the scheduler marks the backfill completed (it checks every 30 s): a DAG takes one
    running backfill at a time."""

    def completed() -> bool:
        return bool(api.get(f"/backfills/{backfill['id']}")["completed_at"])

    api.wait_for(completed, f"backfill {backfill['id']} completed", timeout=RUN_WAIT, interval=2.0)


def _scored(api: Api, days: list[str], after: str | None = None) -> dict[str, dict[str, Any]]:
    """Waits for a successful run of each day (started after `after`); returns the summaries by day."""

    def finished() -> dict[str, dict[str, Any]] | None:
        runs = {
            r["partition_key"]: r
            for r in partition_runs(api, "partitioned_daily_scoring")
            if r["partition_key"] in days and (after is None or (r["start_date"] or "") > after)
        }
        if set(runs) != set(days) or any(r["state"] not in ("success", "failed") for r in runs.values()):
            return None
        return runs

    runs = api.wait_for(
        finished, f"partitioned_daily_scoring: runs of {days}", timeout=RUN_WAIT, interval=2.0
    )
    summaries = {}
    for day, run in runs.items():
        assert run["state"] == "success", api.task_log(
            "partitioned_daily_scoring", run["dag_run_id"], "score_partition"
        )
        assert run["run_type"] == "backfill"
        summaries[day] = api.xcom("partitioned_daily_scoring", run["dag_run_id"], "score_partition")
        assert summaries[day]["partition_key"] == day
    return summaries


def test_partition_backfill_reruns_only_the_changed_partitions_mini_batches(
    stack: Stack, api: Api, demo_root: Path
) -> None:
    stack.wait_for_dags(BACKFILL_DAGS)
    days = WEEK[:5]
    backfill = _backfill(api, days[0], days[-1])
    first = _scored(api, days)
    outputs = {day: Path(s["append_row_file"]).read_bytes() for day, s in first.items()}
    for day, summary in first.items():
        staged = sorted(p.name for p in (demo_root / "data" / "partitions" / day).glob("*.png"))
        assert [line.split()[0] for line in outputs[day].decode().splitlines()] == staged, day
        assert summary["reused_mini_batches"] == 0 and summary["total_mini_batches"] == 4
    assert len(set(outputs.values())) == 5, "each day scored its own images"

    changed = sorted((demo_root / "data" / "partitions" / days[2]).glob("*.png"))[0]
    others = [p for p in _digits(demo_root) if p.read_bytes() != changed.read_bytes()]
    changed.write_bytes(others[0].read_bytes())  # one image of one day is replaced
    _completed(api, backfill)
    second = _backfill(api, days[0], days[-1], reprocess="completed")
    rerun = _scored(api, days, after=second["created_at"])
    _completed(api, second)  # the next test's CLI backfill needs the DAG free
    executed = {day: s["total_mini_batches"] - s["reused_mini_batches"] for day, s in rerun.items()}
    assert executed == {day: (1 if day == days[2] else 0) for day in days}, executed
    for day in days:
        if day != days[2]:
            assert Path(rerun[day]["append_row_file"]).read_bytes() == outputs[day], f"{day}: byte-identical"


def test_cli_backfill_completes_the_week_and_the_rollup_runs_once(stack: Stack, api: Api) -> None:
    stack.wait_for_dags(BACKFILL_DAGS)
    weekend = WEEK[5:]
    stack.airflow(
        "backfill",
        "create",
        "--dag-id",
        "partitioned_daily_scoring",
        "--from-date",
        weekend[0],
        "--to-date",
        weekend[-1],
    )
    _scored(api, weekend)
    week = "2024-03-04 (W10)"
    (run,) = wait_partition_runs(api, "weekly_digit_scores", {week}).values()
    assert run["state"] == "success", api.task_log("weekly_digit_scores", run["dag_run_id"], "summarise_week")
    summary = api.xcom("weekly_digit_scores", run["dag_run_id"], "summarise_week")
    assert sorted(summary["days"]) == WEEK
    assert summary["succeeded_items"] == 7 * 20
    # many scheduler loops after the rollup's run was queued (it ran meanwhile), still one run for the week
    time.sleep(max(0.0, _epoch(run["queued_at"]) + QUIET_S - time.time()))
    assert [r["partition_key"] for r in partition_runs(api, "weekly_digit_scores")] == [week], "once per week"


def test_openlineage_names_the_datasets_of_a_real_run(stack: Stack, api: Api, demo_root: Path) -> None:
    stack.wait_for_dags(("apr_e2e_lineage",))
    response = api.trigger("apr_e2e_lineage")
    assert response.status_code == 200, response.text
    run = api.wait_run("apr_e2e_lineage", response.json()["dag_run_id"])
    assert run["state"] == "success", api.task_log("apr_e2e_lineage", run["dag_run_id"], "score")
    lineage = Path(json.loads(stack.env["AIRFLOW__OPENLINEAGE__TRANSPORT"])["log_file_path"])

    def complete() -> dict[str, Any] | None:
        if not lineage.exists():
            return None
        for line in lineage.read_text().splitlines():
            event = json.loads(line)
            if event["eventType"] == "COMPLETE" and event["job"]["name"] == "apr_e2e_lineage.score":
                return dict(event)
        return None

    event = api.wait_for(complete, "the task's OpenLineage COMPLETE event", timeout=60)
    inputs = {(d["namespace"], d["name"]) for d in event["inputs"]}
    assert inputs == {
        ("file", str(demo_root / "data" / "digits")),
        ("file", str(demo_root / "models" / "digits.pkl")),
    }
    ((output),) = event["outputs"]
    assert (output["namespace"], output["name"]) == ("file", str(demo_root / "output" / "apr_e2e_lineage"))
    assert output["outputFacets"]["outputStatistics"]["rowCount"] == 10
    facet = event["run"]["facets"]["parallelRun"]
    assert (facet["status"], facet["succeededItems"], facet["totalMiniBatches"]) == ("succeeded", 10, 3)
    # Selective lineage: no other DAG's task reports a completed run. (Tasks stopped from outside their
    # task runner - marked failed or cleared while deferred - are reported by Airflow's side of the
    # OpenLineage listener, which does not consult selective enabling; those FAIL events are not ours.)
    events = [json.loads(line) for line in lineage.read_text().splitlines()]
    completed = {e["job"]["name"].split(".")[0] for e in events if e["eventType"] == "COMPLETE"}
    assert completed == {"apr_e2e_lineage"}, "selective lineage: no other DAG emits"
