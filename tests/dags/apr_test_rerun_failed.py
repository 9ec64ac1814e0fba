"""Test DAGs: a ParallelRunOperator whose `rerun_failed` is a trigger-form switch
(tests/airflow/test_rerun_failed_dag.py).

The test writes `<demo root>/<dag's folder>/in` and the fail list beforehand; a first run (rerun_failed off)
fails the items on the list (error_threshold -1: the task still succeeds), and a second run with
`rerun_failed: true` runs only those items into the same output folder.

- `apr_test_rerun_failed`: in the task's own cluster; a listed file fails its whole mini-batch of one file.
- `apr_test_rerun_failed_deferrable`: deferrable, on the `apr_test_dask` cluster (the test starts it and
  defines the connection); mini-batches of 5 in which the listed files are marked failed in place.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import Param, dag

from airflow_parallel_run import ParallelRunConfig, ParallelRunOperator

HERE = Path(__file__).resolve().parent
DEMO_ROOT = Path(os.environ.get("AIRFLOW_PARALLEL_RUN_DEMO_ROOT", "/tmp/apr-test"))


def rerun_failed_dag(dag_id: str, mode: str, mini_batch_size: int, **operator_kwargs: Any) -> None:
    root = DEMO_ROOT / dag_id.removeprefix("apr_test_")
    config = ParallelRunConfig(
        entry_script=str(HERE / "scripts" / "fail_listed.py"),
        mini_batch_size=mini_batch_size,
        run_max_try=1,
        process_count_per_node=2,
    )

    @dag(
        dag_id=dag_id,
        schedule=None,
        start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
        catchup=False,
        tags=["test"],
        params={
            "rerun_failed": Param(False, type="boolean", description="run only the last job's failed items")
        },
    )
    def rerun_failed() -> None:
        ParallelRunOperator(
            task_id="score",
            parallel_run_config=config,
            inputs=str(root / "in"),
            output_path=str(root / "out"),
            arguments=[
                "--fail-list",
                f"flaky:{root / 'fail.txt'}",  # a transient failure, not data (tests/flaky_failures.py)
                "--calls",
                str(root / "calls.txt"),
                "--mode",
                mode,
            ],
            rerun_failed="{{ params.rerun_failed }}",
            retries=0,
            **operator_kwargs,
        )

    rerun_failed()


rerun_failed_dag("apr_test_rerun_failed", "raise", 1)
rerun_failed_dag("apr_test_rerun_failed_deferrable", "mark", 5, dask_conn_id="apr_test_dask", deferrable=True)
