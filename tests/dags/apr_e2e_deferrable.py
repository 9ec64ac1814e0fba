"""Test DAG of the e2e suite: a deferrable DatasetPartitionSensor feeding a deferrable ParallelRunOperator.

The sensor waits in the triggerer for `<demo root>/deferrable/<run_id>/landing/_SUCCESS` (the test lands
the files once it has seen the sensor deferred); the operator's driver runs inside the Dask cluster of
the `apr_e2e_dask` connection (the test starts that cluster and creates the connection over REST) and
the task waits in the triggerer until the job has finished. No worker slot is held while either waits.
"""

from __future__ import annotations

import os
from pathlib import Path

import pendulum
from airflow.sdk import dag

from airflow_parallel_run import DatasetPartitionSensor, ParallelRunConfig, ParallelRunOperator

HERE = Path(__file__).resolve().parent
ROOT = Path(os.environ.get("AIRFLOW_PARALLEL_RUN_DEMO_ROOT", "/tmp/apr-e2e")) / "deferrable"
RUN_FOLDER = str(ROOT) + "/{{ run_id }}"

CONFIG = ParallelRunConfig(
    entry_script=str(HERE / "scripts" / "slow_echo.py"),
    mini_batch_size=2,
    process_count_per_node=2,
)


@dag(
    dag_id="apr_e2e_deferrable",
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    tags=["test"],
)
def apr_e2e_deferrable() -> None:
    wait = DatasetPartitionSensor(
        task_id="wait",
        input=RUN_FOLDER + "/landing",
        marker_file="_SUCCESS",
        mini_batch_size=2,
        poke_interval=1,
        timeout=300,
        deferrable=True,
    )
    ParallelRunOperator(
        task_id="score",
        parallel_run_config=CONFIG,
        inputs=wait.output,
        output_path=RUN_FOLDER + "/out",
        dask_conn_id="apr_e2e_dask",
        deferrable=True,
        retries=0,
    )


apr_e2e_deferrable()
