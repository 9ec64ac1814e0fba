"""The Dask task: one attempt of one mini-batch, run in an entry-script process leased from the job's worker
plugin (started, with init(), when none has room), reported as an `AttemptResult` (its counts, never its data)."""

from __future__ import annotations

import os
import time
import traceback
import uuid
from typing import Any

from ..attempt import AttemptResult, AttemptStage, AttemptStatus
from ..minibatch import MiniBatch
from .messages import (
    NEVER_STARTED,
    Cancelled,
    Done,
    Failed,
    Loaded,
    Ready,
    Run,
    TimedOut,
)
from .plugin import JobWorker, job_worker
from .process import ASYNC_CANCEL_GRACE_S, EntryProcess, StopCheck
from .scratch import now

EVENT_POLL_S = 1.0  # how often an attempt asks the scheduler's stop Event (a round trip)


class _StopCheck:
    """Has the job stopped? The worker's flag (set by the stop broadcast) at every call; the job's Dask
    Event (set by the driver too, for workers that missed the broadcast) at most every `EVENT_POLL_S`."""

    def __init__(self, plugin: JobWorker) -> None:
        self.plugin = plugin
        self._event: Any = None
        self._asked = time.monotonic()

    def ask_scheduler(self) -> bool:
        self._asked = time.monotonic()
        try:
            if self._event is None:
                from distributed import Event

                self._event = Event(f"apr-stop-{self.plugin.spec.job_id}")
            stopped = bool(self._event.is_set())
        except Exception:  # noqa: BLE001 - no scheduler (tests), or a lost one: the attempt goes on
            return False
        if stopped:
            self.plugin.mark_stopped()
        return stopped

    def __call__(self) -> bool:
        if self.plugin.stopped:
            return True
        if time.monotonic() - self._asked >= EVENT_POLL_S:
            return self.ask_scheduler()
        return False


def run_mini_batch(name: str, mini_batch: MiniBatch, attempt: int) -> AttemptResult:
    """The Dask task: runs one attempt of one mini-batch of the job whose worker plugin is called `name`,
    and reports its counts (never its data).

    Its part, items and output_dir files are named by a token of this run (`JobSpec.files_url`): a worker
    lost after the driver read this result makes the scheduler run the task again under the same key,
    and that run writes beside this one's files, never over the ones the driver publishes."""
    started = time.monotonic()
    result = AttemptResult(
        mini_batch.index,
        attempt,
        AttemptStatus.RUN_EXCEPTION,
        start_time=now(),
        total=mini_batch.items,
        stage=AttemptStage.START,
    )
    plugin = job_worker(name)
    if plugin is None or plugin.stopped:  # the job ended here, or stopped before this was queued
        return _never_started(result, started)
    stop_check = _StopCheck(plugin)
    if not plugin.has_room() and stop_check.ask_scheduler():  # a new process (init() and all) only
        return _never_started(result, started)  # for a running job; no log files for a stopped one
    process, starter = plugin.lease()
    try:
        ready = _ready(process, starter, stop_check)
        if isinstance(ready, Failed):
            if ready.stage is AttemptStage.START and ready.status is AttemptStatus.CANCELLED:
                return _never_started(result, started)  # stopped between the check and the start
            return _failed(result, process, ready, started)
        plugin.note_ready()
        return _run_on(process, mini_batch, result, stop_check, started)
    except Exception as exc:  # noqa: BLE001 - runner bugs are reported per attempt, not lost
        failure = Failed(
            AttemptStatus.SYSTEM_ERROR, result.stage, f"{type(exc).__name__}: {exc}", traceback.format_exc()
        )
        return _failed(result, process, failure, started)
    finally:
        plugin.release(process)


def _ready(process: EntryProcess, starter: bool, stop_check: _StopCheck) -> Ready | Failed:
    """The leased process, started (init() and all) by the attempt that leased it first; the others that
    leased it meanwhile wait for that start and share its outcome (a stop found by `start` included)."""
    if not starter:
        return process.await_start(stop_check)
    return process.start_once(stop_check)


