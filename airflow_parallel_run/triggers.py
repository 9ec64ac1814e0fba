"""Triggers: wait in the triggerer, not in a worker slot.

`ParallelRunJobTrigger` polls a job whose driver runs inside the Dask cluster (deferrable
`ParallelRunOperator`); `DatasetPartitionTrigger` polls a partition until it is complete (deferrable
`DatasetPartitionSensor`). Both carry their resume state in the event they fire.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_parallel_run.core.errors import InputError
from airflow_parallel_run.task_identity import (
    STATE_WAIT_S,
    STOPPED_FROM_AIRFLOW,
    identity_from_dict,
    stop_reason_from_airflow,
)

#: Progress lines an event carries to the resumed task: the first ones (the reuse line, "Started") and
#: the last ones (the latest progress, the result); a long job's middle is in its logs/ folder.
EVENT_HEAD_LINES = 20
EVENT_TAIL_LINES = 200
#: After the deadline, how long the trigger waits for the cancelled job's summary before it gives up.
STOP_WAIT_S = 90.0


def event_lines(lines: list[str]) -> list[str]:
    """The lines an event carries (see `EVENT_HEAD_LINES`)."""
    if len(lines) <= EVENT_HEAD_LINES + EVENT_TAIL_LINES:
        return list(lines)
    skipped = len(lines) - EVENT_HEAD_LINES - EVENT_TAIL_LINES
    return [
        *lines[:EVENT_HEAD_LINES],
        f"... ({skipped} progress lines; all are in logs/job_progress_overview.txt)",
    ] + lines[-EVENT_TAIL_LINES:]


class ParallelRunJobTrigger(BaseTrigger):
    """Fires once the in-cluster job has published its summary, or once `deadline` passed (then it
    cancels the job first); cancels the job when a user stops the task, saying how they stopped it.

    :param deadline: wall-clock time (epoch seconds) at which the task's `execution_timeout` ends.
    :param timeout_label: what to call that limit in the stop reason, e.g. ``execution_timeout=0:00:15``.
    :param identity: the task instance (``TaskIdentity`` fields), to ask Airflow how it was stopped.
    :param cluster: ``DaskHook.cluster_options()`` of the connection, resolved by the task: the trigger
        reaches the cluster without asking Airflow for the connection, which can stall while Airflow
        handles the very user action `on_kill` answers (seen on SQLite: tens of seconds).
    :param watch_lease_s: the job's watch lease: every poll refreshes the job's watch mark, at least
        every `refresh_interval` of it, so the job knows a trigger still waits for it (see
        core/driver/watch_lease.py: the job stops itself when no trigger watched it for that long).
    """

    def __init__(
        self,
        dask_conn_id: str,
        job_id: str,
        poll_interval: float = 5.0,
        first_poll_delay: float = 5.0,
        deadline: float | None = None,
        timeout_label: str | None = None,
        identity: dict[str, Any] | None = None,
        cluster: dict[str, Any] | None = None,
        watch_lease_s: float | None = None,
    ) -> None:
        super().__init__()
        self.dask_conn_id = dask_conn_id
        self.job_id = job_id
        self.poll_interval = poll_interval
        self.first_poll_delay = first_poll_delay
        self.deadline = deadline
        self.timeout_label = timeout_label
        self.identity = dict(identity) if identity else None
        self.cluster = dict(cluster) if cluster else None
        self.watch_lease_s = watch_lease_s
        self._cancelled = False  # run() ended by a cancellation
        self._fired = False  # run() fired its event: the job has ended (or the task stops it itself)
        self._stopping: asyncio.Future[None] | None = None  # the stop on_kill or cleanup started

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "airflow_parallel_run.triggers.ParallelRunJobTrigger",
            {
                "dask_conn_id": self.dask_conn_id,
                "job_id": self.job_id,
                "poll_interval": self.poll_interval,
                "first_poll_delay": self.first_poll_delay,
                "deadline": self.deadline,
                "timeout_label": self.timeout_label,
                "identity": self.identity,
                "cluster": self.cluster,
                "watch_lease_s": self.watch_lease_s,
            },
        )

    async def _client(self) -> Any:
        from distributed import Client

        from airflow_parallel_run.hooks import DaskHook, security_from_options

        options = self.cluster
        if options is None:  # a trigger serialized by an older release: only the connection id
            hook = DaskHook(self.dask_conn_id)
            hook._conn = await DaskHook.aget_connection(self.dask_conn_id)
            options = hook.cluster_options()
        return await Client(
            options["address"],
            security=security_from_options(options),
            asynchronous=True,
            timeout=f"{options['timeout']}s",
        )

    async def _prepare_state_reads(self) -> None:
        """Asks Airflow for the task's state once, ignoring the answer (in the background, when the
        trigger starts): the triggerer builds its in-process execution API on the first question a
        trigger asks (1.4 s idle, several seconds under load), and that first question must not be
        the one `on_kill` asks while the job runs on."""
        if not self.identity:
            return
        with contextlib.suppress(Exception):  # outside a triggerer, or no answer: on_kill copes
            await asyncio.wait_for(identity_from_dict(self.identity).acurrent_state(), STATE_WAIT_S)

    async def _sleep_until_next_poll(self) -> None:
        from airflow_parallel_run.core.driver.watch_lease import refresh_interval

        delay = min(self.poll_interval, refresh_interval(self.watch_lease_s))
        if self.deadline is not None:
            delay = max(0.0, min(delay, self.deadline - time.time()))
        await asyncio.sleep(delay)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            async for event in self._poll():
                self._fired = True
                yield event
        except asyncio.CancelledError:
            self._cancelled = True
            raise

    async def _poll(self) -> AsyncIterator[TriggerEvent]:
        from airflow_parallel_run.core.driver.remote import METADATA_ROOT, metadata_key
        from airflow_parallel_run.core.driver.watch_lease import new_mark, watch_key

        first = self.first_poll_delay
        if self.deadline is not None:
            first = max(0.0, min(first, self.deadline - time.time()))
        _in_background(self._prepare_state_reads())
        await asyncio.sleep(first)  # a trigger that fires at once can be lost (upstream bug)
        try:
            client = await self._client()
        except Exception as exc:  # noqa: BLE001 - the task must fail with the reason, not hang
            yield TriggerEvent(
                {"status": "error", "job_id": self.job_id, "message": f"cannot reach Dask: {exc}"}
            )
            return
        lines: list[str] = []

        async def new_lines() -> None:
            stored = await client.get_metadata([METADATA_ROOT, self.job_id, "lines"], default=None) or {}
            for key in sorted(stored):
                if int(key) >= len(lines):
                    lines.append(str(stored[key]))
                    self.log.info("%s", stored[key])

        cancelled = False
        try:
            while True:
                await client.set_metadata(watch_key(self.job_id), new_mark())  # the job's lease
                summary = await client.get_metadata(metadata_key(self.job_id, "summary"), default=None)
                await new_lines()
                if summary is not None:
                    yield TriggerEvent(
                        {
                            "status": "done",
                            "job_id": self.job_id,
                            "summary": summary,
                            "lines": event_lines(lines),
                        }
                    )
                    return
                if self.deadline is not None and time.time() >= self.deadline:
                    yield await self._stop_at_deadline(client, lines, new_lines)
                    return
                await self._sleep_until_next_poll()
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            if cancelled:  # closing takes seconds, and the triggerer's note that a user acted travels
                _in_background(_close_quietly(client))  # in the CancelledError, which an await may replace
            else:
                await _close_quietly(client)

    async def _stop_at_deadline(self, client: Any, lines: list[str], new_lines: Any) -> TriggerEvent:
        """Cancels the job because the task's time is up; waits (bounded) for its summary."""
        from airflow_parallel_run.core.driver.remote import metadata_key

        reason = f"{self.timeout_label or 'the task timeout'} exceeded"
        if not await client.get_metadata(metadata_key(self.job_id, "cancel"), default=None):
            await client.set_metadata(metadata_key(self.job_id, "cancel"), reason)
        self.log.info("Time is up (%s): asked the cluster to stop job %s", reason, self.job_id)
        deadline = time.monotonic() + STOP_WAIT_S
        summary = None
        while time.monotonic() < deadline:
            summary = await client.get_metadata(metadata_key(self.job_id, "summary"), default=None)
            if summary is not None:
                break
            await asyncio.sleep(1.0)
        await new_lines()
        return TriggerEvent(
            {
                "status": "timeout",
                "job_id": self.job_id,
                "summary": summary,
                "lines": event_lines(lines),
                "message": reason,
            }
        )

    async def on_kill(self) -> None:
        """A user marked the task success/failed or cleared it: stop the job in the cluster, with the
        words for what they did (see `stop_reason_from_airflow`).

        The stop runs as a task of its own that this method only waits for: until the trigger's task
        has ended, the triggerer cancels it again on every pass of its loop (about once a second; the
        trigger stays in its list of triggers to cancel), and each cancel lands in whatever `on_kill`
        awaits. Awaited directly, a stop that took longer than one pass (reaching the cluster, asking
        Airflow) was abandoned halfway and the job ran on to its end.
        """
        if self._fired:
            return
        if self._stopping is None:
            self._stopping = _in_background(self._stop_job(user_acted=True))
        await asyncio.shield(self._stopping)

    async def cleanup(self) -> None:
        """The safety net of `on_kill`: the trigger was cancelled and no stop was started.

        The triggerer calls `on_kill` only when the cancellation carries its note that a user acted
        (a CancelledError's message, which anything awaited on the way out can replace); it calls
        `cleanup` on every exit. So here the task instance's state decides: a task that left the
        deferred state gets its job stopped; a task still deferred (the triggerer shuts down or
        handed the trigger on) or whose state cannot be read keeps its job running.
        """
        if not self._cancelled or self._fired or self._stopping is not None:
            return
        self._stopping = _in_background(self._stop_job(user_acted=False))
        await asyncio.shield(self._stopping)

    async def _stop_job(self, *, user_acted: bool) -> None:
        """Reaches the cluster while it asks Airflow for the task's state; sets the cancel flag."""
        from airflow_parallel_run.core.driver.remote import metadata_key

        connecting = asyncio.ensure_future(self._client())
        try:
            reason = await stop_reason_from_airflow(self.identity)
        except BaseException:
            _abandon(connecting)
            raise
        if reason == STOPPED_FROM_AIRFLOW and not user_acted:
            reason = None  # no word from Airflow and no user action known: the job keeps running
        elif reason is not None and self.deadline is not None and time.time() >= self.deadline:
            reason = f"{self.timeout_label or 'the task timeout'} exceeded"  # Airflow's trigger timeout
        if reason is None:
            _abandon(connecting)
            self.log.warning(
                "The trigger of job %s ended while Airflow reports its task as deferred (or cannot say): "
                "another triggerer waits for the job now; not stopping it",
                self.job_id,
            )
            return
        try:
            client = await connecting
        except Exception:
            self.log.exception("Cannot reach the Dask cluster to stop job %s (%s)", self.job_id, reason)
            raise
        try:
            if not await client.get_metadata(metadata_key(self.job_id, "cancel"), default=None):
                await client.set_metadata(metadata_key(self.job_id, "cancel"), reason)
            self.log.info("Asked the cluster to stop job %s: %s", self.job_id, reason)
        finally:
            await _close_quietly(client)


