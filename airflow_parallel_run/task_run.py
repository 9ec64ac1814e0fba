"""The job in a thread, watched by the task's main thread, which keeps Airflow's signals.

`on_kill` (mark success/failed, clear) and `execution_timeout` (`AirflowTaskTimeout`, raised by
SIGALRM) arrive in the main thread at any moment. Were the driver running there, the timeout would tear
it down mid-loop: no result file, the staging area left behind. Instead the job is cancelled with the
words for what happened and given `JOB_STOP_WAIT_S` to finish its logs and result.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from airflow.sdk.exceptions import AirflowException, AirflowTaskTimeout

from airflow_parallel_run.core import JobDriver
from airflow_parallel_run.core.summary import JobSummary
from airflow_parallel_run.task_identity import STOPPED_FROM_AIRFLOW, TaskIdentity, stop_reason_for_state

#: How long a stopped job (on_kill, execution_timeout) gets to write its result before the task ends.
JOB_STOP_WAIT_S = 90.0


@contextmanager
def quiet_task_log() -> Iterator[None]:
    """While the job runs, Dask's start/stop chatter shows only from WARNING."""
    dask_logger = logging.getLogger("distributed")
    level = dask_logger.level
    if dask_logger.getEffectiveLevel() < logging.WARNING:
        dask_logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        dask_logger.setLevel(level)


def format_timeout(seconds: float) -> str:
    return str(dt.timedelta(seconds=round(seconds)))


def airflow_stop_reason(identity: TaskIdentity) -> str:
    """Asks Airflow what the user did (the task's new state); bounded, in a helper thread, so a slow
    answer never eats the few seconds Airflow leaves before it kills the task."""
    answer: dict[str, Any] = {}

    def ask() -> None:
        try:
            answer["state"] = identity.current_state()
        except Exception:  # noqa: BLE001 - outside a task runner, or no answer
            answer["unknown"] = True

    asker = threading.Thread(target=ask, name="parallel-run-state", daemon=True)
    asker.start()
    asker.join(timeout=1.0)
    if asker.is_alive() or answer.get("unknown"):
        return STOPPED_FROM_AIRFLOW
    return stop_reason_for_state(answer.get("state"))


def timeout_message(reason: str, summary: JobSummary | None, stopped: bool) -> str:
    """The task's failure for a timeout: how far the job got, or that it did not stop in time."""
    if summary is None:
        return f"{reason}: the parallel run job was cancelled" + (
            "" if stopped else f" but had not stopped after {JOB_STOP_WAIT_S:g} s"
        )
    return (
        f"{reason}: the parallel run job was stopped with {summary.succeeded_mini_batches} of "
        f"{summary.total_mini_batches} mini-batches committed (a re-run reuses them); see "
        f"{summary.logs_dir}/job_result.txt"
    )


class WatchedRun:
    """One task's job and how it stops: the driver once it exists, the stop reason (set before or
    while the job runs) and the kill flag `on_kill` raises in a signal handler."""

    def __init__(self, log: logging.Logger | Any) -> None:
        self.log = log
        self.driver: JobDriver | None = None
        self.stop_reason: str | None = None
        self.kill_requested = threading.Event()

    def on_kill(self) -> None:
        """In the main thread's signal handler: only flags. The main thread, waiting for the job thread,
        asks Airflow what the user did and cancels the job with those words; before the job exists, the
        flag keeps it from starting."""
        self.kill_requested.set()
        if self.driver is None and self.stop_reason is None:
            self.stop_reason = STOPPED_FROM_AIRFLOW

    def set_driver(self, driver: JobDriver) -> None:
        self.driver = driver
        if self.stop_reason:  # stopped while the job was being planned
            driver.cancel(self.stop_reason)

    def stop(self, reason: str) -> None:
        """Cancels the job with `reason` (or makes it stop as soon as its driver exists)."""
        self.stop_reason = self.stop_reason or reason
        driver = self.driver
        if driver is not None:
            self.log.info("Stopping the parallel run job %s: %s", driver.job_id, self.stop_reason)
            driver.cancel(self.stop_reason)

    def run(
        self,
        identity: TaskIdentity,
        target: Callable[[], dict[str, Any]],
        execution_timeout: dt.timedelta | None,
        on_summary: Callable[[JobSummary], None],
        name: str,
    ) -> dict[str, Any]:
        """Runs `target` (the job) in a thread named `name`; this (main) thread watches for a kill and
        the timeout. A timed-out job's summary, if it wrote one in time, goes to `on_summary`."""
        outcome: dict[str, Any] = {}
        done = threading.Event()

        def body() -> None:
            try:
                outcome["summary"] = target()
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                outcome["error"] = exc
            finally:
                done.set()

        if self.stop_reason:
            raise AirflowException(f"The task was stopped before the job started: {self.stop_reason}")
        thread = threading.Thread(target=body, name=name, daemon=True)
        thread.start()
        try:
            while not done.wait(0.2):
                if self.kill_requested.is_set() and self.stop_reason is None:
                    self.stop(airflow_stop_reason(identity))
        except AirflowTaskTimeout as exc:
            limit = execution_timeout.total_seconds() if execution_timeout else 0.0
            reason = f"execution_timeout={format_timeout(limit)} exceeded"
            self.stop(reason)
            stopped = done.wait(JOB_STOP_WAIT_S)
            summary = JobSummary.from_dict(outcome["summary"]) if "summary" in outcome else None
            if summary is not None:
                on_summary(summary)
            raise AirflowTaskTimeout(timeout_message(reason, summary, stopped)) from exc
        if "error" in outcome:
            raise outcome["error"]
        return dict(outcome["summary"])
