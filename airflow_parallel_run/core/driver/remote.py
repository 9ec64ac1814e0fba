"""A job whose driver runs inside the Dask cluster, so the caller (a deferred Airflow task) can leave.

The caller submits `run_job_in_cluster` once (fire-and-forget); the driver task secedes from its
worker's thread pool and drives the job with that worker's client. Everything the caller and a
trigger need lives in the scheduler's metadata under ``("airflow-parallel-run", job_id, …)``, where a
trigger polls it asynchronously:

- ``lines``: every progress line the driver said (the reuse line, "Started", progress, the result line),
  one key per line, in order, so a trigger or the resumed task can show all of them;
- ``beat``: a counter the driver task increases every second while it lives (a waiter that sees it stop
  moving knows the task is gone, without comparing clocks across hosts);
- ``cancel``: set by the caller to stop the job; its value is the reason the job's logs record;
- ``watch``: the mark a waiting trigger refreshes; a job with a ``watch_lease_s`` stops itself once it
  has not changed for that long (see core/driver/watch_lease.py);
- ``summary``: the final summary (``status`` ``error`` with ``error_type`` when the job could not run).

A task instance may own one job at a time: ``("airflow-parallel-run", "slots", <task key>)`` names the job
its latest try submitted, so a new try (after a clear or a retry) finds the previous one, stops it and
waits for it to end before it starts its own in the same output folder.

The entry script travels as file contents, because the Airflow worker's paths mean nothing on a
cluster host.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import shutil
import tempfile
import threading
import time
import traceback
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..config import ParallelRunConfig
from ..errors import ConfigError
from ..worker.spec import bundle_scripts
from .job import JobRequest
from .watch_lease import WatchLease, lease_reason, watch_key

METADATA_ROOT = "airflow-parallel-run"
#: The cancel reason when the caller gave none.
DEFAULT_CANCEL_REASON = "the task was stopped from Airflow (marked success/failed or cleared)"
#: A driver task whose beat has not moved for this long is taken to be gone (its worker died).
STALE_AFTER_S = 20.0
BEAT_INTERVAL_S = 1.0


def metadata_key(job_id: str, name: str) -> list[str]:
    return [METADATA_ROOT, job_id, name]


def slot_key(task_key: str) -> list[str]:
    return [METADATA_ROOT, "slots", task_key]


@dataclass(frozen=True)
class RemoteJob:
    """A `JobRequest` that travels into the cluster, with its code carried as bytes (the zip
    `bundle_scripts` makes, the same bundle the workers get) and the entry script's path inside it."""

    request: JobRequest
    code: bytes
    entry: str
    watch_lease_s: float | None = None  # None: nothing watches the job, it never stops for lack of it

    @property
    def job_id(self) -> str:
        return self.request.job_id

    @classmethod
    def of(cls, request: JobRequest, *, watch_lease_s: float | None = None) -> RemoteJob:
        bundle, _, entry, _ = bundle_scripts(
            request.config.entry_script_path, request.config.source_directory
        )
        return cls(request, bundle, entry, watch_lease_s)

    def _config_in(self, folder: str) -> ParallelRunConfig:
        config = self.request.config
        if config.source_directory:
            return dataclasses.replace(config, source_directory=folder)
        return dataclasses.replace(config, entry_script=os.path.join(folder, self.entry))

    def code_config(self) -> ParallelRunConfig:
        """The config pointing at this host's copy of the code, in a folder named by its content.

        The same code always lands in the same folder, so the engine recognises a re-run of the same
        job (its reuse line explains which input changed instead of "no earlier run of this job"). The
        folder lies in this user's private scratch root: a name computable from the code must never
        let a folder someone else made there stand in for it.
        """
        from ..worker.scratch import tmp_root

        target = os.path.join(tmp_root(), "driver-code", hashlib.sha256(self.code).hexdigest()[:32])
        if not os.path.isdir(target):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            staging = tempfile.mkdtemp(prefix="code-", dir=os.path.dirname(target))
            with zipfile.ZipFile(io.BytesIO(self.code)) as archive:
                archive.extractall(staging)
            try:
                os.rename(staging, target)
            except OSError:  # another driver on this host extracted it first
                shutil.rmtree(staging, ignore_errors=True)
        return self._config_in(target)


@dataclass(frozen=True)
class RemoteError:
    """A job that could not run in the cluster (bad settings, unreadable inputs, a busy output folder):
    the document the trigger and the resumed task get instead of a summary (``status`` ``error``)."""

    error_type: str
    message: str
    traceback: str = ""
    field: str | None = None  # the setting at fault, for a ConfigError (never retried)

    @classmethod
    def of(cls, exc: Exception, trace: str) -> RemoteError:
        if isinstance(exc, ConfigError):
            return cls(type(exc).__name__, str(exc), trace, exc.field)
        return cls(type(exc).__name__, f"{type(exc).__name__}: {exc}", trace)

    def to_dict(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "status": "error",
            "error_type": self.error_type,
            "message": self.message,
            "traceback": self.traceback,
        }
        if self.field is not None or self.error_type == "ConfigError":
            document["field"] = self.field
        return document

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RemoteError:
        return cls(
            str(data.get("error_type") or ""),
            str(data.get("message") or ""),
            str(data.get("traceback") or ""),
            data.get("field"),
        )


