"""cluster_digits_scoring: the digits example on the compose file's Dask cluster (docker/compose.yaml).

What it does
    The same job as `digits_file_scoring` (1797 PNGs, a pickled model as side input, one line per
    image), but the mini-batches run on the external Dask cluster of the `dask_default` connection
    (AIRFLOW_CONN_DASK_DEFAULT=dask://dask-scheduler:8786): `node_count` hosts (Dask workers' hosts)
    with `process_count_per_node` entry-script processes each. The Airflow task is the job's driver.

Shared storage
    Inputs, the model, the output folder and the reuse cache are on the `shared` volume, mounted at
    the same path in the Airflow and Dask containers (AIRFLOW_PARALLEL_RUN_DEMO_ROOT and
    [parallel_run] cache_root). On a real cluster use object storage (s3://, abfs://, gs://) instead.

Logs
    `<demo root>/output/cluster_digits_scoring/logs/sys/node/<worker ip>/` has one folder per Dask
    host that ran mini-batches.
"""

from __future__ import annotations

import os
from pathlib import Path

import pendulum
from airflow.sdk import Param, dag, task

from airflow_parallel_run import ParallelRunConfig, ParallelRunOperator

HERE = Path(os.path.abspath(__file__)).parent  # not resolve(): the mounts (or symlinks) define the layout
SCRIPTS = HERE.parent / "examples" / "scripts"  # the repository's dags/ is mounted at dags/examples
DEMO_ROOT = os.environ.get("AIRFLOW_PARALLEL_RUN_DEMO_ROOT", "/opt/airflow/shared/demo")
DIGITS_DIR = f"{DEMO_ROOT}/data/digits"
DIGITS_MODEL = f"{DEMO_ROOT}/models/digits.pkl"

CONFIG = ParallelRunConfig(
    entry_script=str(SCRIPTS / "score_digits.py"),
    mini_batch_size=25,
    append_row_file_name="digits_predictions.txt",
    process_count_per_node=2,
)


@dag(
    dag_id="cluster_digits_scoring",
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    tags=["parallel-run", "example", "dask-cluster"],
    doc_md=__doc__,
    params={
        "node_count": Param(2, type="integer", minimum=1, title="Hosts", description="Dask hosts to use."),
        "process_count_per_node": Param(2, type="integer", minimum=1, title="Processes per node"),
    },
)
def cluster_digits_scoring() -> None:
    @task
    def prepare_demo_data() -> None:
        """Writes the demo images and model to the shared volume (skipped when they exist)."""
        if not (Path(DIGITS_MODEL).is_file() and any(Path(DIGITS_DIR).glob("*.png"))):
            from airflow_parallel_run.demo import prepare

            prepare(DEMO_ROOT)

    score = ParallelRunOperator(
        task_id="score_digits_on_dask",
        parallel_run_config=CONFIG,
        inputs=f"{DIGITS_DIR}/*.png",
        output_path=f"{DEMO_ROOT}/output/cluster_digits_scoring",
        side_inputs=[DIGITS_MODEL],
        arguments=["--model", DIGITS_MODEL],
        dask_conn_id="dask_default",
        node_count="{{ params.node_count }}",
        process_count_per_node="{{ params.process_count_per_node }}",
    )
    prepare_demo_data() >> score


cluster_digits_scoring()
