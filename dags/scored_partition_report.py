"""scored_partition_report: runs once per scored partition and reads what the scoring job announced.

What it does
    Scheduled with `PartitionedAssetTimetable` on `scored_digit_arrivals` (the asset
    `arrival_driven_scoring` announces each scored partition on): one run per partition key, the key as
    the run's `partition_key`. The task reads its partition's event extra (items succeeded and failed,
    mini-batches reused, cache key, the partition's output file) with
    `airflow_parallel_run.partitions.scored_partitions`, checks the output file has one line per
    succeeded item, and writes `<demo root>/output/scored_partition_report/<partition_key>.json`:
    how many images of each digit the partition held.

    Any partitioned consumer works the same way: a `RollupMapper` gathers several partitions into one
    run (see `weekly_digit_scores`), a `ProductMapper` splits composite keys (`region|day`).

Data
    Reads only the scored output the event names.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import PartitionedAssetTimetable, dag, task
from partition_assets import SCORED_DIGIT_ARRIVALS

HERE = Path(__file__).resolve().parent
DEMO_ROOT = os.environ.get("AIRFLOW_PARALLEL_RUN_DEMO_ROOT", str(HERE.parent / "demo_output"))
OUTPUT = f"{DEMO_ROOT}/output/scored_partition_report"


@dag(
    dag_id="scored_partition_report",
    schedule=PartitionedAssetTimetable(assets=SCORED_DIGIT_ARRIVALS),
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    tags=["parallel-run", "example", "partitions"],
    doc_md=__doc__,
)
def scored_partition_report() -> None:
    @task(inlets=[SCORED_DIGIT_ARRIVALS])
    def report(**context: Any) -> dict[str, Any]:
        """Digit counts of the run's partition, from the output file its asset event names."""
        import json

        from airflow_parallel_run.partitions import scored_partitions

        key = context["partition_key"]
        extra = scored_partitions(context, SCORED_DIGIT_ARRIVALS)[key]
        lines = Path(extra["append_row_file"]).read_text(encoding="utf-8").splitlines()
        if len(lines) != extra["succeeded_items"]:
            raise ValueError(
                f"{extra['append_row_file']} has {len(lines)} lines, the event says "
                f"{extra['succeeded_items']} items succeeded"
            )
        result = {
            "partition_key": key,
            "succeeded_items": extra["succeeded_items"],
            "failed_items": extra["failed_items"],
            "reused_mini_batches": extra["reused_mini_batches"],
            "cache_key": extra["cache_key"],
            "digits": dict(sorted(Counter(line.split()[1] for line in lines).items())),
        }
        target = Path(OUTPUT) / f"{key}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(result, indent=2))
        return result

    report()


scored_partition_report()
