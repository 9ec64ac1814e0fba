"""e2e-only DAG: an entry script whose run() always raises, so the job exceeds error_threshold.

The first task writes 20 small input files; with mini_batch_size 2, run_max_try 2 and
error_threshold 5 the engine stops after 6 failed items with "error_threshold exceeded", and the
operator logs the head of `<output>/logs/user/error.txt` before failing the task.
"""

from __future__ import annotations

import os
from pathlib import Path

import pendulum
from airflow.sdk import dag, task

from airflow_parallel_run import ParallelRunConfig, ParallelRunOperator

HERE = Path(__file__).resolve().parent
ROOT = Path(os.environ.get("AIRFLOW_PARALLEL_RUN_DEMO_ROOT", "/tmp/apr-e2e")) / "always_failing"

CONFIG = ParallelRunConfig(
    entry_script=str(HERE / "scripts" / "always_raise.py"),
    mini_batch_size=2,
    run_max_try=2,
    error_threshold=5,
    process_count_per_node=1,
)


@dag(
    dag_id="apr_e2e_always_failing",
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    tags=["test"],
)
def apr_e2e_always_failing() -> None:
    @task
    def write_inputs() -> None:
        folder = ROOT / "in"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(20):
            (folder / f"item{i:02d}.txt").write_text(f"item {i}\n")

    score = ParallelRunOperator(
        task_id="score",
        parallel_run_config=CONFIG,
        inputs=str(ROOT / "in"),
        output_path=str(ROOT / "out"),
        retries=0,
    )
    write_inputs() >> score


apr_e2e_always_failing()
