"""apr_bench_expand: the peer of bench/airflow_bench.py, mini-batches as dynamically mapped tasks.

`list_mini_batches` lists the files of the folder `params.input` and returns them in lists of
`params.mini_batch_size`; `score` is `.expand()`-ed over that list, one mapped task instance per
mini-batch. The mapped task does less than the engine's no-op run() (it only checks that its files
exist and returns nothing, so it pushes no XCom), which favours this side. Above
`[core] max_map_length` (default 1024) mini-batches the upstream's push is refused and the run fails.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import Param, dag, get_current_context, task


@dag(
    dag_id="apr_bench_expand",
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["parallel-run", "bench"],
    doc_md=__doc__,
    params={
        "input": Param(None, type=["null", "string"], description="folder of input files"),
        "mini_batch_size": Param(1, type="integer", minimum=1),
    },
)
def apr_bench_expand() -> None:
    @task
    def list_mini_batches() -> list[list[str]]:
        params = get_current_context()["params"]
        folder, size = str(params["input"]), int(params["mini_batch_size"])
        paths: list[str] = []
        for current, _dirs, files in os.walk(folder):
            paths.extend(os.path.join(current, name) for name in files)
        paths.sort()
        return [paths[i : i + size] for i in range(0, len(paths), size)]

    @task
    def score(mini_batch: list[str]) -> None:
        for path in mini_batch:
            os.stat(path)

    score.expand(mini_batch=list_mini_batches())


apr_bench_expand()
