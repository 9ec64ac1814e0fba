"""digits_file_scoring: batch inference over image files (Azure ParallelRunStep with a FileDataset).

What it does
    Classifies the 1797 handwritten-digit PNGs of scikit-learn's digits set with a pickled
    LogisticRegression, 10 images per mini-batch, on an embedded Dask LocalCluster (127.0.0.1).
    The entry script `dags/scripts/score_digits.py` gets a list of local file paths per mini-batch
    and returns one line per image ("digit_0007.png 7"). With `output_action="append_row"` the
    lines of every mini-batch end up, in input order, in
    `<demo root>/output/digits_file_scoring/digits_predictions.txt`; logs in `.../logs/`.

Trigger form
    "Trigger DAG w/ config" shows three Params (the Airflow form of Azure's PipelineParameter):
    mini_batch_size, process_count_per_node and error_threshold. They are bound to the operator's
    templated arguments of the same name and override the `ParallelRunConfig` for that run.

Data
    The first task writes the demo data and models (no network; skipped when already there) under
    the folder named by the environment variable AIRFLOW_PARALLEL_RUN_DEMO_ROOT (read when the DAG
    file is parsed; default `<repo>/demo_output`). To score your own images, replace the paths below.

The output folder is declared as an Asset outlet (`file://.../digits_file_scoring`), so another DAG
can be scheduled on it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pendulum
from airflow.sdk import Param, dag, task

from airflow_parallel_run import ParallelRunConfig, ParallelRunOperator

HERE = Path(__file__).resolve().parent
DEMO_ROOT = os.environ.get("AIRFLOW_PARALLEL_RUN_DEMO_ROOT", str(HERE.parent / "demo_output"))
DIGITS_DIR = f"{DEMO_ROOT}/data/digits"
DIGITS_MODEL = f"{DEMO_ROOT}/models/digits.pkl"
OUTPUT = f"{DEMO_ROOT}/output/digits_file_scoring"

CONFIG = ParallelRunConfig(
    entry_script=str(HERE / "scripts" / "score_digits.py"),
    mini_batch_size=10,
    error_threshold=-1,
    output_action="append_row",
    append_row_file_name="digits_predictions.txt",
    process_count_per_node=2,
    run_invocation_timeout=60,
    run_max_try=3,
)


@dag(
    dag_id="digits_file_scoring",
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    tags=["parallel-run", "example", "file-input"],
    doc_md=__doc__,
    params={
        "mini_batch_size": Param(
            10, type="integer", minimum=1, title="Mini-batch size", description="Images per mini-batch."
        ),
        "process_count_per_node": Param(
            2,
            type="integer",
            minimum=1,
            maximum=64,
            title="Processes per node",
            description="Entry-script processes on each Dask host.",
        ),
        "error_threshold": Param(
            -1,
            type="integer",
            minimum=-1,
            title="Error threshold",
            description="Failed images tolerated over the whole run; -1 ignores failures.",
        ),
    },
)
def digits_file_scoring() -> None:
    @task
    def prepare_demo_data() -> None:
        """Writes the demo images and model (idempotent; skipped when they exist)."""
        from airflow_parallel_run.demo import ensure_demo_data

        ensure_demo_data(DEMO_ROOT)

    score = ParallelRunOperator(
        task_id="score_digits",
        parallel_run_config=CONFIG,
        inputs=f"{DIGITS_DIR}/*.png",  # a path/glob string becomes FileDataset.from_files(...)
        output_path=OUTPUT,
        side_inputs=[DIGITS_MODEL],  # copied to each worker; the argument below becomes the local copy
        arguments=["--model", DIGITS_MODEL],
        mini_batch_size="{{ params.mini_batch_size }}",
        process_count_per_node="{{ params.process_count_per_node }}",
        error_threshold="{{ params.error_threshold }}",
    )
    prepare_demo_data() >> score


digits_file_scoring()
