"""An I/O-bound entry script: each item is one call to an HTTP model endpoint.

`async def run(mini_batch)` lets one entry-script process keep several mini-batches in flight
(`max_concurrency_per_process`), and each mini-batch sends its items at once (`asyncio.gather`). One
semaphore per process bounds the requests in flight (`SCORING_REQUESTS_PER_PROCESS`, default 16), so
the endpoint's load is `process_count_per_node` x that bound per node, whatever the mini-batch size or
`max_concurrency_per_process`; the mini-batches in flight keep the bound filled, with no idle gap
between one mini-batch's last answer and the next one's first request. The endpoint is `SCORING_URL`
(e.g. ``http://127.0.0.1:8000/score``); each request is ``GET <SCORING_URL>?item=<file name>`` and the
answer's body is the item's score line.

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

client: httpx.AsyncClient | None = None
gate: asyncio.Semaphore | None = None
url = ""


async def init() -> None:
    """One connection pool and one bound per process, shared by every mini-batch in flight."""
    global client, gate, url
    url = os.environ["SCORING_URL"]
    bound = int(os.environ.get("SCORING_REQUESTS_PER_PROCESS", "16"))
    gate = asyncio.Semaphore(bound)
    client = httpx.AsyncClient(timeout=httpx.Timeout(30.0), limits=httpx.Limits(max_connections=bound))
    EntryScript().logger.info("scoring against %s, at most %d requests at once", url, bound)


async def _score(path: str) -> str:
    assert client is not None and gate is not None
    async with gate:
        answer = await client.get(url, params={"item": os.path.basename(path)})
        answer.raise_for_status()  # an error fails the mini-batch, which is retried (run_max_try)
        return answer.text


async def run(mini_batch: list[str]) -> list[str]:
    """One score line per file, in the mini-batch's order (gather keeps it)."""
    return list(await asyncio.gather(*(_score(path) for path in mini_batch)))


async def shutdown() -> None:
    if client is not None:
        await client.aclose()