class _Watch:
    """Beats and obeys the cancel flag from the start of the driver task, before the driver exists; with
    a lease, sets the cancel flag itself once nobody refreshed the job's watch mark for that long."""

    def __init__(self, client: Any, job_id: str, watch_lease_s: float | None = None) -> None:
        self.client = client
        self.job_id = job_id
        self.lease = None if watch_lease_s is None else WatchLease(watch_lease_s)
        self.done = threading.Event()
        self.driver: Any = None
        self.reason: str | None = None
        self._lock = threading.Lock()
        threading.Thread(target=self._loop, name=f"apr-watch-{job_id}", daemon=True).start()

    def attach(self, driver: Any) -> None:
        with self._lock:
            self.driver = driver
            reason = self.reason
        if reason is not None:
            driver.cancel(reason)

    def _loop(self) -> None:
        beat = 0
        while not self.done.wait(BEAT_INTERVAL_S):
            beat += 1
            try:
                self.client.set_metadata(metadata_key(self.job_id, "beat"), beat)
                flag = self.client.get_metadata(metadata_key(self.job_id, "cancel"), default=None)
                if not flag and self.lease is not None:
                    mark = self.client.get_metadata(watch_key(self.job_id), default=None)
                    if self.lease.observe(mark):
                        flag = lease_reason(self.lease.lease_s)
                        if not cancel_job(self.client, self.job_id, flag):  # a stop came first: its words
                            flag = self.client.get_metadata(metadata_key(self.job_id, "cancel"), default=None)
            except Exception:  # noqa: BLE001 - keep watching through a scheduler hiccup
                continue
            if flag and self.reason is None:
                with self._lock:
                    self.reason = flag if isinstance(flag, str) else DEFAULT_CANCEL_REASON
                    driver = self.driver
                if driver is not None:
                    driver.cancel(self.reason)


def run_job_in_cluster(job: RemoteJob) -> dict[str, Any]:
    """The driver task. Publishes progress and the summary to the scheduler; obeys the cancel flag."""
    from distributed import get_client, secede

    from .job import execute_request

    client = get_client()
    secede()  # the driver waits for hours; it must not hold a worker thread
    flag = client.get_metadata(metadata_key(job.job_id, "cancel"), default=None)
    if flag:  # stopped (or superseded by a newer try) before a worker thread took it: touch nothing
        reason = flag if isinstance(flag, str) else DEFAULT_CANCEL_REASON
        summary: dict[str, Any] = {"status": "failed", "message": f"Job failed: {reason} (before it started)"}
        client.set_metadata(metadata_key(job.job_id, "summary"), summary)
        return summary
    watch = _Watch(client, job.job_id, job.watch_lease_s)
    said = 0

    def progress(line: str) -> None:
        nonlocal said
        client.set_metadata([METADATA_ROOT, job.job_id, "lines", f"{said:08d}"], line)
        client.set_metadata(metadata_key(job.job_id, "progress"), line)
        said += 1

    try:
        request = dataclasses.replace(job.request, config=job.code_config())
        summary = execute_request(request, client=client, progress=progress, on_driver=watch.attach)
    except Exception as exc:  # noqa: BLE001 - the waiting trigger must learn about it, not time out
        summary = RemoteError.of(exc, traceback.format_exc()).to_dict()
    finally:
        watch.done.set()
    client.set_metadata(metadata_key(job.job_id, "summary"), summary)
    return summary


def submit_job(client: Any, job: RemoteJob, task_key: str | None = None) -> str:
    """Starts the driver task in the cluster; it keeps running after `client` disconnects.

    With `task_key`, the job becomes the one that task instance owns (see `previous_job`).
    """
    from distributed import fire_and_forget

    if task_key is not None:
        client.set_metadata(slot_key(task_key), job.job_id)
    fire_and_forget(client.submit(run_job_in_cluster, job, key=f"apr-driver-{job.job_id}", pure=False))
    return job.job_id


def previous_job(client: Any, task_key: str) -> str | None:
    """The job the task instance's latest try submitted (None when it never submitted one)."""
    job_id = client.get_metadata(slot_key(task_key), default=None)
    return str(job_id) if job_id else None


def job_state(client: Any, job_id: str) -> tuple[dict[str, Any] | None, str | None]:
    """(summary when finished, last progress line)."""
    summary = client.get_metadata(metadata_key(job_id, "summary"), default=None)
    return summary, client.get_metadata(metadata_key(job_id, "progress"), default=None)


def job_lines(client: Any, job_id: str, start: int = 0) -> list[str]:
    """The job's progress lines from number `start` on, in order."""
    lines = client.get_metadata([METADATA_ROOT, job_id, "lines"], default=None) or {}
    return [str(lines[k]) for k in sorted(lines) if int(k) >= start]


def cancel_job(client: Any, job_id: str, reason: str = DEFAULT_CANCEL_REASON) -> bool:
    """Asks the job to stop, recording `reason` in its logs; a reason set earlier stays (the first wins).

    Returns False when the job had already been asked to stop.
    """
    if client.get_metadata(metadata_key(job_id, "cancel"), default=None):
        return False
    client.set_metadata(metadata_key(job_id, "cancel"), reason)
    return True


def wait_for_end(client: Any, job_id: str, timeout: float, poll: float = 0.5) -> dict[str, Any] | None:
    """Waits until the job published its summary (returned), its driver task stopped beating for
    `STALE_AFTER_S` (None: the task is gone), or `timeout` passed (None)."""
    deadline = time.monotonic() + timeout
    last_beat, moved = None, time.monotonic()
    while True:
        summary = client.get_metadata(metadata_key(job_id, "summary"), default=None)
        if summary is not None:
            return dict(summary)
        beat = client.get_metadata(metadata_key(job_id, "beat"), default=None)
        now = time.monotonic()
        if beat != last_beat:
            last_beat, moved = beat, now
        elif now - moved > STALE_AFTER_S:
            return None
        if now > deadline:
            return None
        time.sleep(poll)
