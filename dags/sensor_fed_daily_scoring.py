"""sensor_fed_daily_scoring: wait for a day's images to land, plan them once, score exactly those.

What it does
    Each day's images land in `<demo root>/data/landing/<ds>/` at an unknown time, and the writer
    drops a `_SUCCESS` marker when it is done. `DatasetPartitionSensor` waits for the marker, plans
    the day's mini-batches once and writes a manifest; `ParallelRunOperator(inputs=wait.output)`
    scores exactly the files of that manifest, even if more files arrive later. The first task only
    simulates the landing (replace it with your real upstream); it lands 50 demo images and the marker.

Waiting without holding a worker slot
    The sensor runs in `mode="reschedule"` here. With a triggerer running, `deferrable=True` on the
    sensor waits in the triggerer instead; with a `dask` connection, `deferrable=True` on the operator
    runs the job's driver inside the Dask cluster and frees the worker slot for the whole job.

Backfill
    `airflow backfill create --dag-id sensor_fed_daily_scoring --from-date 2024-01-01 --to-date 2024-01-07`
    waits for (and scores) each historical partition in turn.

Data
    Images and model live under AIRFLOW_PARALLEL_RUN_DEMO_ROOT (read when the file is parsed;
    default `<repo>/demo_output`); the first task creates them when missing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pendulum
from airflow.sdk import dag, task

from airflow_parallel_run import DatasetPartitionSensor, ParallelRunConfig, ParallelRunOperator

HERE = Path(__file__).resolve().parent
DEMO_ROOT = os.environ.get("AIRFLOW_PARALLEL_RUN_DEMO_ROOT", str(HERE.parent / "demo_output"))
DIGITS_DIR = f"{DEMO_ROOT}/data/digits"
DIGITS_MODEL = f"{DEMO_ROOT}/models/digits.pkl"
LANDING = DEMO_ROOT + "/data/landing/{{ ds }}"
IMAGES_PER_DAY = 50

CONFIG = ParallelRunConfig(
    entry_script=str(HERE / "scripts" / "score_digits.py"),
    append_row_file_name="digits_predictions.txt",
    process_count_per_node=2,
)


@dag(
    dag_id="sensor_fed_daily_scoring",
    schedule="@daily",
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    tags=["parallel-run", "example", "sensor"],
    doc_md=__doc__,
)
def sensor_fed_daily_scoring() -> None:
    @task
    def land_partition(ds: str | None = None) -> None:
        """Simulates the upstream writer: the day's images first, the `_SUCCESS` marker last."""
        import random
        import shutil

        from airflow_parallel_run.demo import ensure_demo_data

        ensure_demo_data(DEMO_ROOT)
        day = Path(DEMO_ROOT) / "data" / "landing" / str(ds)
        day.mkdir(parents=True, exist_ok=True)
        for image in random.Random(str(ds)).sample(sorted(Path(DIGITS_DIR).glob("*.png")), IMAGES_PER_DAY):
            shutil.copy2(image, day / image.name)
        (day / "_SUCCESS").touch()

    wait = DatasetPartitionSensor(
        task_id="wait_for_partition",
        input=LANDING,
        marker_file="_SUCCESS",
        mini_batch_size=10,
        mode="reschedule",
        poke_interval=30,
        timeout=6 * 3600,
    )
    score = ParallelRunOperator(
        task_id="score_partition",
        parallel_run_config=CONFIG,
        inputs=wait.output,
        output_path=DEMO_ROOT + "/output/sensor_fed_daily_scoring/{{ ds }}",
        side_inputs=[DIGITS_MODEL],
        arguments=["--model", DIGITS_MODEL],
    )
    land_partition() >> wait >> score


sensor_fed_daily_scoring()
