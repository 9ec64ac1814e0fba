"""Test DAGs of the e2e suite for the task lifecycle: mapped tasks, clearing and timing out deferrable tasks, and
marking a running task failed. Every folder comes from `dag_run.conf["root"]`, so the test lands its
files (and finds its outputs) before or after triggering, under a folder of its own.

- `apr_e2e_mapped_partitions`: one mapped `DatasetPartitionSensor` waits for three partitions
  (`stable_pokes`), one mapped `ParallelRunOperator` scores each into
  `<root>/out/<map index>`.
- `apr_e2e_deferrable_clear`: a deferrable operator on the `apr_e2e_dask` cluster that runs long
  enough for the test to clear it while its job runs.
- `apr_e2e_deferrable_timeout`: the same with `execution_timeout=15s`, which the job outlasts.
- `apr_e2e_mark_failed`: an embedded-cluster job the test marks failed while it runs.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import dag

from airflow_parallel_run import DatasetPartitionSensor, ParallelRunConfig, ParallelRunOperator

HERE = Path(__file__).resolve().parent
ROOT = "{{ dag_run.conf['root'] }}"
START = pendulum.datetime(2024, 1, 1, tz="UTC")
PARTITIONS = ("a", "b", "c")

ECHO = ParallelRunConfig(entry_script=str(HERE / "scripts" / "slow_echo.py"), process_count_per_node=2)
SLOW = ParallelRunConfig(
    entry_script=str(HERE / "scripts" / "slow_echo.py"), mini_batch_size=2, process_count_per_node=2
)


@dag(dag_id="apr_e2e_mapped_partitions", schedule=None, start_date=START, catchup=False, tags=["test"])
def mapped_partitions() -> None:
    wait = DatasetPartitionSensor.partial(
        task_id="wait", mini_batch_size=2, stable_pokes=2, poke_interval=1, timeout=300
    ).expand(input=[f"{ROOT}/landing/{name}" for name in PARTITIONS])
    ParallelRunOperator.partial(
        task_id="score", parallel_run_config=ECHO, output_path=ROOT + "/out/{{ ti.map_index }}", retries=0
    ).expand(inputs=wait.output)


def _deferrable(dag_id: str, **task_kwargs: Any) -> None:
    """A deferrable operator on the `apr_e2e_dask` cluster, long enough to be stopped while it runs."""

    @dag(dag_id=dag_id, schedule=None, start_date=START, catchup=False, tags=["test"])
    def deferrable() -> None:
        ParallelRunOperator(
            task_id="score",
            parallel_run_config=SLOW,
            inputs=ROOT + "/in",
            output_path=ROOT + "/out",
            dask_conn_id="apr_e2e_dask",
            deferrable=True,
            retries=0,
            **task_kwargs,
        )

    deferrable()


@dag(dag_id="apr_e2e_mark_failed", schedule=None, start_date=START, catchup=False, tags=["test"])
def mark_failed() -> None:
    ParallelRunOperator(
        task_id="score",
        parallel_run_config=ParallelRunConfig(
            entry_script=str(HERE / "scripts" / "slow_echo.py"), mini_batch_size=1, process_count_per_node=2
        ),
        inputs=ROOT + "/in",
        output_path=ROOT + "/out",
        retries=0,
    )


mapped_partitions()
_deferrable("apr_e2e_deferrable_clear")
_deferrable("apr_e2e_deferrable_timeout", execution_timeout=timedelta(seconds=15))
mark_failed()
