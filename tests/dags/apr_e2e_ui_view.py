"""Test DAG of the e2e suite for the "Parallel run" tab: 200 one-file mini-batches of 0.15 s on two processes (long
enough to watch the progress bar move), 4 of which fail (item007, item057, item107, item157), reuse off so every run
runs. Inputs and output are per run (`<demo root>/ui_view/<run_id>/`)."""

from __future__ import annotations

import os
from pathlib import Path

import pendulum
from airflow.sdk import dag, task

from airflow_parallel_run import ParallelRunConfig, ParallelRunOperator

HERE = Path(__file__).resolve().parent
ROOT = Path(os.environ.get("AIRFLOW_PARALLEL_RUN_DEMO_ROOT", "/tmp/apr-e2e")) / "ui_view"
ITEMS = 200

CONFIG = ParallelRunConfig(
    entry_script=str(HERE / "scripts" / "ui_view_score.py"),
    mini_batch_size=1,
    run_max_try=1,
    process_count_per_node=2,
    append_row_file_name="scores.txt",
)


@dag(
    dag_id="apr_e2e_ui_view",
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    tags=["test"],
)
def apr_e2e_ui_view() -> None:
    @task
    def write_inputs(run_id: str | None = None) -> None:
        folder = ROOT / str(run_id) / "in"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(ITEMS):
            (folder / f"item{i:03d}.txt").write_text(f"value {i}\n")

    score = ParallelRunOperator(
        task_id="score",
        parallel_run_config=CONFIG,
        inputs=str(ROOT) + "/{{ run_id }}/in",
        output_path=str(ROOT) + "/{{ run_id }}/out",
        allow_reuse=False,
        retries=0,
    )
    write_inputs() >> score


apr_e2e_ui_view()
