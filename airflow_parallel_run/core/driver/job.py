"""What a job is asked to do (`JobRequest`), and running it (`run_job`): reuse first, then, only if some
mini-batch must run, a Dask cluster (the given client, a scheduler's, or an embedded one)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from distributed import Client

from ..config import ParallelRunConfig, check_embedded_process_count
from ..inputs.source import Dataset
from ..plan import Plan
from ..reuse.rerun import PreviousJob
from .cluster import dask_client
from .heap import older_objects_frozen
from .loop import JobDriver
from .progress import ProgressCallback


def new_job_id() -> str:
    return uuid.uuid4().hex[:16]


@dataclass(frozen=True)
class JobRequest:
    """What a job is asked to do: the config, inputs and output folder, and how to treat them. Picklable
    (the deferrable path ships it into the cluster); built by the CLI, the operator, and (later) other
    front ends such as a job-YAML runner. `protected_paths`: folders the output folder may not be,
    contain or lie inside (the Airflow layer passes AIRFLOW_HOME and the DAGs folder)."""

    config: ParallelRunConfig
    inputs: tuple[Dataset, ...]
    output_path: str
    side_inputs: tuple[str, ...] = ()
    arguments: tuple[str, ...] = ()
    storage_options: Mapping[str, Any] = field(default_factory=dict, repr=False)
    allow_reuse: bool = True
    cache_dir: str | None = None
    planned: Plan | None = None
    protected_paths: tuple[str, ...] = ()
    job_id: str = field(default_factory=new_job_id)
    rerun: PreviousJob | None = None  # re-run only this previous job's failed items (core/reuse/rerun.py)

    def driver(self, progress: ProgressCallback | None = None) -> JobDriver:
        """The job's driver: checks, plans, fingerprints and claims the output folder (nothing runs yet). A
        file job's plan streams: the driver has its first mini-batch, the rest is listed as the job runs."""
        return JobDriver(
            self.config,
            self.inputs,
            self.output_path,
            side_inputs=self.side_inputs,
            arguments=self.arguments,
            storage_options=self.storage_options,
            progress=progress,
            job_id=self.job_id,
            allow_reuse=self.allow_reuse,
            cache_dir=self.cache_dir,
            planned=self.planned,
            protected_paths=self.protected_paths,
            before_claim=self.rerun.check if self.rerun is not None else None,
            stream_plan=True,
        )


def run_job(
    config: ParallelRunConfig,
    inputs: Sequence[Dataset],
    output_path: str,
    *,
    side_inputs: Sequence[str] = (),
    arguments: Sequence[str] = (),
    scheduler: str | None = None,
    client: Client | None = None,
    security: Any = None,
    storage_options: Mapping[str, Any] | None = None,
    progress: ProgressCallback | None = None,
    on_driver: Callable[[JobDriver], None] | None = None,
    allow_reuse: bool = True,
    cache_dir: str | None = None,
    planned: Plan | None = None,
    on_client: Callable[[Client], None] | None = None,
    protected_paths: Sequence[str] = (),
    job_id: str | None = None,
    rerun: PreviousJob | None = None,
) -> dict[str, Any]:
    """Plans, runs and assembles one job; returns the summary dict (status succeeded/failed).

    `rerun` (`PreviousJob.load(output_path)`) runs only the items that failed in the job that wrote the
    output folder: give it that job's plan (`planned=rerun.plan`) and allow_reuse.

    `on_driver` sees the driver once it exists (it may cancel it); `on_client` sees the connected client
    before work starts (the operator records its dashboard).

    Raises `ConfigError`/`InputError` before anything runs when the configuration or inputs are bad.
    """
    request = JobRequest(
        config,
        tuple(inputs),
        output_path,
        tuple(side_inputs),
        tuple(arguments),
        dict(storage_options or {}),
        allow_reuse,
        cache_dir,
        planned,
        tuple(protected_paths),
        job_id or new_job_id(),
        rerun,
    )
    if scheduler is None and client is None:
        check_embedded_process_count(config)  # before planning: this host runs every process
    return execute_request(
        request,
        scheduler=scheduler,
        client=client,
        security=security,
        progress=progress,
        on_driver=on_driver,
        on_client=on_client,
    )


@older_objects_frozen()  # core/driver/heap.py: full collections skip what was there before
def execute_request(
    request: JobRequest,
    *,
    scheduler: str | None = None,
    client: Client | None = None,
    security: Any = None,
    progress: ProgressCallback | None = None,
    on_driver: Callable[[JobDriver], None] | None = None,
    on_client: Callable[[Client], None] | None = None,
) -> dict[str, Any]:
    """Runs a request: reused mini-batches first, and a cluster only when something must run."""
    driver = request.driver(progress)
    try:  # `on_driver` inside: a callback that raises (or an interrupt) still frees the output folder
        if on_driver is not None:
            on_driver(driver)
        reused = driver.find_reusable()
        if request.rerun is not None:
            reused = request.rerun.select(driver, reused)
        if not driver.needs_cluster(reused):  # everything hits: no cluster, no entry-script process
            return driver.execute(None, reused)
        processes, concurrency = request.config.processes_per_node, request.config.max_concurrency_per_process
        with dask_client(
            scheduler, processes, security=security, client=client, threads_per_worker=concurrency
        ) as dask:
            if on_client is not None:
                on_client(dask)
            return driver.execute(dask, reused)
    finally:
        driver.release()
