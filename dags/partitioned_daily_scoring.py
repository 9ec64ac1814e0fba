"""partitioned_daily_scoring: one scoring run per daily partition, keyed the way Airflow keys partitions.

What it does
    A `CronPartitionTimetable` gives each run a `partition_key` (`2024-01-01`, the day that just ended:
    `run_offset=-1`) and a `partition_date`. The job scores `<demo root>/data/partitions/<partition_key>/`
    into `<demo root>/output/partitioned_daily_scoring/<partition_key>/digits_predictions.txt`. The first
    task simulates the day's data landing (copies demo images chosen from the key, leaving files that
    are already there alone); replace it with your real landing zone.

Partitions in templates
    `{{ partition_key }}` (also `{{ dag_run.partition_key }}`) and `{{ partition_date }}` come from
    Airflow's context; `{{ partition_date | ds }}` gives `YYYY-MM-DD`. The summary (XCom) records the
    `partition_key`.

Asset
    The output is announced on one fixed asset, `scored_digits_daily`, whatever the day's folder
    (`output_asset=`): each successful run emits an event for its own partition key, with the counts,
    the mini-batches reused, the cache key and the day's output folder in the extra. A DAG scheduled
    with `PartitionedAssetTimetable` on it runs per scored day (see `weekly_digit_scores`, which waits
    for all seven days of a week).

Backfill
    A backfill of a partitioned DAG creates one run per partition of the range:

        airflow backfill create --dag-id partitioned_daily_scoring \\
            --from-date 2024-01-01 --to-date 2024-01-07

    (or `POST /api/v2/backfills`). Each partition reads and writes only its own folders; with the reuse
    cache a re-backfill of unchanged days runs no mini-batch, and a day whose input changed re-runs only
    its changed mini-batches.

Data
    Images and model live under AIRFLOW_PARALLEL_RUN_DEMO_ROOT (read when the file is parsed;
    default `<repo>/demo_output`); the first task creates them when missing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pendulum
from airflow.sdk import CronPartitionTimetable, dag, task
from partition_assets import SCORED_DIGITS_DAILY

from airflow_parallel_run import ParallelRunConfig, ParallelRunOperator

HERE = Path(__file__).resolve().parent
DEMO_ROOT = os.environ.get("AIRFLOW_PARALLEL_RUN_DEMO_ROOT", str(HERE.parent / "demo_output"))
DIGITS_DIR = f"{DEMO_ROOT}/data/digits"
DIGITS_MODEL = f"{DEMO_ROOT}/models/digits.pkl"
PARTITIONS = f"{DEMO_ROOT}/data/partitions"
OUTPUT_ROOT = f"{DEMO_ROOT}/output/partitioned_daily_scoring"
IMAGES_PER_DAY = 20

CONFIG = ParallelRunConfig(
    entry_script=str(HERE / "scripts" / "score_digits.py"),
    mini_batch_size=5,
    append_row_file_name="digits_predictions.txt",
    process_count_per_node=1,
)


@dag(
    dag_id="partitioned_daily_scoring",
    schedule=CronPartitionTimetable("0 0 * * *", timezone="UTC", run_offset=-1, key_format="%Y-%m-%d"),
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=3,
    tags=["parallel-run", "example", "partitions", "backfill"],
    doc_md=__doc__,
)
def partitioned_daily_scoring() -> None:
    @task
    def stage_partition(partition_key: str | None = None) -> str:
        """Simulates the day's data landing: IMAGES_PER_DAY demo images chosen from the key."""
        import random
        import shutil

        from airflow_parallel_run.demo import ensure_demo_data

        ensure_demo_data(DEMO_ROOT)
        day = Path(PARTITIONS) / str(partition_key)
        images = sorted(Path(DIGITS_DIR).glob("*.png"))
        day.mkdir(parents=True, exist_ok=True)
        for image in random.Random(str(partition_key)).sample(images, IMAGES_PER_DAY):
            if not (day / image.name).exists():
                shutil.copy2(image, day / image.name)
        return str(day)

    score = ParallelRunOperator(
        task_id="score_partition",
        parallel_run_config=CONFIG,
        inputs=PARTITIONS + "/{{ partition_key }}/*.png",
        output_path=OUTPUT_ROOT + "/{{ partition_key }}",
        side_inputs=[DIGITS_MODEL],
        arguments=["--model", DIGITS_MODEL],
        output_asset=SCORED_DIGITS_DAILY,
    )
    stage_partition() >> score


partitioned_daily_scoring()
