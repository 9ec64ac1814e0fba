"""Test DAG of the e2e suite: a small scoring job with OpenLineage enabled for it (the stack's OpenLineage runs in
selective mode, writing to a file: tests/e2e/conftest.py). Scores 10 demo digits with the digits model
(a side input), so the lineage names two input datasets and one output dataset.
"""

from __future__ import annotations

import os
from pathlib import Path

import pendulum
from airflow.providers.openlineage.utils.selective_enable import enable_lineage
from airflow.sdk import dag

from airflow_parallel_run import ParallelRunConfig, ParallelRunOperator

REPO_DAGS = Path(__file__).resolve().parents[2] / "dags"
DEMO_ROOT = os.environ.get("AIRFLOW_PARALLEL_RUN_DEMO_ROOT", "/tmp/apr-e2e")
MODEL = f"{DEMO_ROOT}/models/digits.pkl"

CONFIG = ParallelRunConfig(
    entry_script=str(REPO_DAGS / "scripts" / "score_digits.py"),
    mini_batch_size=4,
    process_count_per_node=1,
    append_row_file_name="digits_predictions.txt",
)


@dag(
    dag_id="apr_e2e_lineage",
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    tags=["test"],
)
def apr_e2e_lineage() -> None:
    ParallelRunOperator(
        task_id="score",
        parallel_run_config=CONFIG,
        inputs=f"{DEMO_ROOT}/data/digits/digit_000[0-9]*.png",
        output_path=f"{DEMO_ROOT}/output/apr_e2e_lineage",
        side_inputs=[MODEL],
        arguments=["--model", MODEL],
        retries=0,
    )


enable_lineage(apr_e2e_lineage())
