"""Deferrable mode: the job's driver runs inside the Dask cluster while the task defers.

The job takes the task instance's slot in the cluster: a job an earlier try left running (the task was
cleared, or retried after its worker died) is stopped first, so both never share the folder. A job
that finished before the task could defer (every mini-batch reused) is returned at once (`Finished`).
The trigger (`ParallelRunJobTrigger`) waits for the job and enforces `execution_timeout`; Airflow's
own trigger timeout, `TRIGGER_TIMEOUT_MARGIN_S` later, is the backstop.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowException, AirflowFailException

from airflow_parallel_run.core.driver.cluster import dashboard_link
from airflow_parallel_run.core.driver.job import JobRequest
from airflow_parallel_run.task_identity import TaskIdentity
from airflow_parallel_run.task_run import airflow_stop_reason, format_timeout

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator, Context

    from airflow_parallel_run.task_run import WatchedRun

#: How long a new try waits for the previous try's in-cluster job to stop.
SUPERSEDE_WAIT_S = 120.0
#: Added to the remaining `execution_timeout` for Airflow's own trigger timeout: the trigger fires at
#: the deadline itself (after cancelling the job); Airflow's timeout is the backstop if it cannot.
TRIGGER_TIMEOUT_MARGIN_S = 180.0


class Finished(Exception):
    """The in-cluster job finished before the task deferred: its summary and progress lines."""

    def __init__(self, summary: dict[str, Any], lines: list[str]) -> None:
        super().__init__("finished")
        self.summary = summary
        self.lines = lines


def deadline(execution_timeout: dt.timedelta | None, context: Context) -> tuple[float | None, str | None]:
    """When `execution_timeout` ends (epoch seconds) counted from this try's start, and its label."""
    if not execution_timeout:
        return None, None
    limit = execution_timeout.total_seconds()
    start = getattr(context.get("ti"), "start_date", None)
    started = start.timestamp() if isinstance(start, dt.datetime) else time.time()
    return started + limit, f"execution_timeout={format_timeout(limit)}"


def supersede(client: Any, identity: TaskIdentity, log: logging.Logger | Any) -> None:
    """Stops the job a previous try of this task instance left running and waits for its end."""
    from airflow_parallel_run.core.driver.remote import cancel_job, job_state, previous_job, wait_for_end

    previous = previous_job(client, identity.key)
    if previous is None or job_state(client, previous)[0] is not None:
        return
    log.info(
        "Job %s of a previous try of %s is still running in the cluster: stopping it before this try "
        "starts its own",
        previous,
        identity,
    )
    cancel_job(client, previous, "superseded by a new try of the Airflow task (cleared or retried)")
    summary = wait_for_end(client, previous, SUPERSEDE_WAIT_S)
    if summary is None and job_state(client, previous)[0] is None:
        log.warning(
            "Job %s did not report an end within %g s (its Dask worker may be gone); starting this try's job",
            previous,
            SUPERSEDE_WAIT_S,
        )
        return
    log.info("Job %s stopped: %s", previous, (summary or {}).get("message") or (summary or {}).get("status"))


def submit_and_defer(
    op: BaseOperator,
    context: Context,
    identity: TaskIdentity,
    request: JobRequest,
    watch: WatchedRun,
    on_dashboard: Callable[[str | None], None],
    on_submitted: Callable[[str], None],
) -> None:
    """Starts the driver inside the cluster of `op.dask_conn_id` and defers to `execute_complete`;
    raises `Finished` when the job is already done. `on_dashboard(url)` and `on_submitted(job_id)`
    record the cluster's dashboard and the job (the operator's XComs)."""
    from airflow_parallel_run.core.driver.remote import (
        RemoteJob,
        cancel_job,
        job_lines,
        job_state,
        submit_job,
    )
    from airflow_parallel_run.hooks import DaskHook
    from airflow_parallel_run.triggers import ParallelRunJobTrigger

    conn_id = getattr(op, "dask_conn_id", None)
    assert conn_id is not None
    lease = getattr(op, "watch_lease_s", None)
    remote = RemoteJob.of(request, watch_lease_s=lease)
    ends, label = deadline(op.execution_timeout, context)
    hook = DaskHook(conn_id)
    with hook.get_client() as client:
        on_dashboard(hook.dashboard_url or dashboard_link(client))
        supersede(client, identity, op.log)
        submit_job(client, remote, identity.key)
        on_submitted(remote.job_id)
        try:
            op.log.info(
                "Job %s runs inside the Dask cluster; this task defers until it finishes", remote.job_id
            )
            if watch.kill_requested.wait(2.0):  # stopped from Airflow before deferring
                reason = airflow_stop_reason(identity)
                cancel_job(client, remote.job_id, reason)
                raise AirflowException(f"The task was stopped before it deferred: {reason}")
            # a job of cached mini-batches is done by now: no deferral needed
            summary, _ = job_state(client, remote.job_id)
            lines = job_lines(client, remote.job_id)
        except BaseException:  # execution_timeout or a kill before deferring: do not leave it running
            cancel_job(
                client, remote.job_id, watch.stop_reason or "the Airflow task stopped before it deferred"
            )
            raise
    if summary is not None:
        raise Finished(summary, lines)
    remaining = None if ends is None else ends - time.time()
    op.defer(
        trigger=ParallelRunJobTrigger(
            dask_conn_id=conn_id,
            job_id=remote.job_id,
            deadline=ends,
            timeout_label=label,
            identity=identity.as_dict(),
            cluster=hook.cluster_options(),
            watch_lease_s=lease,
        ),
        method_name="execute_complete",
        timeout=None
        if remaining is None
        else dt.timedelta(seconds=max(remaining, 0.0) + TRIGGER_TIMEOUT_MARGIN_S),
    )


def cancel_slot_job(
    dask_conn_id: str | None, identity: TaskIdentity, reason: str, log: logging.Logger | Any
) -> None:
    """Asks the cluster to stop the job that holds the task instance's slot (a trigger that timed out)."""
    from airflow_parallel_run.core.driver.remote import cancel_job, previous_job
    from airflow_parallel_run.hooks import DaskHook

    if not dask_conn_id:
        return
    try:
        with DaskHook(dask_conn_id).get_client() as client:
            job_id = previous_job(client, identity.key)
            if job_id is not None and cancel_job(client, job_id, reason):
                log.info("Asked the cluster to stop job %s: %s", job_id, reason)
    except Exception as exc:  # noqa: BLE001 - the task fails anyway; say why the job may still run
        log.warning("Could not cancel the in-cluster job of %s: %s", identity, exc)


def check_remote_summary(summary: dict[str, Any]) -> None:
    """The in-cluster job could not run (`RemoteError`): a `ConfigError` fails the task for good, as in
    the embedded path; anything else may be transient and is retried."""
    if summary.get("status") != "error":
        return
    if summary.get("error_type") == "ConfigError":
        raise AirflowFailException(f"Invalid ParallelRunOperator setting: {summary.get('message')}")
    raise AirflowException(f"The parallel run job could not run in the cluster: {summary.get('message')}")
