"""Test DAGs of the e2e suite for the task lifecycle: clearing and timing out deferrable tasks, and
marking a running task failed (the mapped tasks run apr_test_mapped.py's `apr_test_mapped_partitions`).
Every folder comes from `dag_run.conf["root"]`, so the test lands its files (and finds its outputs)
before or after triggering, under a folder of its own.

- `apr_e2e_deferrable_clear`: a deferrable operator on the `apr_test_dask` cluster that runs long
  enough for the test to clear it while its job runs.
- `apr_e2e_deferrable_timeout`: the same with `execution_timeout=15s`, which the job outlasts.
- `apr_e2e_deferrable_mark_failed`: a deferrable job of 8 s mini-batches (two minutes for the test's 240
  files), which the test marks failed once its trigger watches it.
- `apr_e2e_deferrable_unwatched`: the same with `watch_lease_s=10`, marked failed while no trigger runs.
- `apr_e2e_mark_failed`: an embedded-cluster job the test marks failed while it runs.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import dag

from airflow_parallel_run import ParallelRunConfig, ParallelRunOperator

HERE = Path(__file__).resolve().parent
ROOT = "{{ dag_run.conf['root'] }}"
START = pendulum.datetime(2024, 1, 1, tz="UTC")

SLOW = ParallelRunConfig(
    entry_script=str(HERE / "scripts" / "slow_echo.py"), mini_batch_size=2, process_count_per_node=2
)
SLEEPY = ParallelRunConfig(
    entry_script=str(HERE / "scripts" / "sleepy_echo.py"), mini_batch_size=4, process_count_per_node=2
)


def _deferrable(dag_id: str, config: ParallelRunConfig = SLOW, **task_kwargs: Any) -> None:
    """A deferrable operator on the `apr_test_dask` cluster, long enough to be stopped while it runs."""

    @dag(dag_id=dag_id, schedule=None, start_date=START, catchup=False, tags=["test"])
    def deferrable() -> None:
        ParallelRunOperator(
            task_id="score",
            parallel_run_config=config,
            inputs=ROOT + "/in",
            output_path=ROOT + "/out",
            dask_conn_id="apr_test_dask",
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


_deferrable("apr_e2e_deferrable_clear")
_deferrable("apr_e2e_deferrable_timeout", execution_timeout=timedelta(seconds=15))
_deferrable("apr_e2e_deferrable_mark_failed", SLEEPY)
_deferrable("apr_e2e_deferrable_unwatched", SLEEPY, watch_lease_s=10)
mark_failed()
