"""Test-only DAGs: a DatasetPartitionSensor feeding ParallelRunOperator.

`apr_test_sensor_poke` polls in the task (poke mode) and runs on the embedded cluster;
`apr_test_sensor_deferrable` defers both the sensor and the operator (the operator's driver runs
inside the cluster named by the `apr_test_dask` connection). The test lands the files.
"""

from __future__ import annotations

import os
from pathlib import Path

import pendulum
from airflow.sdk import dag

from airflow_parallel_run import DatasetPartitionSensor, ParallelRunConfig, ParallelRunOperator

HERE = Path(__file__).resolve().parent
ROOT = Path(os.environ.get("AIRFLOW_PARALLEL_RUN_DEMO_ROOT", "/tmp/apr-test")) / "sensor_fed"
CONFIG = ParallelRunConfig(entry_script=str(HERE / "scripts" / "echo_names.py"), process_count_per_node=2)


def _build(dag_id: str, deferrable: bool) -> None:
    @dag(
        dag_id=dag_id,
        schedule=None,
        start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
        catchup=False,
        tags=["test"],
    )
    def sensor_fed() -> None:
        wait = DatasetPartitionSensor(
            task_id="wait",
            input=str(ROOT / dag_id / "landing" / "{{ ds }}"),
            marker_file="_SUCCESS",
            mini_batch_size=3,
            poke_interval=1,
            timeout=120,
            deferrable=deferrable,
        )
        ParallelRunOperator(
            task_id="score",
            parallel_run_config=CONFIG,
            inputs=wait.output,
            output_path=str(ROOT / dag_id / "out" / "{{ ds }}"),
            dask_conn_id="apr_test_dask" if deferrable else None,
            deferrable=deferrable,
        )

    sensor_fed()


_build("apr_test_sensor_poke", deferrable=False)
_build("apr_test_sensor_deferrable", deferrable=True)
