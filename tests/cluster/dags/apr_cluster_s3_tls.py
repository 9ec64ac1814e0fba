"""Test-only DAG: S3 inputs, side input, output, logs and cache; mini-batches on an external TLS Dask cluster.

The test sets APR_CLUSTER_BUCKET (a bucket on moto's S3 server), the `apr_cluster_dask` connection
(TLS scheduler) and the `apr_cluster_s3` connection (type `aws`: key, secret, endpoint_url) before
parsing, and the reuse cache root with AIRFLOW__PARALLEL_RUN__CACHE_ROOT.
"""

from __future__ import annotations

import os
from pathlib import Path

import pendulum
from airflow.sdk import Param, dag

from airflow_parallel_run import ParallelRunConfig, ParallelRunOperator

HERE = Path(__file__).resolve().parent
BUCKET = os.environ.get("APR_CLUSTER_BUCKET", "apr-cluster-test")
LABELS = f"s3://{BUCKET}/side/labels.txt"

CONFIG = ParallelRunConfig(
    entry_script=str(HERE / "scripts" / "label_digits.py"),
    mini_batch_size=2,
    process_count_per_node=1,
    append_row_file_name="labels.txt",
)


@dag(
    dag_id="apr_cluster_s3_tls",
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    tags=["test"],
    params={
        "node_count": Param(2, type="integer", minimum=1, title="Hosts"),
        "output": Param("latest", type="string", title="Output folder name"),
    },
)
def apr_cluster_s3_tls() -> None:
    ParallelRunOperator(
        task_id="score",
        parallel_run_config=CONFIG,
        inputs=f"s3://{BUCKET}/in/",
        output_path=f"s3://{BUCKET}/out/{{{{ params.output }}}}",
        side_inputs=[LABELS],
        arguments=["--labels", LABELS],
        dask_conn_id="apr_cluster_dask",
        storage_conn_id="apr_cluster_s3",
        node_count="{{ params.node_count }}",
    )


apr_cluster_s3_tls()
