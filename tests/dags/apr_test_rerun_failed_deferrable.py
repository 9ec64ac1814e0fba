"""Test DAG: a deferrable ParallelRunOperator (on the `apr_test_dask` cluster) whose `rerun_failed` is a
trigger-form switch, with an entry script that marks failed items in place.

The test starts the cluster, defines the connection and writes `<demo root>/rerun_failed_deferrable/in` and the
fail list beforehand; a first run marks the listed items failed (error_threshold -1: the task still
succeeds), and a second run with `rerun_failed: true` runs only those items, in the cluster, into the same
output folder (tests/airflow/test_rerun_failed_dag.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import pendulum
from airflow.sdk import Param, dag

from airflow_parallel_run import ParallelRunConfig, ParallelRunOperator

HERE = Path(__file__).resolve().parent
ROOT = Path(os.environ.get("AIRFLOW_PARALLEL_RUN_DEMO_ROOT", "/tmp/apr-test")) / "rerun_failed_deferrable"

CONFIG = ParallelRunConfig(
    entry_script=str(HERE / "scripts" / "mark_listed.py"),
    mini_batch_size=5,
    run_max_try=1,
    process_count_per_node=2,
)


@dag(
    dag_id="apr_test_rerun_failed_deferrable",
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    tags=["test"],
    params={"rerun_failed": Param(False, type="boolean", description="run only the last job's failed items")},
)
def apr_test_rerun_failed_deferrable() -> None:
    ParallelRunOperator(
        task_id="score",
        parallel_run_config=CONFIG,
        inputs=str(ROOT / "in"),
        output_path=str(ROOT / "out"),
        arguments=["--fail-list", str(ROOT / "fail.txt"), "--calls", str(ROOT / "calls.txt")],
        rerun_failed="{{ params.rerun_failed }}",
        dask_conn_id="apr_test_dask",
        deferrable=True,
        retries=0,
    )


apr_test_rerun_failed_deferrable()
