"""Test-only DAG: ParallelRunOperator over the rows of a PostgreSQL query named by the `apr_test_pg` connection.

The test starts the server, fills the `apr_readings` table and defines the connection (AIRFLOW_CONN_APR_TEST_PG)
before the run. The query is templated: `max_id` comes from the run's params.
"""

from __future__ import annotations

import os
from pathlib import Path

import pendulum
from airflow.sdk import Param, dag

from airflow_parallel_run import ParallelRunConfig, ParallelRunOperator, TabularDataset

HERE = Path(__file__).resolve().parent
ROOT = Path(os.environ.get("AIRFLOW_PARALLEL_RUN_DEMO_ROOT", "/tmp/apr-test")) / "sql_connection"


@dag(
    dag_id="apr_test_sql_connection",
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    params={"max_id": Param(300, type="integer")},
    tags=["test"],
)
def apr_test_sql_connection() -> None:
    ParallelRunOperator(
        task_id="score",
        parallel_run_config=ParallelRunConfig(
            entry_script=str(HERE / "scripts" / "score_rows.py"),
            append_row_format="csv",
            process_count_per_node=2,
        ),
        inputs=TabularDataset.from_sql_query(
            "SELECT id, reading FROM apr_readings WHERE id <= {{ params.max_id }}",
            conn_id="apr_test_pg",
            key_column="id",
            rows_per_mini_batch=50,
        ),
        output_path=str(ROOT / "out"),
    )


apr_test_sql_connection()
