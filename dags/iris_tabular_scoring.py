"""iris_tabular_scoring: batch inference over table rows (Azure ParallelRunStep with a TabularDataset).

What it does
    Predicts the species of the 150 rows of `iris.csv` with a pickled LogisticRegression. The CSV
    is split into mini-batches of about 1 KB (a tabular mini-batch never crosses a file boundary);
    the entry script `dags/scripts/score_iris.py` gets each one as a pandas DataFrame and returns it
    with a `prediction` column. `append_row_format="csv"` assembles the returned rows, in input
    order and with one header, into `<demo root>/output/iris_tabular_scoring/iris_predictions.csv`.

Trigger form
    mini_batch_size, as a size string ("1KB", "512", "1MB"; KB/MB/GB are x1024), and batch_format:
    what run() gets, a pandas DataFrame ("pandas") or a pyarrow Table ("pyarrow").

Data
    The first task writes the demo table and model under AIRFLOW_PARALLEL_RUN_DEMO_ROOT (read when
    the file is parsed; default `<repo>/demo_output`). For your own data use
    `TabularDataset.from_delimited_files`, `.from_parquet_files` or `.from_json_lines_files` with a
    path, glob, folder or fsspec URL (s3://, abfs://, gs://).
"""

from __future__ import annotations

import os
from pathlib import Path

import pendulum
from airflow.sdk import Param, dag, task

from airflow_parallel_run import ParallelRunConfig, ParallelRunOperator, TabularDataset

HERE = Path(__file__).resolve().parent
DEMO_ROOT = os.environ.get("AIRFLOW_PARALLEL_RUN_DEMO_ROOT", str(HERE.parent / "demo_output"))
IRIS_CSV = f"{DEMO_ROOT}/data/iris/iris.csv"
IRIS_MODEL = f"{DEMO_ROOT}/models/iris.pkl"

CONFIG = ParallelRunConfig(
    entry_script=str(HERE / "scripts" / "score_iris.py"),
    mini_batch_size="1KB",
    append_row_format="csv",
    append_row_file_name="iris_predictions.csv",
    process_count_per_node=2,
)


@dag(
    dag_id="iris_tabular_scoring",
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    tags=["parallel-run", "example", "tabular-input"],
    doc_md=__doc__,
    params={
        "mini_batch_size": Param(
            "1KB",
            type="string",
            pattern=r"^\s*\d+\s*([kKmMgG][bB])?\s*$",
            title="Mini-batch size",
            description="Bytes of CSV per mini-batch: 1024, 1KB, 10MB, 1GB (x1024 units).",
        ),
        "batch_format": Param(
            "pandas",
            type="string",
            enum=["pandas", "pyarrow"],
            title="Batch format",
            description="What run() receives per mini-batch: a pandas DataFrame or a pyarrow Table.",
        ),
    },
)
def iris_tabular_scoring() -> None:
    @task
    def prepare_demo_data() -> None:
        """Writes the demo table and model (idempotent; skipped when they exist)."""
        from airflow_parallel_run.demo import ensure_demo_data

        ensure_demo_data(DEMO_ROOT)

    score = ParallelRunOperator(
        task_id="score_iris",
        parallel_run_config=CONFIG,
        inputs=TabularDataset.from_delimited_files(IRIS_CSV),
        output_path=f"{DEMO_ROOT}/output/iris_tabular_scoring",
        side_inputs=[IRIS_MODEL],
        arguments=["--model", IRIS_MODEL],
        mini_batch_size="{{ params.mini_batch_size }}",
        batch_format="{{ params.batch_format }}",
    )
    prepare_demo_data() >> score


iris_tabular_scoring()
