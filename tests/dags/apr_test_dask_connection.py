"""Test-only DAG: ParallelRunOperator on an existing Dask cluster named by the `apr_test_dask` connection.

The test starts the cluster and defines the connection (AIRFLOW_CONN_APR_TEST_DASK) before the run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pendulum
from airflow.sdk import dag, task

from airflow_parallel_run import ParallelRunConfig, ParallelRunOperator

HERE = Path(__file__).resolve().parent
ROOT = Path(os.environ.get("AIRFLOW_PARALLEL_RUN_DEMO_ROOT", "/tmp/apr-test")) / "dask_connection"

CONFIG = ParallelRunConfig(
    entry_script=str(HERE / "scripts" / "fail_some.py"), mini_batch_size=2, process_count_per_node=2
)


@dag(
    dag_id="apr_test_dask_connection",
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    tags=["test"],
)
def apr_test_dask_connection() -> None:
    @task
    def write_inputs() -> None:
        folder = ROOT / "in"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(6):
            (folder / f"item{i:02d}.txt").write_text(f"good {i}\n")

    score = ParallelRunOperator(
        task_id="score",
        parallel_run_config=CONFIG,
        inputs=str(ROOT / "in"),
        output_path=str(ROOT / "out"),
        dask_conn_id="apr_test_dask",
    )
    write_inputs() >> score


apr_test_dask_connection()
