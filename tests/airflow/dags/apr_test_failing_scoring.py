"""Test-only DAG: a ParallelRunOperator job that exceeds error_threshold, so its task must fail.

The first task writes 12 input files, 4 of them "bad"; the entry script fails on those; with
mini_batch_size 1, run_max_try 1 and error_threshold 2 the job stops with "error_threshold exceeded".
"""

from __future__ import annotations

import os
from pathlib import Path

import pendulum
from airflow.sdk import dag, task

from airflow_parallel_run import ParallelRunConfig, ParallelRunOperator

HERE = Path(__file__).resolve().parent
ROOT = Path(os.environ.get("AIRFLOW_PARALLEL_RUN_DEMO_ROOT", "/tmp/apr-test")) / "failing"

CONFIG = ParallelRunConfig(
    entry_script=str(HERE / "scripts" / "fail_some.py"),
    mini_batch_size=1,
    run_max_try=1,
    error_threshold=2,
    process_count_per_node=2,
)


@dag(
    dag_id="apr_test_failing_scoring",
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    tags=["test"],
)
def apr_test_failing_scoring() -> None:
    @task
    def write_inputs() -> None:
        folder = ROOT / "in"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(12):
            (folder / f"item{i:02d}.txt").write_text("bad\n" if i % 3 == 0 else f"good {i}\n")

    score = ParallelRunOperator(
        task_id="score",
        parallel_run_config=CONFIG,
        inputs=str(ROOT / "in"),
        output_path=str(ROOT / "out"),
        retries=0,
    )
    write_inputs() >> score


apr_test_failing_scoring()
