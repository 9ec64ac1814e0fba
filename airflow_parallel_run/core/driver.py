"""The driver: submits mini-batch attempts to Dask, retries, enforces thresholds, commits and assembles.

Exactly once: every attempt writes its own part file; only the first successful attempt of a
mini-batch is committed, and the assembler concatenates committed parts in mini-batch order.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import queue
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from distributed import Client, Event, Future, as_completed

from .attempt import AttemptResult, AttemptStage, AttemptStatus
from .cluster import dask_client, select_hosts
from .config import ParallelRunConfig, check_embedded_process_count
from .errors import ConfigError
from .inputs.source import Dataset
from .joblogs import PROGRESS_FILE, JobLogs
from .jobspec import JobSpec, bundle_scripts
from .minibatch import MiniBatch
from .output.files import FilePublisher
from .output.folder import OutputFolder
from .output.sink import JobOutput
from .plan import Plan, plan
from .retry import InitFailures, Step, next_step
from .reuse.cache import MiniBatchCache, resolve_cache_root
from .reuse.reuse import Reuse
from .runner import (
    SHUTDOWN_GRACE_S,
    run_mini_batch,
    shutdown_job,
    stop_job,
)
from .storage import filesystem, join
from .summary import JobSummary, Tally, summarise, threshold_breach, verdict

log = logging.getLogger("airflow_parallel_run")
PROGRESS_INTERVAL_S = 10.0  # job_progress_overview.txt and the task log: at least this often
PROGRESS_FILE_INTERVAL_S = 2.0  # logs/sys/progress.json of a local output folder: at most this often
RECENT_ERRORS = 20  # failed attempts kept in progress.json while the job runs
# A remote progress.json copy still running when the job ends is awaited this long, so a late copy
# never replaces the final document.
PROGRESS_COPY_JOIN_S = 30.0
# Stopping (cancel, on_kill, a signal, a threshold): `stop_job` reaches every worker in one broadcast
# (bounded by STOP_BROADCAST_S) and kills the running entry-script processes; their attempts report
# CANCELLED within runner.POLL_S, and the driver books what arrives within STOP_DRAIN_S. Then it ends
# the workers' processes (STOP_SHUTDOWN_S), writes job_result.txt, removes .staging and releases the
# lock, and only then writes report.html. Airflow 3 sends SIGTERM to a task and SIGKILL 5 s later, so
# the worst case, LOOP_WAIT_S + STOP_BROADCAST_S + STOP_DRAIN_S + STOP_CANCEL_S + STOP_SHUTDOWN_S =
# 4.2 s plus writing the result (an unresponsive scheduler or workers: every bound reached), stays
# inside that window. Measured with
# bench/stop_bench.py (embedded cluster, 2 processes in slow run()s or init()s, up to 24 attempts in
# flight, a shared 2-core machine at load 3-14): 0.1-0.7 s from the cancel or SIGTERM to a complete
# job_result.txt.
STOP_BROADCAST_S = 1.0
STOP_DRAIN_S = 1.0
STOP_CANCEL_S = 0.5  # cancelling what did not report (and, after the result, clearing the stop Event)
STOP_SHUTDOWN_S = 1.5
LOOP_WAIT_S = 0.2  # the driver loop looks at the cancel flag at least this often
# At a normal end the entry scripts' shutdown() runs (SHUTDOWN_GRACE_S) and remote logs are uploaded.
SHUTDOWN_BOUND_S = SHUTDOWN_GRACE_S + 300.0
# Attempts in flight: enough that no worker waits for the driver's next submit, few enough that a
# million mini-batches never sit on the scheduler at once (the scheduler queues the excess itself).
WINDOW_PER_SLOT = 4
WINDOW_EXTRA = 16

ProgressCallback = Callable[[str], None]


def _plain(path: str) -> bool:
    """A path on this host as given (a side input or argument), not a URL: made absolute, checked to exist."""
    return "://" not in path


def _identity(value: Any) -> Any:
    return value


def _stamp(seconds: float) -> str:
    """UTC with milliseconds, as in the node logs, so stop and process times can be compared."""
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _bounded(call: Callable[[], Any], seconds: float) -> tuple[bool, Any]:
    """Runs `call()` in a helper thread for at most `seconds`: (True, its result), (False, the exception
    it raised), or (False, None) when it is still running (it goes on in the background)."""
    box: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            box.append((True, call()))
        except Exception as exc:  # noqa: BLE001 - handed to the caller
            box.append((False, exc))

    thread = threading.Thread(target=run, name="apr-bounded-call", daemon=True)
    thread.start()
    thread.join(seconds)
    return box[0] if box else (False, None)


def _format_eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def result_lines(
    summary: JobSummary, error_lines: Sequence[str], stopped: tuple[float, str, int, int] | None
) -> list[str]:
    """What logs/job_result.txt says: the outcome, how a stopped job stopped ((when, why, attempts
    cancelled, processes ended)), the first errors, and the summary document."""
    if summary.succeeded:
        lines = [
            f"Job succeeded: {summary.succeeded_items} of {summary.total_items} items succeeded, "
            f"{summary.failed_items} failed, in {summary.total_mini_batches} mini-batches "
            f"({summary.reused_mini_batches} reused).",
            f"Output: {summary.append_row_file or summary.output}",
        ]
    else:
        lines = [str(summary.message), "Start with logs/user/error.txt; each line names the full trace."]
    if stopped is not None:
        at, reason, cancelled, leftovers = stopped
        lines.append(
            f"Stopped at {_stamp(at)} UTC ({reason}): {cancelled} running attempt(s) cancelled, {leftovers} "
            "process(es) the entry script left running ended."
        )
    if error_lines:
        lines += ["", "Errors (logs/user/error.txt):", *error_lines[:20]]
    return [*lines, "", json.dumps(summary.to_dict(), indent=2)]


class JobDriver:
    """Runs one job on a connected Client. Use `run_job` unless you manage the client yourself."""

    def __init__(
        self,
        config: ParallelRunConfig,
        inputs: Sequence[Dataset],
        output_path: str,
        *,
        side_inputs: Sequence[str] = (),
        arguments: Sequence[str] = (),
        storage_options: Mapping[str, Any] | None = None,
        progress: ProgressCallback | None = None,
        job_id: str | None = None,
        allow_reuse: bool = True,
        cache_dir: str | None = None,
        planned: Plan | None = None,
        protected_paths: Sequence[str] = (),
    ) -> None:
        if not all(isinstance(a, str) for a in arguments):
            raise ConfigError("arguments", list(arguments), "a list of strings")
        if not all(isinstance(s, str) and s for s in side_inputs):
            raise ConfigError("side_inputs", list(side_inputs), "a list of paths or fsspec URLs")
        self.config = config
        # inputs without credentials of their own use the job's
        self.inputs = [d.with_credentials(storage_options or {}) for d in inputs]
        self.storage_options = dict(storage_options or {})
        self.progress_callback = progress
        self.job_id = job_id or uuid.uuid4().hex[:16]
        self.started = time.monotonic()
        self.started_at = time.time()
        self.recent_errors: deque[dict[str, Any]] = deque(maxlen=RECENT_ERRORS)
        self._progress_written = 0.0
        self._progress_copy: threading.Thread | None = None
        self._progress_copy_failed = False
        side = [os.path.abspath(s) if _plain(s) and os.path.exists(s) else s for s in side_inputs]
        for original, path in zip(side_inputs, side, strict=True):
            if _plain(path) and not os.path.exists(path):
                raise ConfigError("side_inputs", original, "an existing file or folder, or an fsspec URL")
        self.side_inputs = tuple(side)
        self.arguments = tuple(os.path.abspath(a) if a in side_inputs and _plain(a) else a for a in arguments)
        # The output folder's rules, before anything is read or created (core/output/folder.py).
        OutputFolder.check(
            output_path,
            self.storage_options,
            output_file=config.output_file_name,
            inputs=[(where, d.storage_options) for d in self.inputs for where in d.locations()],
            cache_root=resolve_cache_root(cache_dir),
            protected_paths=protected_paths,
        )
        self.plan: Plan = planned if planned is not None else plan(self.inputs, config)
        output_file = config.output_file_name if config.output_action == "append_row" else None
        self.folder = OutputFolder(output_path, self.storage_options, output_file)
        self.output, self.local_output = self.folder.url, self.folder.local
        bundle, bundle_hash, entry, code_files = bundle_scripts(
            config.entry_script_path, config.source_directory
        )
        self.allow_reuse = allow_reuse
        self.cache = MiniBatchCache(resolve_cache_root(cache_dir), self.storage_options)
        self.reuse = Reuse(
            config,
            self.inputs,
            self.plan,
            (code_files, entry),
            self.arguments,
            self.side_inputs,
            self.cache,
            allow_reuse=allow_reuse,
        )
        self.cache_key = self.reuse.cache_key
        self.keys = self.reuse.keys
        self.stop_reason: str | None = None
        self._cancel = threading.Event()
        self.stopped_at: float | None = None
        self.cancelled_attempts = 0
        self.leftover_processes = 0
        self.folder.claim(self.job_id, self.cancel)
        try:
            self._prepare_logs(bundle, bundle_hash, entry)
        except BaseException:  # the lock's heartbeat would keep the folder busy for as long as we live
            self.release()
            raise

    def _prepare_logs(self, bundle: bytes, bundle_hash: str, entry: str) -> None:
        config = self.config
        self.log_root = self.folder.open_logs()
        self.logs = JobLogs(self.log_root)
        self.spec = JobSpec(
            job_id=self.job_id,
            script_bundle=bundle,
            bundle_hash=bundle_hash,
            entry_script=entry,
            arguments=self.arguments,
            side_inputs=self.side_inputs,
            environment_variables=dict(config.environment_variables),
            datasets=tuple(self.inputs),
            output_url=self.output,
            staging_url=self.folder.staging_url(self.job_id),
            log_url=self.folder.log_url,
            output_action=config.output_action,
            append_row_format=config.append_row_format,
            logging_level=config.logging_level,
            run_invocation_timeout=config.run_invocation_timeout,
            resource_monitor_interval=float(config.resource_monitor_interval),
            storage_options=self.storage_options,
        )
        self.files = FilePublisher(self.output, self.storage_options, self._warn)
        self.sink = JobOutput(
            config.append_row_format, self.output, self.storage_options, self.files, self.logs.master
        )
        self.tally = Tally(len(self.plan.mini_batches), self.plan.total_items)
        self.slots = max(1, config.node_count * config.processes_per_node)
        self.init_failures = InitFailures.for_slots(self.slots)
        if self.folder.unlocked:
            self.logs.master(
                f"warning: {self.output} takes no lock (its store cannot create a file exclusively); "
                "make sure no other job writes to it at the same time"
            )
        self.logs.master(
            f"job {self.job_id}: {len(self.plan.mini_batches)} mini-batches, {self.plan.total_items} items "
            f"({self.plan.kind} input), entry script {config.entry_script}, cache key {self.cache_key}"
        )

    # -- reuse ---------------------------------------------------------------------------------------
    def find_reusable(self) -> dict[int, AttemptResult]:
        """Cache hits (when allow_reuse) and a log line saying how many were reused and why others were not."""
        outcome = self.reuse.find(self.sink.admit_reused, self.files.restore)
        for line in outcome.warnings:
            self.logs.master(f"warning: {line}")
            self._say(f"Warning: {line}")
        self.reuse_line = outcome.line
        self.logs.master(self.reuse_line)
        return outcome.hits

    def _check_schema(self, mb: MiniBatch, result: AttemptResult) -> AttemptResult:
        """A successful attempt whose records cannot join the job's schema fails (and is not committed)."""
        if mb.index in self.tally.finished:
            return result  # a duplicate delivery: the first outcome stands
        return self.sink.admit(mb.index, result)

    def release(self) -> None:
        """Frees the output folder for the next job (also called when a job ends early)."""
        self.folder.release()

    def _warn(self, text: str) -> None:
        self.logs.master(f"warning: {text}")
        self._say(f"Warning: {text}")

    # -- control -----------------------------------------------------------------------------------
    def cancel(self, reason: str = "the job was cancelled") -> None:
        """Thread-safe and signal-safe (it only sets flags): the driver loop sees it within
        `LOOP_WAIT_S`, stops scheduling and kills running attempts (on_kill, SIGTERM/SIGINT, a lost lock)."""
        self.stop_reason = self.stop_reason or reason
        self._cancel.set()

    def _say(self, text: str) -> None:
        self.logs.progress(text)
        self._write_progress()
        if self.progress_callback is not None:
            log.debug(text)  # the callback shows it; logging it too would print every line twice
            self.progress_callback(text)
        else:
            log.info(text)

    # -- accounting --------------------------------------------------------------------------------
    def _finalise(self, mb: MiniBatch, result: AttemptResult) -> None:
        """Counts a mini-batch's final outcome; a success is stored in the cache (unless reused) and
        committed to the output."""
        self.tally.record(mb, result)
        if not result.ok:
            return
        files_url = None
        if not result.reused:
            files_url = self.spec.files_url(result.index, result.attempt)
            note = self.reuse.commit(result, files_url)
            if note:
                self.logs.master(note)
        self.sink.commit(mb.index, result, files_url)

    def _rate_eta(self) -> tuple[float, float | None]:
        """Items per second since the start, and the seconds left at that rate (None before any item)."""
        c = self.tally
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = (c.succeeded_items + c.failed_items) / elapsed
        remaining_items = max(c.total_items - c.succeeded_items - c.failed_items, 0)
        return rate, (remaining_items / rate if rate > 0 else None)

    def _note_error(self, result: AttemptResult, final: bool) -> None:
        """A failed attempt for progress.json: what the UI shows as the latest errors while the job runs."""
        lines = (result.error or result.status).splitlines()
        self.recent_errors.append(
            {
                "mini_batch": result.index,
                "attempt": result.attempt,
                "status": result.status,
                "message": (lines[0] if lines else result.status)[:500],
                "trace_file": result.error_file or None,
                "final": final,
                "time": time.time(),
            }
        )

    def progress_document(
        self, state: str = "running", summary: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """What `logs/sys/progress.json` holds: counters, rate, ETA and the latest failed attempts.

        `state` is ``running`` until the summary exists, then the summary's status; the final document
        carries the summary itself. Counts only: no configuration values (environment variables may hold
        secrets) and no input data.
        """
        c = self.tally
        rate, eta = self._rate_eta()
        return {
            "version": 1,
            "job_id": self.job_id,
            "state": state,
            "started": self.started_at,
            "updated": time.time(),
            "elapsed_s": round(time.monotonic() - self.started, 3),
            "total_mini_batches": c.total_mini_batches,
            "done_mini_batches": c.done,
            "succeeded_mini_batches": c.succeeded_mini_batches,
            "failed_mini_batches": c.failed_mini_batches,
            "reused_mini_batches": c.reused_mini_batches,
            "total_items": c.total_items,
            "succeeded_items": c.succeeded_items,
            "failed_items": c.failed_items,
            "items_per_s": round(rate, 3),
            "eta_s": None if eta is None else round(eta, 1),
            "stop_reason": self.stop_reason,
            "recent_errors": list(self.recent_errors),
            "summary": dict(summary) if summary is not None else None,
        }

    def _write_progress(self, state: str = "running", summary: Mapping[str, Any] | None = None) -> None:
        """Rewrites logs/sys/progress.json. A remote logs folder gets a copy with each progress line
        (the final document travels with the rest of the logs)."""
        self._progress_written = time.monotonic()
        path = self.logs.progress_state(self.progress_document(state, summary))
        if self.local_output or state != "running":
            return
        if self._progress_copy is not None and self._progress_copy.is_alive():
            return  # a slow store: the next progress line carries a newer document
        try:
            with open(path, "rb") as handle:
                document = handle.read()
        except OSError:
            return
        self._progress_copy = threading.Thread(
            target=self._copy_progress, args=(document,), name=f"apr-progress-{self.job_id}", daemon=True
        )
        self._progress_copy.start()

    def _copy_progress(self, document: bytes) -> None:
        """Puts progress.json into the remote logs folder, off the driver loop (a store may be slow)."""
        try:
            fs, remote = filesystem(join(self.spec.log_url, PROGRESS_FILE), self.storage_options)
            fs.pipe_file(remote, document)
        except Exception as exc:  # noqa: BLE001 - progress is a convenience; the job goes on
            if not self._progress_copy_failed:
                self._progress_copy_failed = True
                self.logs.master(
                    f"could not copy progress.json to {self.spec.log_url}: {type(exc).__name__}: {exc}"
                )

    def _progress_line(self) -> str:
        c = self.tally
        rate, seconds_left = self._rate_eta()
        eta = _format_eta(seconds_left) if seconds_left is not None else "unknown"
        pct = 100 * c.done // max(c.total_mini_batches, 1)
        return (
            f"Processed {c.done} of {c.total_mini_batches} mini-batches ({pct}%): {c.succeeded_items} items succeeded, "
            f"{c.failed_items} failed; {rate:.1f} items/s; ETA {eta}"
        )

    # -- main loop ---------------------------------------------------------------------------------
    def execute(
        self, client: Client | None, reused: Mapping[int, AttemptResult] | None = None
    ) -> dict[str, Any]:
        """Runs every mini-batch not in `reused`; returns the summary (DESIGN §4).

        `client` may be None only when every mini-batch is reused: then nothing starts on Dask.
        """
        reused = self.find_reusable() if reused is None else self.sink.admit_reused(reused)
        by_index = {mb.index: mb for mb in self.plan.mini_batches}
        for index, result in sorted(reused.items()):
            self.logs.attempt(result, json.dumps(by_index[index].describe()))
            self._finalise(by_index[index], result)
        pending: deque[tuple[MiniBatch, int]] = deque(
            (mb, 1) for mb in self.plan.mini_batches if mb.index not in reused
        )
        self._say(self.reuse_line)
        if not pending:
            return self._finish()
        if client is None:
            raise ValueError("a Dask client is needed: some mini-batches are not reusable")
        placement = select_hosts(client, self.config.node_count, self.config.processes_per_node)
        for warning in placement.warnings:
            self.logs.master(f"warning: {warning}")
            self._say(f"Warning: {warning}")
        self.slots = slots = placement.slots
        self.init_failures = InitFailures.for_slots(slots)
        hosts = list(placement.hosts) if placement.restricts else None  # keep the job on the chosen hosts
        window = WINDOW_PER_SLOT * slots + WINDOW_EXTRA
        stop_event = Event(f"apr-stop-{self.job_id}", client=client)
        # A task, not scattered data: if every worker holding it dies, the scheduler recomputes it.
        spec_future = client.submit(_identity, self.spec, key=f"apr-{self.job_id}-spec", pure=False)
        client.replicate([spec_future])  # on every worker, so data locality does not pin the job to one host
        in_flight: dict[str, tuple[Future, MiniBatch, int]] = {}
        # Completion notices arrive in a queue as attempts finish; each loop turn gathers everything that
        # finished since the last one in a single round trip.
        finished = as_completed()
        self._say(
            f"Started: {len(pending)} mini-batches to run, {len(reused)} reused, {slots} processes on "
            f"{len(placement.hosts)} host(s) ({', '.join(placement.hosts)})"
        )
        last_line, last_step = time.monotonic(), -1

        def submit() -> None:
            # until something succeeds, keep the window small: a broken init() must not fan out
            limit = window if self.tally.succeeded_mini_batches else 2 * slots
            while pending and len(in_flight) < limit:
                mb, attempt = pending.popleft()
                key = f"apr-{self.job_id}-mb{mb.index}-a{attempt}"
                future = client.submit(
                    run_mini_batch,
                    spec_future,
                    mb,
                    attempt,
                    key=key,
                    pure=False,
                    retries=0,
                    workers=hosts,
                    allow_other_workers=False,
                )
                in_flight[key] = (future, mb, attempt)
                finished.add(future)

        interrupted: BaseException | None = None
        submit()
        try:
            while in_flight:
                if client.status in ("closing", "closed"):  # gave up reconnecting to a lost scheduler
                    raise ConnectionError(f"lost the connection to the Dask scheduler ({client.status})")
                done = [f for f in self._next_finished(finished) if str(f.key) in in_flight]
                outcomes = self._gather(client, done)  # one round trip for the whole batch
                for future in done:
                    _, mb, attempt = in_flight.pop(str(future.key))
                    self._record(outcomes.get(str(future.key)), future, mb, attempt, pending)
                    step = 10 * self.tally.done // max(self.tally.total_mini_batches, 1)
                    if step != last_step:
                        self._say(self._progress_line())
                        last_line, last_step = time.monotonic(), step
                if time.monotonic() - last_line >= PROGRESS_INTERVAL_S:
                    self._say(self._progress_line())
                    last_line = time.monotonic()
                elif (
                    self.local_output
                    and time.monotonic() - self._progress_written >= PROGRESS_FILE_INTERVAL_S
                ):
                    self._write_progress()
                if self.stop_reason or self._cancel.is_set():
                    self.stop_reason = self.stop_reason or "the job was cancelled"
                    self._stop(client, stop_event, in_flight, pending)
                    break
                submit()
        except Exception as exc:  # noqa: BLE001 - scheduler lost, connection closed: fail with the reason
            self.stop_reason = self.stop_reason or (
                f"the Dask cluster failed during the job ({type(exc).__name__}: {exc}); committed mini-batches "
                "are in the reuse cache, so a re-run resumes from them"
            )
            self._note_stop()
        except BaseException as exc:  # KeyboardInterrupt, an Airflow task timeout: stop, finish, re-raise
            interrupted = exc
            self.stop_reason = self.stop_reason or f"interrupted by {type(exc).__name__}" + (
                f": {exc}" if str(exc) else ""
            )
            with contextlib.suppress(Exception):
                self._stop(client, stop_event, in_flight, pending)
        finally:
            if in_flight:  # whatever did not report by now: do not leave it running

                def cancel_rest() -> None:
                    stop_event.set()
                    client.cancel([f for f, _, _ in in_flight.values()], force=True)

                _bounded(cancel_rest, STOP_CANCEL_S)  # the scheduler may be gone
            self._shutdown_workers(client)
        summary = self._finish()
        _bounded(stop_event.clear, STOP_CANCEL_S)  # the scheduler may already be gone
        if interrupted is not None:
            raise interrupted
        return summary

    def _note_stop(self) -> None:
        self.stopped_at = time.time()
        self.logs.master(f"stopping at {_stamp(self.stopped_at)} UTC: {self.stop_reason}")
        self._say(f"Stopping: {self.stop_reason}")

    def _stop(
        self,
        client: Client,
        stop_event: Event,
        in_flight: dict[str, tuple[Future, MiniBatch, int]],
        pending: deque[tuple[MiniBatch, int]],
    ) -> None:
        """No new attempt or process from now on; running ones are killed and their rows booked."""
        self._note_stop()
        pending.clear()

        def broadcast() -> Any:
            with contextlib.suppress(Exception):  # workers that missed the broadcast ask this Event
                stop_event.set()
            return client.run(stop_job, self.job_id, on_error="return")

        reached, _ = _bounded(broadcast, STOP_BROADCAST_S)
        if reached:
            self.logs.master(
                f"stopped on every worker at {_stamp(time.time())} UTC: no entry-script process or "
                "mini-batch of this job starts after this"
            )
        else:
            self.logs.master(f"the stop did not reach every worker within {STOP_BROADCAST_S:g} s")
        self._drain(client, in_flight)

    def _shutdown_workers(self, client: Client) -> None:
        """Ends the job's entry-script processes on every worker (shutdown() runs when the job ended
        normally) and what they left running; the count goes to the master log."""
        bound = STOP_SHUTDOWN_S if self.stopped_at is not None else SHUTDOWN_BOUND_S
        done, outcome = _bounded(
            lambda: client.run(
                shutdown_job, self.job_id, self.spec.log_url, self.storage_options, on_error="return"
            ),
            bound,
        )
        if not done:
            self.logs.master(
                "could not stop entry-script processes on every worker: "
                + (f"{outcome}" if outcome is not None else f"no answer within {bound:g} s")
                + " (an orphaned entry-script process ends itself and what it started within a second)"
            )
            return
        failed = []
        for worker, result in dict(outcome).items():
            if isinstance(result, dict):
                self.leftover_processes += int(result.get("leftovers", 0))
            else:
                failed.append(f"{worker}: {result}")
        if failed:
            self.logs.master(f"could not stop entry-script processes on every worker: {'; '.join(failed)}")
        if self.leftover_processes:
            self.logs.master(
                f"ended {self.leftover_processes} process(es) that entry scripts started and left running "
                "(pids in logs/sys/node/<ip>/<process>.txt)"
            )

    def _gather(self, client: Client, futures: list[Future]) -> dict[str, AttemptResult]:
        """Results of finished attempts in one call; errored ones are left to `_collect`."""
        good = [f for f in futures if f.status == "finished"]
        if not good:
            return {}
        try:
            return dict(zip([str(f.key) for f in good], client.gather(good), strict=True))
        except Exception:  # noqa: BLE001 - fall back to one by one, so one bad result fails only itself
            return {}

    @staticmethod
    def _next_finished(finished: as_completed, timeout: float = LOOP_WAIT_S) -> list[Future]:
        """Every attempt that has finished by now, waiting up to `timeout` s for the first one.

        Ordered by key, so that attempts finishing together are booked in a stable order.
        """
        try:
            batch = [finished.queue.get(timeout=timeout)]
        except queue.Empty:
            return []
        with contextlib.suppress(queue.Empty):
            while True:
                batch.append(finished.queue.get_nowait())
        return sorted(batch, key=lambda future: str(future.key))

    def _record(
        self,
        gathered: AttemptResult | None,
        future: Future,
        mb: MiniBatch,
        attempt: int,
        pending: deque[tuple[MiniBatch, int]],
    ) -> None:
        """Books one attempt: commit, retry, or final failure; then checks the thresholds."""
        result = gathered if isinstance(gathered, AttemptResult) else self._collect(future, mb, attempt)
        result = self._check_schema(mb, result)
        self.logs.attempt(result, json.dumps(mb.describe()))
        if mb.index in self.tally.finished:
            return  # a duplicate delivery: the first outcome stands
        give_up = self.init_failures.note(result, self.tally.succeeded_mini_batches > 0)
        self.stop_reason = self.stop_reason or give_up
        step = next_step(result, attempt, self.config.run_max_try, stopping=bool(self.stop_reason))
        if step is Step.DROP:
            return
        if step is Step.RETRY:
            pending.append((mb, attempt + 1))
            self._note_error(result, final=False)
        else:
            self._finalise(mb, result)
            if step is Step.FAIL:
                self._note_error(result, final=True)
        breach = threshold_breach(self.tally, self.config, all_scheduled=not pending)
        if breach:
            self.stop_reason = self.stop_reason or breach

    def _collect(self, future: Future, mb: MiniBatch, attempt: int) -> AttemptResult:
        try:
            result = future.result()
            assert isinstance(result, AttemptResult)
            return result
        except Exception as exc:  # noqa: BLE001 - a lost worker fails this attempt only
            return AttemptResult(
                mb.index,
                attempt,
                AttemptStatus.PROCESS_DIED,
                total=mb.items,
                error=f"the Dask worker running mini-batch {mb.index} was lost: {type(exc).__name__}: {exc}",
            )

    def _drain(self, client: Client, in_flight: dict[str, tuple[Future, MiniBatch, int]]) -> None:
        """After the stop broadcast: cancels attempts no worker holds yet; books what the others report
        within STOP_DRAIN_S (CANCELLED for killed ones, a success that finished meanwhile is kept)."""
        deadline = time.monotonic() + STOP_DRAIN_S
        known, processing = _bounded(client.processing, STOP_DRAIN_S / 2)
        # without the scheduler's view, wait for all (bounded)
        held = {str(k) for keys in processing.values() for k in keys} if known else set(in_flight)
        queued = [key for key in in_flight if key not in held and not in_flight[key][0].done()]
        if queued:
            futures = [in_flight[key][0] for key in queued]
            _bounded(lambda: client.cancel(futures), max(deadline - time.monotonic(), 0.1))
            for key in queued:
                in_flight.pop(key)
        for key, (future, mb, attempt) in list(in_flight.items()):
            try:
                future.result(timeout=max(deadline - time.monotonic(), 0.05))
            except Exception:  # noqa: BLE001 - not back in time, or lost: cancelled below
                continue
            in_flight.pop(key)
            result = self._check_schema(mb, self._collect(future, mb, attempt))
            if result.status is AttemptStatus.CANCELLED and result.stage is AttemptStage.START:
                continue  # reached a worker after the stop and started nothing: no row
            if result.status is AttemptStatus.CANCELLED:
                self.cancelled_attempts += 1
            self.logs.attempt(result, json.dumps(mb.describe()))
            if result.ok and mb.index not in self.tally.finished:
                self._finalise(mb, result)

    # -- results -----------------------------------------------------------------------------------
    def _finish(self) -> dict[str, Any]:
        """Assembles the output (unless the job failed) and writes the summary; temp files never outlive it."""
        try:
            self._collect_process_files()
            return self._summarise()
        finally:
            self.folder.leave()

    def _collect_process_files(self) -> None:
        """Files the entry-script processes wrote to output_dir outside run() go to the output folder."""
        note = self.files.collect_leftovers(self.spec.staging_url)
        if note:
            self.logs.master(note)

    def _summarise(self) -> dict[str, Any]:
        message = verdict(self.tally, self.config, self.stop_reason)
        self.logs.close()
        error_lines = self.logs.write_error_summary()
        if self.logs.write_error:  # logs that cannot explain the job: fail it before presenting an output
            log_failure = f"could not write the job's logs ({self.logs.write_error})"
            message = f"{message}; also {log_failure}" if message else log_failure
        append_row_file = None
        if message is None and self.config.output_action == "append_row":
            append_row_file, message = self.sink.assemble(self.config.output_file_name)
        summary = summarise(
            self.tally,
            message=message,
            output=self.output,
            append_row_file=append_row_file,
            logs_dir=join(self.output, "logs"),
            cache_key=self.cache_key,
            duration_s=time.monotonic() - self.started,
        )
        summary = self._write_result(summary, error_lines)
        if self.stopped_at is not None and self.local_output:
            self.folder.leave()  # a stop must finish within the caller's kill window: the report may not
        self._write_report()
        self._write_progress(
            summary.status, summary.to_dict()
        )  # after the report: "ended" means all is there
        if not self.local_output:
            if self._progress_copy is not None:  # a late copy must not replace the final document
                self._progress_copy.join(timeout=PROGRESS_COPY_JOIN_S)
            self.folder.upload_logs(self.log_root)
        return summary.to_dict()

    def _write_result(self, summary: JobSummary, error_lines: list[str]) -> JobSummary:
        """logs/job_result.txt and the result line; a log write that failed meanwhile becomes a note of a
        failed job's message (a succeeded job's output stays presented, with a warning)."""
        stopped = None
        if self.stopped_at is not None:
            stopped = (
                self.stopped_at,
                self.stop_reason or "",
                self.cancelled_attempts,
                self.leftover_processes,
            )
        lines = result_lines(summary, error_lines, stopped)
        complete = self.logs.write_error is None
        self.logs.result(lines)
        self.logs.master(f"result: {summary.status}" + (f" - {summary.message}" if summary.message else ""))
        self._say(lines[0])
        if complete and self.logs.write_error:  # the summary above may not have reached the disk
            note = f"could not write the job's logs ({self.logs.write_error}); logs/job_result.txt may be incomplete"
            if summary.message is not None:
                return summary.with_note(note)
            self._say(
                f"Warning: {note}"
            )  # the output is complete and stays presented; only its logs fell short
        return summary

    def _write_report(self) -> None:
        from .report import build_report  # lazy: keeps plotly out of the workers' imports

        try:
            build_report(self.log_root)
        except Exception as exc:  # noqa: BLE001 - the report is a convenience; the job's result stands
            self.logs.master(f"could not write report.html: {type(exc).__name__}: {exc}")


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
) -> dict[str, Any]:
    """Plans, runs and assembles one job; returns the summary dict (status succeeded/failed).

    `on_client` sees the connected client before work starts (the operator records its dashboard).
    `protected_paths`: folders the output folder may not be, contain or lie inside (the Airflow layer
    passes AIRFLOW_HOME and the DAGs folder).

    Raises `ConfigError`/`InputError` before anything runs when the configuration or inputs are bad.
    """
    if scheduler is None and client is None:
        check_embedded_process_count(config)  # before planning: this host runs every process
    driver = JobDriver(
        config,
        inputs,
        output_path,
        side_inputs=side_inputs,
        arguments=arguments,
        storage_options=storage_options,
        progress=progress,
        allow_reuse=allow_reuse,
        cache_dir=cache_dir,
        planned=planned,
        protected_paths=protected_paths,
    )
    if on_driver is not None:
        on_driver(driver)
    try:
        reused = driver.find_reusable()
        if len(reused) == len(
            driver.plan.mini_batches
        ):  # everything hits: no cluster, no entry-script process
            return driver.execute(None, reused)
        with dask_client(scheduler, config.processes_per_node, security=security, client=client) as dask:
            if on_client is not None:
                on_client(dask)
            return driver.execute(dask, reused)
    finally:
        driver.release()
