"""weekly_digit_scores: a weekly summary that waits until all seven daily partitions of the week are scored.

What it does
    Scheduled with `PartitionedAssetTimetable` on `scored_digits_daily` (the asset
    `partitioned_daily_scoring` announces each scored day on). A `RollupMapper` maps each daily key
    (`2024-01-03`) to its week (`StartOfWeekMapper`: `2024-01-01 (W01)`), and `WeekWindow` with
    `WaitForAll()` holds the week's run until every day of it has an event: the run's partition key
    is the week, and its triggering events are the seven days. The task reads each day's extra (items
    scored, mini-batches reused, the day's output folder) and writes
    `<demo root>/output/weekly_digit_scores/<week start>.json` with per-day and total counts.

    `MinimumCount(n)` instead of `WaitForAll()` fires once n days have arrived.

Data
    Reads only what the daily events carry, and the daily output files they name.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import (
    PartitionedAssetTimetable,
    RollupMapper,
    StartOfWeekMapper,
    WaitForAll,
    WeekWindow,
    dag,
    task,
)
from partition_assets import SCORED_DIGITS_DAILY

HERE = Path(__file__).resolve().parent
DEMO_ROOT = os.environ.get("AIRFLOW_PARALLEL_RUN_DEMO_ROOT", str(HERE.parent / "demo_output"))
OUTPUT = f"{DEMO_ROOT}/output/weekly_digit_scores"


@dag(
    dag_id="weekly_digit_scores",
    schedule=PartitionedAssetTimetable(
        assets=SCORED_DIGITS_DAILY,
        default_partition_mapper=RollupMapper(
            upstream_mapper=StartOfWeekMapper(input_format="%Y-%m-%d"),
            window=WeekWindow(),
            wait_policy=WaitForAll(),
        ),
    ),
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    tags=["parallel-run", "example", "partitions"],
    doc_md=__doc__,
)
def weekly_digit_scores() -> None:
    @task(inlets=[SCORED_DIGITS_DAILY])
    def summarise_week(**context: Any) -> dict[str, Any]:
        """One JSON document per week: each day's counts, read from its asset event, and the totals."""
        import json

        from airflow_parallel_run.partitions import scored_partitions

        days = scored_partitions(context, SCORED_DIGITS_DAILY)
        week = context["partition_date"] or pendulum.parse(min(days))
        summary = {
            "week": context["partition_key"],
            "days": {
                day: {
                    "succeeded_items": extra["succeeded_items"],
                    "failed_items": extra["failed_items"],
                    "reused_mini_batches": extra["reused_mini_batches"],
                    "output": extra["append_row_file"],
                }
                for day, extra in sorted(days.items())
            },
            "succeeded_items": sum(extra["succeeded_items"] for extra in days.values()),
            "failed_items": sum(extra["failed_items"] for extra in days.values()),
        }
        target = Path(OUTPUT) / f"{week:%Y-%m-%d}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(summary, indent=2))
        return summary

    summarise_week()


weekly_digit_scores()
