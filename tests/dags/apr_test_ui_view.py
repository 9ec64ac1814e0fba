"""Test-only DAG for the "Parallel run" UI: a job with failed mini-batches and a mapped job.

`score` runs 24 one-file mini-batches; 3 files hold "bad" and fail (run_max_try 2, so 6 failed
attempts), the job still succeeds (error_threshold -1). It reads through the `apr_ui_storage`
connection and sets an environment variable: the UI tests check that neither secret reaches a page or
a download. `score_mapped` is the same operator mapped over two input folders.
"""

from __future__ import annotations

import os
from pathlib import Path

import pendulum
from airflow.sdk import dag, task

from airflow_parallel_run import ParallelRunConfig, ParallelRunOperator

HERE = Path(__file__).resolve().parent
ROOT = Path(os.environ.get("AIRFLOW_PARALLEL_RUN_DEMO_ROOT", "/tmp/apr-test")) / "ui_view"
ENV_SECRET = "env-secret-5d0b1c"

CONFIG = ParallelRunConfig(
    entry_script=str(HERE / "scripts" / "fail_some.py"),
    mini_batch_size=1,
    run_max_try=2,
    process_count_per_node=2,
    environment_variables={"APR_UI_TOKEN": ENV_SECRET},
    append_row_file_name="scores.txt",
)


@dag(
    dag_id="apr_test_ui_view",
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    tags=["test"],
)
def apr_test_ui_view() -> None:
    @task
    def write_inputs() -> None:
        for name, count in (("in", 24), ("in_a", 3), ("in_b", 4)):
            folder = ROOT / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                bad = name == "in" and i in (3, 10, 17)
                (folder / f"item{i:02d}.txt").write_text("bad\n" if bad else f"good {name} {i}\n")

    score = ParallelRunOperator(
        task_id="score",
        parallel_run_config=CONFIG,
        inputs=str(ROOT / "in"),
        output_path=str(ROOT / "out"),
        storage_conn_id="apr_ui_storage",
        retries=0,
    )
    mapped = ParallelRunOperator.partial(
        task_id="score_mapped",
        parallel_run_config=CONFIG,
        output_path=str(ROOT / "mapped_out") + "/{{ ti.map_index }}",
        retries=0,
    ).expand(inputs=[str(ROOT / "in_a"), str(ROOT / "in_b")])
    inputs = write_inputs()
    inputs >> score
    inputs >> mapped


apr_test_ui_view()
