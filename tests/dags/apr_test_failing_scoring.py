"""Test DAG: a ParallelRunOperator job that exceeds error_threshold, so its task must fail.

The first task writes `params.items` input files to `<demo root>/failing/<run_id>/in`; every file
whose number is a multiple of `params.bad_every` holds "bad", on which the entry script raises. The
defaults (12 files, 4 bad, mini_batch_size 1, run_max_try 1, error_threshold 2) suit `dag.test()`;
the e2e suite triggers it with every file bad, two per mini-batch, two tries and error_threshold 5,
so the job stops after 6 failed items and the task log shows the head of
`<output>/logs/user/error.txt` (tests/e2e/test_e2e_failure.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import Param, dag, task

from airflow_parallel_run import ParallelRunConfig, ParallelRunOperator

HERE = Path(__file__).resolve().parent
ROOT = Path(os.environ.get("AIRFLOW_PARALLEL_RUN_DEMO_ROOT", "/tmp/apr-test")) / "failing"
RUN_FOLDER = str(ROOT) + "/{{ run_id }}"

CONFIG = ParallelRunConfig(entry_script=str(HERE / "scripts" / "fail_some.py"))


@dag(
    dag_id="apr_test_failing_scoring",
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    tags=["test"],
    params={
        "items": Param(12, type="integer", minimum=1, description="input files to write"),
        "bad_every": Param(3, type="integer", minimum=1, description="file i is bad when i % bad_every == 0"),
        "mini_batch_size": Param(1, type="integer", minimum=1),
        "run_max_try": Param(1, type="integer", minimum=1),
        "error_threshold": Param(2, type="integer", minimum=-1),
        "process_count_per_node": Param(2, type="integer", minimum=1),
    },
)
def apr_test_failing_scoring() -> None:
    @task
    def write_inputs(run_id: str | None = None, params: dict[str, Any] | None = None) -> None:
        assert params is not None
        folder = ROOT / str(run_id) / "in"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(params["items"]):
            bad = i % params["bad_every"] == 0
            (folder / f"item{i:02d}.txt").write_text("bad\n" if bad else f"good {i}\n")

    score = ParallelRunOperator(
        task_id="score",
        parallel_run_config=CONFIG,
        inputs=RUN_FOLDER + "/in",
        output_path=RUN_FOLDER + "/out",
        mini_batch_size="{{ params.mini_batch_size }}",
        run_max_try="{{ params.run_max_try }}",
        error_threshold="{{ params.error_threshold }}",
        process_count_per_node="{{ params.process_count_per_node }}",
        retries=0,
    )
    write_inputs() >> score


apr_test_failing_scoring()
