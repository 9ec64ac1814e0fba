"""What stops a deferrable job when a user acts on its deferred task, under the triggerer's own rules.

When a deferred task instance leaves the deferred state (marked failed/success, cleared), the
triggerer cancels the trigger's task with its user-action note and awaits `on_kill` inside that task.
It keeps the trigger in its list of triggers to cancel until the task has ended, so it cancels the
task again on every pass of its loop (about once a second) while `on_kill` runs. These tests drive
Airflow's real `TriggerRunner.run_trigger` against a real Dask cluster; only the triggerer's
supervisor (which answers the trigger's state questions from the metadata DB) is a stand-in that
answers as slowly as a busy triggerer does.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

IDENTITY = {"dag_id": "d", "run_id": "r", "task_id": "score", "map_index": -1}


class SlowSupervisor:
    """Answers `GetTaskStates` after `delay` seconds with the states in `states` (the last repeats)."""

    def __init__(self, states: list[str | None], delay: float) -> None:
        self.states = list(states)
        self.delay = delay
        self.asked = 0

    async def asend(self, msg: Any) -> Any:
        from airflow.sdk.execution_time.comms import GetTaskStates, TaskStatesResult

        assert isinstance(msg, GetTaskStates) and msg.run_ids and msg.task_ids, msg
        self.asked += 1
        await asyncio.sleep(self.delay)
        state = self.states[min(self.asked, len(self.states)) - 1]
        return TaskStatesResult(task_states={msg.run_ids[0]: {msg.task_ids[0]: state}})


@pytest.fixture
def supervisor(monkeypatch: pytest.MonkeyPatch) -> Any:
    from airflow.sdk.execution_time import task_runner

    def install(states: list[str | None], delay: float) -> SlowSupervisor:
        fake = SlowSupervisor(states, delay)
        monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", fake, raising=False)
        return fake

    return install


def _slow_job(dask_cluster: Any, tmp_path: Path, write_script: Any, files: Any) -> Any:
    from distributed import Client

    from airflow_parallel_run.core import FileDataset, ParallelRunConfig
    from airflow_parallel_run.core.driver.job import JobRequest
    from airflow_parallel_run.core.driver.remote import RemoteJob, submit_job

    script = write_script("import time\ndef run(b):\n    time.sleep(0.5)\n    return b\n")
    job = RemoteJob.of(
        JobRequest(
            ParallelRunConfig(entry_script=script, mini_batch_size=1, process_count_per_node=1),
            (FileDataset.from_files(str(files(400, "many"))),),
            str(tmp_path / "out"),
        ),
    )
    with Client(dask_cluster.scheduler_address) as client:
        submit_job(client, job)
    return job


async def _summary(dask_cluster: Any, job_id: str, timeout: float) -> Any:
    from distributed import Client

    from airflow_parallel_run.core.driver.remote import metadata_key

    async with Client(dask_cluster.scheduler_address, asynchronous=True) as client:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            summary = await client.get_metadata(metadata_key(job_id, "summary"), default=None)
            if summary is not None:
                return summary
            await asyncio.sleep(0.5)
    return None


async def _user_acts_on_the_deferred_task(trigger: Any, started_for: float, note: bool = True) -> None:
    """What the triggerer does: runs the trigger, then, once the task left the deferred state, cancels
    it with its user-action note on every pass of its loop until the trigger's task has ended.
    `note=False`: the note got lost on the way (anything the trigger awaits while it unwinds can
    replace the CancelledError that carries it); the triggerer then skips `on_kill`."""
    from airflow.jobs.triggerer_job_runner import _USER_ACTION_CANCEL_MSG, TriggerRunner

    runner = TriggerRunner()
    runner.triggers[1] = {"task": None, "is_watcher": False, "name": "apr-test", "events": 0}  # type: ignore[typeddict-item]
    task = asyncio.create_task(runner.run_trigger(1, trigger))
    runner.triggers[1]["task"] = task
    await asyncio.sleep(started_for)
    deadline = time.monotonic() + 60
    while not task.done():
        assert time.monotonic() < deadline, "the trigger's task never ended"
        task.cancel(_USER_ACTION_CANCEL_MSG if note else None)
        await asyncio.sleep(0.5)
    with pytest.raises(asyncio.CancelledError):
        await task


def _trigger(dask_cluster: Any, job_id: str) -> Any:
    from airflow_parallel_run.triggers import ParallelRunJobTrigger

    return ParallelRunJobTrigger(
        "apr_test_dask",
        job_id,
        poll_interval=0.5,
        first_poll_delay=0.1,
        identity=IDENTITY,
        cluster={"address": dask_cluster.scheduler_address, "timeout": 30},
    )


@pytest.mark.asyncio
@pytest.mark.parametrize("answer_after", [1.5, 3.0])
async def test_marking_a_deferred_task_failed_stops_its_job_with_those_words(
    dask_cluster: Any, tmp_path: Path, write_script: Any, files: Any, supervisor: Any, answer_after: float
) -> None:
    """The triggerer re-cancels the trigger's task while `on_kill` waits for Airflow's answer (1.5 s):
    the stop must survive that. A busy triggerer answers in 3 s: the words must still say it."""
    job = _slow_job(dask_cluster, tmp_path, write_script, files)
    supervisor(["failed"], delay=answer_after)
    await _user_acts_on_the_deferred_task(_trigger(dask_cluster, job.job_id), started_for=3.0)
    summary = await _summary(dask_cluster, job.job_id, timeout=40)
    assert summary is not None, "the job was not stopped"
    assert summary["status"] == "failed" and summary["succeeded_items"] < 400, summary
    assert summary["message"] == "Job failed: the Airflow task was marked failed", summary["message"]


@pytest.mark.asyncio
@pytest.mark.parametrize(("state", "stopped"), [("failed", True), ("deferred", False)])
async def test_a_cancelled_trigger_without_the_user_action_note_still_stops_a_job_whose_task_left(
    dask_cluster: Any,
    tmp_path: Path,
    write_script: Any,
    files: Any,
    supervisor: Any,
    state: str,
    stopped: bool,
) -> None:
    """Without the note the triggerer calls only `cleanup`: a task marked failed still gets its job
    stopped; a task still deferred (the triggerer shuts down or handed the trigger on) does not."""
    from distributed import Client

    from airflow_parallel_run.core.driver.remote import cancel_job, metadata_key

    job = _slow_job(dask_cluster, tmp_path, write_script, files)
    supervisor([state], delay=0.3)
    trigger = _trigger(dask_cluster, job.job_id)
    await _user_acts_on_the_deferred_task(trigger, started_for=3.0, note=False)
    if stopped:
        summary = await _summary(dask_cluster, job.job_id, timeout=40)
        assert summary is not None and summary["status"] == "failed", summary
        assert summary["message"] == "Job failed: the Airflow task was marked failed", summary["message"]
        return
    await asyncio.wait_for(trigger._stopping, 30)  # the check ran to its end: still deferred
    async with Client(dask_cluster.scheduler_address, asynchronous=True) as client:
        assert await client.get_metadata(metadata_key(job.job_id, "cancel"), default=None) is None
    with Client(dask_cluster.scheduler_address) as client:
        cancel_job(client, job.job_id, "test over")


@pytest.mark.asyncio
async def test_words_wait_for_the_state_to_leave_deferred_and_fall_back_without_an_answer(
    supervisor: Any,
) -> None:
    from airflow_parallel_run.task_identity import STOPPED_FROM_AIRFLOW, stop_reason_from_airflow

    fake = supervisor(["deferred", "deferred", "success"], delay=0.05)
    assert await stop_reason_from_airflow(IDENTITY, poll_s=0.1) == "the Airflow task was marked success"
    assert fake.asked == 3
    supervisor([None], delay=0.05)
    assert await stop_reason_from_airflow(IDENTITY) == "the Airflow task was cleared"
    supervisor(["failed"], delay=5.0)
    started = time.monotonic()
    assert await stop_reason_from_airflow(IDENTITY, wait_s=1.0) == STOPPED_FROM_AIRFLOW
    assert time.monotonic() - started < 2.0, "bounded"
    assert await stop_reason_from_airflow(None) == STOPPED_FROM_AIRFLOW


@pytest.mark.asyncio
async def test_a_trigger_dropped_while_its_task_is_still_deferred_leaves_the_job_running(
    dask_cluster: Any, tmp_path: Path, write_script: Any, files: Any, supervisor: Any
) -> None:
    """The triggerer also drops a trigger it handed to another triggerer (its heartbeat lapsed) and
    calls `on_kill` then too; the task is still deferred and the other triggerer waits for the job."""
    from distributed import Client

    from airflow_parallel_run.core.driver.remote import cancel_job, metadata_key
    from airflow_parallel_run.task_identity import stop_reason_from_airflow

    supervisor(["deferred"], delay=0.05)
    assert await stop_reason_from_airflow(IDENTITY, wait_s=1.0, poll_s=0.2) is None
    job = _slow_job(dask_cluster, tmp_path, write_script, files)
    trigger = _trigger(dask_cluster, job.job_id)
    await asyncio.wait_for(trigger.on_kill(), 30)
    async with Client(dask_cluster.scheduler_address, asynchronous=True) as client:
        assert await client.get_metadata(metadata_key(job.job_id, "cancel"), default=None) is None
    with Client(dask_cluster.scheduler_address) as client:
        cancel_job(client, job.job_id, "test over")