#: Work a trigger started and nobody awaits to its end (a stop whose `on_kill` was cancelled): the event
#: loop keeps only weak references to tasks, and such work must not be collected halfway.
_BACKGROUND: set[asyncio.Future[Any]] = set()


def _in_background(work: Any) -> asyncio.Future[Any]:
    """Runs the coroutine `work` as a task held in `_BACKGROUND` until it ends."""
    task = asyncio.ensure_future(work)
    _BACKGROUND.add(task)
    task.add_done_callback(_BACKGROUND.discard)
    return task


def _abandon(connecting: asyncio.Future[Any]) -> None:
    """Drops a Dask client being made: cancelled while it connects, closed if it is connected."""

    def close(done: asyncio.Future[Any]) -> None:
        if not done.cancelled() and done.exception() is None:
            _in_background(_close_quietly(done.result()))

    connecting.add_done_callback(close)
    connecting.cancel()


async def _close_quietly(client: Any) -> None:
    """Closes a Dask client; an error while closing must not replace the exception being handled (a
    cancellation carries the triggerer's note that a user acted, which decides whether `on_kill` runs)."""
    with contextlib.suppress(Exception):  # the connection is going away either way
        await client.close()


class DatasetPartitionTrigger(BaseTrigger):
    """Polls a partition with the sensor's completeness rule; fires when complete (or unreadable)."""

    def __init__(
        self,
        datasets: list[dict[str, Any]],
        completeness: dict[str, Any],
        poke_interval: float = 60.0,
        state: dict[str, Any] | None = None,
        first_poll_delay: float = 5.0,
    ) -> None:
        super().__init__()
        self.datasets = datasets
        self.completeness = completeness
        self.poke_interval = poke_interval
        self.state = state or {}
        self.first_poll_delay = first_poll_delay

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "airflow_parallel_run.triggers.DatasetPartitionTrigger",
            {
                "datasets": self.datasets,
                "completeness": self.completeness,
                "poke_interval": self.poke_interval,
                "state": self.state,
                "first_poll_delay": self.first_poll_delay,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from airflow_parallel_run.core.inputs import dataset_from_dict
        from airflow_parallel_run.core.plan.completeness import Completeness, check_partition

        rule = Completeness(**self.completeness)
        datasets = [dataset_from_dict(d) for d in self.datasets]
        state = dict(self.state)
        await asyncio.sleep(self.first_poll_delay)
        while True:
            try:
                complete, state, seen = await asyncio.to_thread(check_partition, datasets, rule, state)
            except InputError as exc:
                yield TriggerEvent({"status": "error", "message": str(exc)})
                return
            self.log.info("%s", seen)
            if complete:
                yield TriggerEvent({"status": "complete", "seen": seen})
                return
            await asyncio.sleep(self.poke_interval)
