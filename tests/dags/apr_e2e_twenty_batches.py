"""Test DAG of the e2e suite: 20 slow mini-batches whose entry script records when each one ran, and in which process.

The test that SIGKILLs a scheduler in the middle of this job writes 40 input files to `params.root`/in
and triggers it; `scripts/ledger_echo.py` appends a `begin`/`end` line per mini-batch to
`params.root`/ledger.txt, from which the test proves that no two jobs ever ran at the same time.
Reuse is on, as in a real DAG: a second try of the task runs only the mini-batches the first one did
not finish.
"""

from __future__ import annotations

from pathlib import Path

import pendulum
from airflow.sdk import Param, dag

from airflow_parallel_run import ParallelRunConfig, ParallelRunOperator

HERE = Path(__file__).resolve().parent

CONFIG = ParallelRunConfig(
    entry_script=str(HERE / "scripts" / "ledger_echo.py"),
    mini_batch_size=2,
    process_count_per_node=2,
    run_max_try=1,
)


@dag(
    dag_id="apr_e2e_twenty_batches",
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    tags=["test"],
    params={"root": Param(None, type=["null", "string"], description="folder with in/; gets out/")},
)
def apr_e2e_twenty_batches() -> None:
    ParallelRunOperator(
        task_id="score",
        parallel_run_config=CONFIG,
        inputs="{{ params.root }}/in",
        output_path="{{ params.root }}/out",
        retries=0,
    )


apr_e2e_twenty_batches()
