"""A job whose driver runs inside the Dask cluster, so the caller (a deferred Airflow task) can leave.

The caller submits `run_job_in_cluster` once (fire-and-forget); the driver task secedes from its
worker's thread pool and drives the job with that worker's client. Progress lines, the final
summary and a cancel flag live in the scheduler's metadata under `("airflow-parallel-run", job_id, …)`,
where a trigger polls them asynchronously. The entry script travels as file contents, because the
Airflow worker's paths mean nothing on a cluster host.
"""

from __future__ import annotations

import dataclasses
import io
import os
import tempfile
import threading
import traceback
import uuid
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .config import ParallelRunConfig
from .datasets import Dataset
from .jobspec import bundle_scripts
from .planner import Plan

METADATA_ROOT = "airflow-parallel-run"


def metadata_key(job_id: str, name: str) -> list[str]:
    return [METADATA_ROOT, job_id, name]


@dataclass(frozen=True)
class RemoteJob:
    """Everything `run_job` needs, picklable, with the code carried as bytes."""

    config: ParallelRunConfig
    inputs: tuple[Dataset, ...]
    output_path: str
    code: bytes  # the zip `bundle_scripts` makes (the same bundle the workers get)
    entry: str  # the entry script's path inside it
    side_inputs: tuple[str, ...] = ()
    arguments: tuple[str, ...] = ()
    storage_options: dict[str, Any] = field(default_factory=dict)
    allow_reuse: bool = True
    cache_dir: str | None = None
    planned: Plan | None = None
    job_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])

    @classmethod
    def build(
        cls,
        config: ParallelRunConfig,
        inputs: Sequence[Dataset],
        output_path: str,
        *,
        side_inputs: Sequence[str] = (),
        arguments: Sequence[str] = (),
        storage_options: Mapping[str, Any] | None = None,
        allow_reuse: bool = True,
        cache_dir: str | None = None,
        planned: Plan | None = None,
    ) -> RemoteJob:
        bundle, _, entry, _ = bundle_scripts(config.entry_script_path, config.source_directory)
        return cls(
            config,
            tuple(inputs),
            output_path,
            bundle,
            entry,
            tuple(side_inputs),
            tuple(arguments),
            dict(storage_options or {}),
            allow_reuse,
            cache_dir,
            planned,
        )

    def localised_config(self, folder: str) -> ParallelRunConfig:
        """The config pointing at a copy of the code in `folder` (on the cluster host)."""
        with zipfile.ZipFile(io.BytesIO(self.code)) as archive:
            archive.extractall(folder)
        if self.config.source_directory:
            return dataclasses.replace(self.config, source_directory=folder)
        return dataclasses.replace(self.config, entry_script=os.path.join(folder, self.entry))


def run_job_in_cluster(job: RemoteJob) -> dict[str, Any]:
    """The driver task. Publishes progress and the summary to the scheduler; obeys the cancel flag."""
    from distributed import get_client, secede

    from .driver import JobDriver, run_job

    client = get_client()
    secede()  # the driver waits for hours; it must not hold a worker thread
    done = threading.Event()

    def progress(line: str) -> None:
        client.set_metadata(metadata_key(job.job_id, "progress"), line)

    def watch(driver: JobDriver) -> None:
        def loop() -> None:
            while not done.wait(1.0):
                try:
                    if client.get_metadata(metadata_key(job.job_id, "cancel"), default=None):
                        driver.cancel("the Airflow task was marked failed or cleared")
                        return
                except Exception:  # noqa: BLE001 - keep watching through a scheduler hiccup
                    continue

        threading.Thread(target=loop, name=f"apr-cancel-{job.job_id}", daemon=True).start()

    with tempfile.TemporaryDirectory(prefix="apr-code-") as folder:
        try:
            summary = run_job(
                job.localised_config(folder),
                list(job.inputs),
                job.output_path,
                side_inputs=job.side_inputs,
                arguments=job.arguments,
                client=client,
                storage_options=job.storage_options,
                progress=progress,
                on_driver=watch,
                allow_reuse=job.allow_reuse,
                cache_dir=job.cache_dir,
                planned=job.planned,
            )
        except Exception as exc:  # noqa: BLE001 - the waiting trigger must learn about it, not time out
            summary = {
                "status": "error",
                "message": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(),
            }
        finally:
            done.set()
    client.set_metadata(metadata_key(job.job_id, "summary"), summary)
    return summary


def submit_job(client: Any, job: RemoteJob) -> str:
    """Starts the driver task in the cluster; it keeps running after `client` disconnects."""
    from distributed import fire_and_forget

    fire_and_forget(client.submit(run_job_in_cluster, job, key=f"apr-driver-{job.job_id}", pure=False))
    return job.job_id


def job_state(client: Any, job_id: str) -> tuple[dict[str, Any] | None, str | None]:
    """(summary when finished, last progress line)."""
    summary = client.get_metadata(metadata_key(job_id, "summary"), default=None)
    return summary, client.get_metadata(metadata_key(job_id, "progress"), default=None)


def cancel_job(client: Any, job_id: str) -> None:
    client.set_metadata(metadata_key(job_id, "cancel"), True)
