"""side_inputs_scoring: an entry script that reads a lookup table passed as a side input.

What it does
    Classifies the first 200 digit images (two globs in one input) and writes each prediction with
    its English word: "digit_0007.png 7 seven". The word comes from `labels.csv`, a small lookup
    table given in `side_inputs`: every Dask worker gets a local copy before the entry script
    starts, and because the same path also appears in `arguments`, the script's `--labels` option
    receives the path of that local copy (Azure ParallelRunStep's `side_inputs` + `arguments`).
    The model is passed the same way. Output:
    `<demo root>/output/side_inputs_scoring/digits_with_words.txt`.

Data
    The first task writes the demo images, model and lookup table under
    AIRFLOW_PARALLEL_RUN_DEMO_ROOT (read when the file is parsed; default `<repo>/demo_output`).
"""

from __future__ import annotations

import os
from pathlib import Path

import pendulum
from airflow.sdk import dag, task

from airflow_parallel_run import ParallelRunConfig, ParallelRunOperator

HERE = Path(__file__).resolve().parent
DEMO_ROOT = os.environ.get("AIRFLOW_PARALLEL_RUN_DEMO_ROOT", str(HERE.parent / "demo_output"))
DIGITS_DIR = f"{DEMO_ROOT}/data/digits"
DIGITS_MODEL = f"{DEMO_ROOT}/models/digits.pkl"
LABELS_CSV = f"{DEMO_ROOT}/data/labels.csv"

CONFIG = ParallelRunConfig(
    entry_script=str(HERE / "scripts" / "score_digits.py"),
    mini_batch_size=20,
    append_row_file_name="digits_with_words.txt",
    process_count_per_node=2,
)


@dag(
    dag_id="side_inputs_scoring",
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    tags=["parallel-run", "example", "side-inputs"],
    doc_md=__doc__,
)
def side_inputs_scoring() -> None:
    @task
    def prepare_demo_data() -> None:
        """Writes the demo images, model and lookup table (idempotent; skipped when they exist)."""
        from airflow_parallel_run.demo import ensure_demo_data

        ensure_demo_data(DEMO_ROOT)

    score = ParallelRunOperator(
        task_id="score_digits_with_words",
        parallel_run_config=CONFIG,
        inputs=[f"{DIGITS_DIR}/digit_00*.png", f"{DIGITS_DIR}/digit_01*.png"],
        output_path=f"{DEMO_ROOT}/output/side_inputs_scoring",
        side_inputs=[LABELS_CSV, DIGITS_MODEL],
        arguments=["--model", DIGITS_MODEL, "--labels", LABELS_CSV],
    )
    prepare_demo_data() >> score


side_inputs_scoring()
