"""arrival_driven_scoring: score each partition as it lands, once, with no sensor holding a slot.

What it does
    An upstream writer drops each partition of digit images into `<demo root>/data/arrivals/<key>/` and
    a `_SUCCESS` marker last. The `digit_arrivals` asset has an `AssetWatcher` whose trigger
    (`PartitionArrivalTrigger`, in the triggerer) fires one event per partition that is complete, and
    remembers what it fired, so a triggerer restart neither repeats a partition nor loses one that
    landed meanwhile.

    Airflow stores a watcher's events without a partition key, so a one-task DAG,
    `announce_digit_arrivals`, re-announces each arrival on `complete_digit_partitions` with
    `add_partitions(key)`; `arrival_driven_scoring` is scheduled with `PartitionedAssetTimetable` on
    that asset and therefore runs once per partition, with `partition_key` = the folder name. It scores
    `<demo root>/data/arrivals/<partition_key>/*.png` into
    `<demo root>/output/arrival_driven_scoring/<partition_key>/` and announces the result on
    `scored_digit_arrivals` for that partition (`scored_partition_report` consumes it).

When to use which
    `DatasetPartitionSensor`: a classic DAG on a schedule that waits for its day's data. The asset
    watcher (this DAG): data arrives when it arrives, and each arrival should start a run. A
    `CronPartitionTimetable` (`partitioned_daily_scoring`): a fixed rhythm of partitions, backfillable.
    See docs/airflow.md, "Partitions".

Data
    Model under AIRFLOW_PARALLEL_RUN_DEMO_ROOT (read when the file is parsed; default
    `<repo>/demo_output`); `make demo` creates it. Land a partition by copying images into a new
    sub-folder of `data/arrivals/` and creating `_SUCCESS` in it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pendulum
from airflow.sdk import DAG, PartitionedAssetTimetable
from partition_assets import ARRIVALS, COMPLETE_DIGIT_PARTITIONS, DIGIT_ARRIVALS, SCORED_DIGIT_ARRIVALS

from airflow_parallel_run import ParallelRunConfig, ParallelRunOperator
from airflow_parallel_run.watchers import ArrivedPartitionsOperator

HERE = Path(__file__).resolve().parent
DEMO_ROOT = os.environ.get("AIRFLOW_PARALLEL_RUN_DEMO_ROOT", str(HERE.parent / "demo_output"))
DIGITS_MODEL = f"{DEMO_ROOT}/models/digits.pkl"

CONFIG = ParallelRunConfig(
    entry_script=str(HERE / "scripts" / "score_digits.py"),
    mini_batch_size=5,
    append_row_file_name="digits_predictions.txt",
    process_count_per_node=1,
)

with DAG(
    dag_id="announce_digit_arrivals",
    schedule=[DIGIT_ARRIVALS],
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,  # one announcer at a time: its dedup reads what the previous one announced
    tags=["parallel-run", "example", "partitions", "asset-watcher"],
    doc_md="announce_digit_arrivals: each partition the digit_arrivals watcher reported, announced on "
    "complete_digit_partitions with its partition key (see arrival_driven_scoring).",
):
    ArrivedPartitionsOperator(task_id="announce", source=DIGIT_ARRIVALS, target=COMPLETE_DIGIT_PARTITIONS)

with DAG(
    dag_id="arrival_driven_scoring",
    schedule=PartitionedAssetTimetable(assets=COMPLETE_DIGIT_PARTITIONS),
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    tags=["parallel-run", "example", "partitions", "asset-watcher"],
    doc_md=__doc__,
):
    ParallelRunOperator(
        task_id="score_arrival",
        parallel_run_config=CONFIG,
        inputs=ARRIVALS + "/{{ partition_key }}/*.png",
        output_path=DEMO_ROOT + "/output/arrival_driven_scoring/{{ partition_key }}",
        side_inputs=[DIGITS_MODEL],
        arguments=["--model", DIGITS_MODEL],
        output_asset=SCORED_DIGIT_ARRIVALS,
    )
