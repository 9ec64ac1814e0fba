"""Test DAGs: a DatasetPartitionSensor feeding ParallelRunOperator.

`apr_test_sensor_poke` polls in the task (poke mode) and runs on the embedded cluster;
`apr_test_sensor_deferrable` defers both the sensor and the operator (the operator's driver runs
inside the cluster named by the `apr_test_dask` connection, which the test defines) and scores
slowly (`scripts/slow_echo.py`, 0.5 s per file), so a test can see the operator deferred while its
job runs. The test lands the files in `<params.root>/landing/<partition>` (partition: `params.partition`,
else the run's `ds`); the output goes to `<params.root>/out/<partition>`. `dag.test()` runs keep the
defaults; the e2e suite, whose runs have no logical date, gives a root and a partition.
"""

from __future__ import annotations

import os
from pathlib import Path

import pendulum
from airflow.sdk import Param, dag

from airflow_parallel_run import DatasetPartitionSensor, ParallelRunConfig, ParallelRunOperator

HERE = Path(__file__).resolve().parent
ROOT = Path(os.environ.get("AIRFLOW_PARALLEL_RUN_DEMO_ROOT", "/tmp/apr-test")) / "sensor_fed"
ECHO = ParallelRunConfig(entry_script=str(HERE / "scripts" / "echo_names.py"), process_count_per_node=2)
SLOW_ECHO = ParallelRunConfig(entry_script=str(HERE / "scripts" / "slow_echo.py"), process_count_per_node=2)
PARTITION = "{{ params.partition or ds }}"


def _build(dag_id: str, deferrable: bool) -> None:
    @dag(
        dag_id=dag_id,
        schedule=None,
        start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
        catchup=False,
        tags=["test"],
        params={
            "root": Param(str(ROOT / dag_id), type="string", description="folder with landing/; gets out/"),
            "partition": Param(None, type=["null", "string"], description="the partition (default: ds)"),
        },
    )
    def sensor_fed() -> None:
        wait = DatasetPartitionSensor(
            task_id="wait",
            input="{{ params.root }}/landing/" + PARTITION,
            marker_file="_SUCCESS",
            mini_batch_size=2,
            poke_interval=1,
            timeout=300,
            deferrable=deferrable,
        )
        ParallelRunOperator(
            task_id="score",
            parallel_run_config=SLOW_ECHO if deferrable else ECHO,
            inputs=wait.output,
            output_path="{{ params.root }}/out/" + PARTITION,
            dask_conn_id="apr_test_dask" if deferrable else None,
            deferrable=deferrable,
            retries=0,
        )

    sensor_fed()


_build("apr_test_sensor_poke", deferrable=False)
_build("apr_test_sensor_deferrable", deferrable=True)
