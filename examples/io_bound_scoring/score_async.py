"""An I/O-bound entry script: each item is one call to an HTTP model endpoint.

`async def run(mini_batch)` lets one entry-script process keep several mini-batches in flight
(`max_concurrency_per_process`); within a mini-batch the items are scored with a bounded number of
requests at once. The endpoint is `SCORING_URL` (e.g. ``http://127.0.0.1:8000/score``); each request is
``GET <SCORING_URL>?item=<file name>`` and the answer's body is the item's score line.

Run it (see docs/io-bound-scoring.md):

    airflow-parallel-run run --input images/ --output out/ \\
        --entry-script examples/io_bound_scoring/score_async.py \\
        --process-count-per-node 2 --max-concurrency-per-process 16 \\
        --run-invocation-timeout 120 --environment-variables SCORING_URL=http://127.0.0.1:8000/score

It uses `httpx` (installed with Airflow; install it on remote Dask workers too). Everything it awaits is
non-blocking: a blocking call (`requests`, `time.sleep`) inside an async run() stalls every mini-batch of
the process, and past `run_invocation_timeout` the process is killed and replaced.
"""

from __future__ import annotations

import asyncio
import os

import httpx
from azureml_user.parallel_run import EntryScript

PER_MINI_BATCH = 4  # requests at once for one mini-batch (x max_concurrency_per_process per process)

client: httpx.AsyncClient | None = None
url = ""


async def init() -> None:
    """One connection pool per process, shared by every mini-batch in flight."""
    global client, url
    url = os.environ["SCORING_URL"]
    client = httpx.AsyncClient(timeout=httpx.Timeout(30.0), limits=httpx.Limits(max_connections=64))
    EntryScript().logger.info("scoring against %s", url)


async def _score(gate: asyncio.Semaphore, path: str) -> str:
    assert client is not None
    async with gate:
        answer = await client.get(url, params={"item": os.path.basename(path)})
        answer.raise_for_status()  # an error fails the mini-batch, which is retried (run_max_try)
        return answer.text


async def run(mini_batch: list[str]) -> list[str]:
    """One score line per file, in the mini-batch's order (gather keeps it)."""
    gate = asyncio.Semaphore(PER_MINI_BATCH)
    return list(await asyncio.gather(*(_score(gate, path) for path in mini_batch)))


async def shutdown() -> None:
    if client is not None:
        await client.aclose()
