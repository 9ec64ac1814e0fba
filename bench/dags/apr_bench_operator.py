"""apr_bench_operator: one ParallelRunOperator task over the files of `params.input` (bench/airflow_bench.py).

`mini_batch_size=params.mini_batch_size` files per run() call (the no-op `scripts/noop_score.py`),
`process_count_per_node=2` on the embedded Dask LocalCluster, `allow_reuse=False` so every run does
the work; output under `params.output_root/<run id>`.
"""

from __future__ import annotations

from pathlib import Path

import pendulum
from airflow.sdk import Param, dag

from airflow_parallel_run import ParallelRunConfig, ParallelRunOperator

HERE = Path(__file__).resolve().parent

CONFIG = ParallelRunConfig(
    entry_script=str(HERE / "scripts" / "noop_score.py"),
    mini_batch_size=1,
    process_count_per_node=2,
    run_invocation_timeout=60,
)


@dag(
    dag_id="apr_bench_operator",
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["parallel-run", "bench"],
    doc_md=__doc__,
    params={
        "input": Param(None, type=["null", "string"], description="folder of input files"),
        "output_root": Param(None, type=["null", "string"], description="parent of the output folders"),
        "mini_batch_size": Param(1, type="integer", minimum=1),
    },
)
def apr_bench_operator() -> None:
    ParallelRunOperator(
        task_id="score",
        parallel_run_config=CONFIG,
        inputs="{{ params.input }}",
        output_path="{{ params.output_root }}/{{ run_id | replace(':', '_') | replace('+', '_') }}",
        mini_batch_size="{{ params.mini_batch_size }}",
        allow_reuse=False,
    )


apr_bench_operator()
