"""Test DAGs: mapped DatasetPartitionSensor and mapped ParallelRunOperator.

`apr_test_mapped_partitions` waits for three partitions (`<params.root>/partitions/{a,b,c}`) with one
mapped sensor (each map index writes its own manifest and keeps its own `stable_pokes` state) and
scores them with one mapped operator, one output folder per map index
(`<params.root>/out/<run_id>/<map index>`); `dag.test()` keeps the default root, the e2e suite gives
each run a root of its own. `apr_test_mapped_fixed_output` gives every map index the same fixed
`output_path`; `apr_test_mapped_shared_output` a templated one that does not depend on the map index:
both must fail with a message naming `output_path`, never write one folder twice.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pendulum
from airflow.sdk import Param, dag

from airflow_parallel_run import DatasetPartitionSensor, ParallelRunConfig, ParallelRunOperator

HERE = Path(__file__).resolve().parent
ROOT = Path(os.environ.get("AIRFLOW_PARALLEL_RUN_DEMO_ROOT", "/tmp/apr-test")) / "mapped"
CONFIG = ParallelRunConfig(entry_script=str(HERE / "scripts" / "echo_names.py"), process_count_per_node=2)
PARTITIONS = ["a", "b", "c"]
START = pendulum.datetime(2024, 1, 1, tz="UTC")


@dag(
    dag_id="apr_test_mapped_partitions",
    schedule=None,
    start_date=START,
    catchup=False,
    tags=["test"],
    params={"root": Param(str(ROOT), type="string", description="folder with partitions/; gets out/")},
)
def mapped_partitions() -> None:
    wait = DatasetPartitionSensor.partial(
        task_id="wait", mini_batch_size=2, stable_pokes=2, poke_interval=1, timeout=300
    ).expand(input=["{{ params.root }}/partitions/" + p for p in PARTITIONS])
    ParallelRunOperator.partial(
        task_id="score",
        parallel_run_config=CONFIG,
        output_path="{{ params.root }}/out/{{ run_id }}/{{ ti.map_index }}",
        retries=0,
    ).expand(inputs=wait.output)


@dag(dag_id="apr_test_mapped_fixed_output", schedule=None, start_date=START, catchup=False, tags=["test"])
def mapped_fixed_output() -> None:
    ParallelRunOperator.partial(
        task_id="score",
        parallel_run_config=CONFIG,
        output_path=str(ROOT / "fixed"),
        retries=2,
        retry_delay=timedelta(seconds=1),
    ).expand(inputs=[str(ROOT / "partitions" / p) for p in PARTITIONS])


@dag(dag_id="apr_test_mapped_shared_output", schedule=None, start_date=START, catchup=False, tags=["test"])
def mapped_shared_output() -> None:
    ParallelRunOperator.partial(
        task_id="score",
        parallel_run_config=CONFIG,
        output_path=str(ROOT / "shared" / "{{ ds }}"),
        retries=2,
        retry_delay=timedelta(seconds=1),
    ).expand(inputs=[str(ROOT / "partitions" / p) for p in PARTITIONS])


mapped_partitions()
mapped_fixed_output()
mapped_shared_output()
