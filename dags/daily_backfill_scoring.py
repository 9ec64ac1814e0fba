"""daily_backfill_scoring: one scoring job per day, with input and output folders templated by `ds`.

What it does
    Every day (`@daily`) a partition of new images lands in `<demo root>/data/daily/<ds>/`; the
    job classifies that day's images and writes `<demo root>/output/daily_backfill_scoring/<ds>/
    digits_predictions.txt`. The first task simulates the arrival by copying 60 of the demo's digit
    images, chosen from the date, into the day's folder; replace it with your real landing zone.

Dates
    `@daily` uses a CronTriggerTimetable: a run's data interval has zero width, so the paths are
    templated from the run's logical date (`{{ ds }}`), not from `data_interval_start`.

Backfill
    Run the job for a range of past days (one DAG run per date):

        airflow backfill create --dag-id daily_backfill_scoring \\
            --from-date 2024-01-01 --to-date 2024-01-07

    Each date reads and writes only its own folders. Re-running a date re-scores only what changed
    once reuse is enabled (`allow_reuse=True`, the default).

Asset
    The output folder is templated, so the operator declares an AssetAlias
    (`parallel_run_output:daily_backfill_scoring.score_daily_partition`) and, when a run succeeds,
    emits an asset event for that day's concrete folder (`file://.../<ds>`).

Data
    Images and model live under AIRFLOW_PARALLEL_RUN_DEMO_ROOT (read when the file is parsed;
    default `<repo>/demo_output`); the first task creates them when missing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pendulum
from airflow.sdk import dag, task

from airflow_parallel_run import ParallelRunConfig, ParallelRunOperator

HERE = Path(__file__).resolve().parent
DEMO_ROOT = os.environ.get("AIRFLOW_PARALLEL_RUN_DEMO_ROOT", str(HERE.parent / "demo_output"))
DIGITS_DIR = f"{DEMO_ROOT}/data/digits"
DIGITS_MODEL = f"{DEMO_ROOT}/models/digits.pkl"
DAILY_INPUT = DEMO_ROOT + "/data/daily/{{ ds }}"
DAILY_OUTPUT = DEMO_ROOT + "/output/daily_backfill_scoring/{{ ds }}"
IMAGES_PER_DAY = 60

CONFIG = ParallelRunConfig(
    entry_script=str(HERE / "scripts" / "score_digits.py"),
    mini_batch_size=10,
    append_row_file_name="digits_predictions.txt",
    process_count_per_node=2,
)


@dag(
    dag_id="daily_backfill_scoring",
    schedule="@daily",
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    tags=["parallel-run", "example", "backfill"],
    doc_md=__doc__,
)
def daily_backfill_scoring() -> None:
    @task
    def stage_daily_partition(ds: str | None = None) -> str:
        """Simulates the day's data arriving: copies IMAGES_PER_DAY demo images chosen from the date."""
        import random
        import shutil

        from airflow_parallel_run.demo import ensure_demo_data

        ensure_demo_data(DEMO_ROOT)
        day = Path(DEMO_ROOT) / "data" / "daily" / str(ds)
        images = sorted(Path(DIGITS_DIR).glob("*.png"))
        chosen = random.Random(str(ds)).sample(images, IMAGES_PER_DAY)
        day.mkdir(parents=True, exist_ok=True)
        for image in chosen:
            if not (day / image.name).exists():
                shutil.copy2(image, day / image.name)
        return str(day)

    score = ParallelRunOperator(
        task_id="score_daily_partition",
        parallel_run_config=CONFIG,
        inputs=DAILY_INPUT + "/*.png",
        output_path=DAILY_OUTPUT,
        side_inputs=[DIGITS_MODEL],
        arguments=["--model", DIGITS_MODEL],
    )
    stage_daily_partition() >> score


daily_backfill_scoring()