def _run_on(
    process: EntryProcess, mini_batch: MiniBatch, result: AttemptResult, stop_check: StopCheck, started: float
) -> AttemptResult:
    """Sends the attempt to a ready process and waits for it to be read (`load_timeout`), then run()
    (`run_invocation_timeout`; for an async run(), which the process cancels itself at the timeout,
    `ASYNC_CANCEL_GRACE_S` more before the process is killed as blocked). Answers are those of this
    attempt (`key`): other attempts may be in flight in the same process."""
    spec = process.spec
    key = (mini_batch.index, result.attempt)
    result.node, result.process = process.node, process.name
    result.stage = AttemptStage.LOAD
    process.node_log(f"picked mini-batch {mini_batch.index} attempt {result.attempt}: {mini_batch.label()}")
    run_token = uuid.uuid4().hex[:12]  # this run's files are its own (see `run_mini_batch`)
    result.files_url = spec.files_url(mini_batch.index, result.attempt, run_token)
    run = Run(
        mini_batch,
        result.attempt,
        spec.part_url(mini_batch.index, result.attempt, run_token),
        result.files_url,
        spec.items_url(mini_batch.index, result.attempt, run_token),
        spec.partial.get(mini_batch.index),
    )
    running = (mini_batch.index, result.attempt)
    process.running[running] = time.monotonic()  # for the driver's watchdog (`EntryProcess.activity`)
    try:
        outcome = process.request(run, spec.load_timeout, stop_check, key)
        load_seconds = 0.0
        if isinstance(outcome, Loaded):
            result.stage = AttemptStage.RUN
            result.total, load_seconds = outcome.total, outcome.load_seconds
            limit = spec.run_invocation_timeout + (ASYNC_CANCEL_GRACE_S if process.async_run else 0.0)
            outcome = process.wait(limit, stop_check, key)
    finally:
        process.running.pop(running, None)
        process.forget_mail(key)
    if isinstance(outcome, Done):
        return _done(result, process, outcome, load_seconds, started)
    if isinstance(outcome, (TimedOut, Cancelled)):
        if isinstance(outcome, TimedOut) and process.async_run:
            # which coroutine blocks is not known here: every attempt in flight times out together
            process.kill_reason = (
                "the runner stopped it because its event loop stayed blocked past run_invocation_timeout"
            )
        process.kill()
    return _failed(result, process, process.failure(outcome, result.stage, mini_batch.index), started)


def _done(
    result: AttemptResult, process: EntryProcess, done: Done, load_seconds: float, started: float
) -> AttemptResult:
    result.status = AttemptStatus.RUN_DONE
    result.total, result.succeeded = done.total, done.succeeded
    result.run_seconds, result.cpu_seconds = done.run_seconds, done.cpu_seconds
    result.part_url, result.columns, result.schema = done.part_url, list(done.columns), done.schema
    result.files, result.uncacheable = list(done.files), done.uncacheable
    result.item_errors = [(position, error) for position, error, _trace in done.item_errors]
    result.items_url = done.items_url
    result.inputs_identity = done.inputs_identity
    result.elapsed_seconds = time.monotonic() - started
    process.remember_descendants()
    for position, error, trace in done.item_errors:  # each failed item's error, as an attempt's would be
        process.error_log(
            f"mini-batch {result.index} attempt {result.attempt} item {position} failed: {error}", trace
        )
    if done.item_errors:
        result.error_file = os.path.relpath(process.paths["error"], process.log_root)
    process.node_log(
        f"completed mini-batch {result.index} attempt {result.attempt}: entry-script pid "
        f"{process.proc.pid if process.proc else '?'}, total {result.total}, succeeded {result.succeeded}, "
        f"failed {result.failed}, started {result.start_time} UTC, elapsed {result.elapsed_seconds:.3f}s, "
        f"process CPU {result.cpu_seconds:.3f}s, read {load_seconds:.3f}s, run() {result.run_seconds:.3f}s"
    )
    return result


def _never_started(result: AttemptResult, started: float) -> AttemptResult:
    """An attempt that found its job stopped: CANCELLED without a process (the driver books no row)."""
    result.status, result.error = AttemptStatus.CANCELLED, NEVER_STARTED
    result.stage = AttemptStage.START
    result.elapsed_seconds = time.monotonic() - started
    return result


def _failed(
    result: AttemptResult, process: EntryProcess | None, failure: Failed, started: float
) -> AttemptResult:
    result.status, result.stage, result.retriable = failure.status, failure.stage, failure.retriable
    result.error, result.traceback = failure.message, failure.traceback
    result.succeeded = 0
    result.elapsed_seconds = time.monotonic() - started
    if process is not None:
        result.node, result.process = process.node, process.name
        header = f"mini-batch {result.index} attempt {result.attempt} {result.status}: {result.error}"
        process.error_log(header, result.traceback or result.error)
        process.node_log(header)
        result.error_file = os.path.relpath(process.paths["error"], process.log_root)
        if not process.alive():
            process.host.forget(process)
    return result
