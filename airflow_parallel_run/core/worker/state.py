"""The job state of a worker process: the jobs stopped here, each job's live entry-script processes, its
unpacked code and downloaded side inputs, and the broadcasts the driver sends (`stop_job`, `shutdown_job`).

`_STATE` makes "is the job stopped?" and "start a process" one step, so `stop_job` never misses a
process that was about to start.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
import zipfile
from typing import TYPE_CHECKING, Any

from ..storage import filesystem, is_local, local_path
from .monitor import stop_monitor
from .process_tree import end_leftovers
from .scratch import ensure, tmp_root, upload_logs
from .spec import JobSpec

if TYPE_CHECKING:
    from .process import EntryProcess

SHUTDOWN_GRACE_S = 10.0  # for the entry script's shutdown() at the end of a job (all processes at once)
_STOPPED_KEEP = 1000  # stopped job ids remembered per worker process

_LOCK = threading.Lock()
_BUNDLES: dict[tuple[str, str], str] = {}
_SIDE_INPUTS: dict[tuple[str, str], str] = {}

# Jobs stopped on this worker process, and the entry-script processes of each job that are starting or
# running. `_STATE` makes "is the job stopped?" and "start a process" one step, so `stop_job` never
# misses a process that was about to start.
_STATE = threading.Lock()
_STOPPED: dict[str, float] = {}
_LIVE: dict[str, set[EntryProcess]] = {}
_LEFTOVERS: dict[str, int] = {}


def is_stopped(job_id: str) -> bool:
    return job_id in _STOPPED


def _mark_stopped(job_id: str) -> None:
    """Call with `_STATE` held."""
    _STOPPED[job_id] = time.time()
    while len(_STOPPED) > _STOPPED_KEEP:
        _STOPPED.pop(next(iter(_STOPPED)))


def stop_job(job_id: str) -> int:
    """Broadcast by the driver when the job stops: no new process or mini-batch of it starts on this
    worker, and its running entry-script processes are killed now.

    Runs in the worker's event loop, so it only signals the entry-script processes themselves; the
    attempts waiting on them see them end within `POLL_S`, report CANCELLED and end (and count) what
    they started, their process groups included (`EntryProcess.kill`). Returns how many it killed.
    """
    with _STATE:
        _mark_stopped(job_id)
        killed = 0
        for process in _LIVE.get(job_id, ()):
            if process.proc is not None and process.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(process.proc.pid, signal.SIGKILL)
                killed += 1
    return killed


def _extract_bundle(spec: JobSpec) -> str:
    """Unpacks the job's code into a new private folder (mkdtemp: 0700, ours) once per job and process.

    A folder is never found by name and trusted: the bundle hash is computable from the script, so a
    name derived from it could be prepared by someone else on a shared host. Removed by `shutdown_job`.
    """
    with _LOCK:
        key = (spec.job_id, spec.bundle_hash)
        if key in _BUNDLES and os.path.isdir(_BUNDLES[key]):
            return _BUNDLES[key]
        target = tempfile.mkdtemp(prefix=f"code-{spec.job_id}-", dir=ensure(os.path.join(tmp_root(), "code")))
        with zipfile.ZipFile(io.BytesIO(spec.script_bundle)) as archive:
            archive.extractall(target)
        _BUNDLES[key] = target
        return target


def _local_side_input(spec: JobSpec, url: str) -> str:
    """Side inputs are local on every worker: local paths as they are, remote ones downloaded once."""
    if is_local(url):
        return local_path(url)
    with _LOCK:
        key = (spec.job_id, url)
        if key not in _SIDE_INPUTS:
            fs, path = filesystem(url, spec.storage_options)
            target = os.path.join(
                tmp_root(), "side", spec.job_id, str(len(_SIDE_INPUTS)), os.path.basename(path.rstrip("/"))
            )
            os.makedirs(os.path.dirname(target), exist_ok=True)
            fs.get(path, target, recursive=fs.isdir(path))
            _SIDE_INPUTS[key] = target
        return _SIDE_INPUTS[key]


_PROCESSES: dict[tuple[str, int], EntryProcess] = {}


def shutdown_job(
    job_id: str, log_url: str | None = None, storage_options: dict[str, Any] | None = None
) -> dict[str, int]:
    """Ends this worker's entry-script processes of `job_id` and syncs remote logs.

    Idle processes run the script's shutdown() (all at once, `SHUTDOWN_GRACE_S` in all); any process
    still starting or running (a stopped job) is killed. Every process they started goes with them.
    Returns {"processes": entry-script processes ended, "leftovers": other processes ended}.
    """
    with _STATE:
        _mark_stopped(job_id)  # an attempt arriving after this starts nothing
        idle = [_PROCESSES.pop(k) for k in [k for k in _PROCESSES if k[0] == job_id]]
        busy = [p for p in _LIVE.get(job_id, set()) if p not in idle]
    for process in idle:
        process.request_shutdown()
    deadline = time.monotonic() + SHUTDOWN_GRACE_S
    for process in idle:
        process.finish_shutdown(deadline)
    for process in busy:
        process.kill()
    with contextlib.suppress(Exception):  # processes of entry processes that ended earlier
        stray = end_leftovers(None, f"{job_id}/{os.getpid()}/")
        if stray:
            with _STATE:
                _LEFTOVERS[job_id] = _LEFTOVERS.get(job_id, 0) + len(stray)
    with _STATE:
        _LIVE.pop(job_id, None)
        leftovers = _LEFTOVERS.pop(job_id, 0)
    stop_monitor(job_id)  # its last sample lands before the logs are synced
    if log_url and not is_local(log_url):
        try:
            upload_logs(job_id, log_url, storage_options or {})
        except Exception as exc:  # noqa: BLE001 - never raise: Dask would log our arguments (credentials)
            logging.getLogger("airflow_parallel_run").warning(
                "could not upload the logs of job %s: %s: %s", job_id, type(exc).__name__, exc
            )
    for job, _url in [k for k in _SIDE_INPUTS if k[0] == job_id]:
        _SIDE_INPUTS.pop((job, _url), None)
    with _LOCK:
        for bundle in [k for k in _BUNDLES if k[0] == job_id]:
            shutil.rmtree(_BUNDLES.pop(bundle), ignore_errors=True)
    return {"processes": len(idle) + len(busy), "leftovers": leftovers}
