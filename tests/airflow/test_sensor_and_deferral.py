"""DatasetPartitionSensor, the manifest hand-over, and the deferrable modes, for real.

`dag.test()` runs triggers in-process, so the deferrable DAG exercises both triggers, the in-cluster
driver and the resume-from-event path against a real Dask cluster with separate worker processes.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from pathlib import Path
from typing import Any
from unittest import mock

import pendulum
import pytest

from airflow_parallel_run.core.driver.finish import with_unlisted_note
from airflow_parallel_run.task_identity import TaskIdentity
from tests.airflow.test_example_dags import _states, _xcom

LOGICAL = pendulum.datetime(2024, 3, 5, tz="UTC")


@pytest.fixture(scope="module")
def dagbag(airflow_db: Path) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    assert not bag.import_errors, bag.import_errors
    return bag


def _sensor_started(dag_id: str, since: float) -> bool:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        started = [
            ti.start_date
            for ti in session.query(TaskInstance).filter(
                TaskInstance.dag_id == dag_id, TaskInstance.task_id == "wait"
            )
        ]
    return any(start is not None and start.timestamp() >= since for start in started)


def _land_later(landing: Path, manifest_glob: str, manifest_root: Path, dag_id: str) -> threading.Thread:
    """Lands 7 files and the marker 3 s after the sensor started (so it found nothing at first, however
    long `dag.test()` takes to get there); once a manifest exists, lands one late extra file."""
    since = time.time() - 1

    def writer() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not _sensor_started(dag_id, since):
            time.sleep(0.2)
        time.sleep(3)
        landing.mkdir(parents=True, exist_ok=True)
        for i in range(7):
            (landing / f"item{i}.txt").write_text(f"v{i}\n")
        (landing / "_SUCCESS").touch()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not list(manifest_root.glob(manifest_glob)):
            time.sleep(0.2)
        (landing / "late.txt").write_text("too late\n")

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    return thread


def _check_run(run: Any, root: Path, dag_id: str, log: str) -> None:
    assert str(run.state) == "success", _states(run)
    reference = _xcom(run, "wait")
    assert reference["mini_batches"] == 4 and reference["items"] == 7 and reference["files"] == 7
    assert set(reference) == {"manifest", "kind", "mini_batches", "items", "files", "bytes"}, (
        "no file list in XCom"
    )
    summary = _xcom(run, "score")
    assert summary["status"] == "succeeded" and summary["succeeded_items"] == 7
    lines = Path(summary["append_row_file"]).read_text().splitlines()
    assert lines == [f"item{i}.txt v{i}" for i in range(7)], "exactly the manifest's files, in order"
    assert (root / dag_id / "landing" / "2024-03-05" / "late.txt").exists(), "the late file did land"
    assert _duration(run, "wait") >= 2.5, "the sensor found nothing at first and waited for the marker"
    del log


def _duration(run: Any, task_id: str) -> float:
    from airflow.utils.session import create_session

    with create_session() as session:
        (ti,) = [ti for ti in run.get_task_instances(session=session) if ti.task_id == task_id]
        return float(ti.duration or 0)


def test_sensor_waits_then_operator_scores_exactly_the_manifest(
    dagbag: Any, demo_root: Path, isolated_cache: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    root = demo_root / "sensor_fed"
    writer = _land_later(
        root / "apr_test_sensor_poke" / "landing" / "2024-03-05",
        "**/apr_test_sensor_poke/wait/*.json",
        isolated_cache / "manifests",
        "apr_test_sensor_poke",
    )
    run = dagbag.get_dag("apr_test_sensor_poke").test(logical_date=LOGICAL)
    writer.join(timeout=30)
    _check_run(run, root, "apr_test_sensor_poke", capfd.readouterr().out)


def test_deferrable_sensor_and_operator(
    dagbag: Any, demo_root: Path, isolated_cache: Path, dask_cluster: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    root = demo_root / "sensor_fed"
    writer = _land_later(
        root / "apr_test_sensor_deferrable" / "landing" / "2024-03-05",
        "**/apr_test_sensor_deferrable/wait/*.json",
        isolated_cache / "manifests",
        "apr_test_sensor_deferrable",
    )
    run = dagbag.get_dag("apr_test_sensor_deferrable").test(logical_date=LOGICAL)
    writer.join(timeout=30)
    log = capfd.readouterr().out
    _check_run(run, root, "apr_test_sensor_deferrable", log)
    del log


def test_example_sensor_fed_daily_scoring(dagbag: Any, demo_root: Path) -> None:
    run = dagbag.get_dag("sensor_fed_daily_scoring").test(logical_date=LOGICAL)
    assert str(run.state) == "success", _states(run)
    summary = _xcom(run, "score_partition")
    assert summary["succeeded_items"] == 50 and summary["total_mini_batches"] == 5


# -- triggers ----------------------------------------------------------------------------------------
def test_triggers_serialize_round_trip() -> None:
    from airflow_parallel_run.triggers import DatasetPartitionTrigger, ParallelRunJobTrigger

    job = ParallelRunJobTrigger(dask_conn_id="c", job_id="j1", poll_interval=2.0, first_poll_delay=0.5)
    path, kwargs = job.serialize()
    assert path == "airflow_parallel_run.triggers.ParallelRunJobTrigger"
    assert ParallelRunJobTrigger(**kwargs).serialize() == (path, kwargs)
    json.dumps(kwargs)
    part = DatasetPartitionTrigger(
        datasets=[{"type": "FileDataset", "paths": ["/x"], "partition_format": None, "storage_options": {}}],
        completeness={"marker_file": "_SUCCESS", "min_file_count": None, "stable_pokes": None},
        poke_interval=3.0,
        state={"stable": 1},
    )
    path, kwargs = part.serialize()
    assert DatasetPartitionTrigger(**kwargs).serialize() == (path, kwargs)
    json.dumps(kwargs)


async def _first_event(trigger: Any) -> Any:
    async for event in trigger.run():
        return event.payload
    return None


@pytest.mark.asyncio
async def test_job_trigger_fires_with_the_summary_and_on_kill_cancels(
    dask_cluster: Any, tmp_path: Path, write_script: Any, files: Any
) -> None:
    from distributed import Client

    from airflow_parallel_run.core import FileDataset, ParallelRunConfig
    from airflow_parallel_run.core.driver.job import JobRequest
    from airflow_parallel_run.core.driver.remote import RemoteJob, submit_job
    from airflow_parallel_run.triggers import ParallelRunJobTrigger

    script = write_script("import time\ndef run(b):\n    time.sleep(0.5)\n    return b\n")
    quick = RemoteJob.of(
        JobRequest(
            ParallelRunConfig(entry_script=script, mini_batch_size=2, process_count_per_node=2),
            (FileDataset.from_files(str(files(6))),),
            str(tmp_path / "o1"),
        ),
    )
    slow = RemoteJob.of(
        JobRequest(
            ParallelRunConfig(entry_script=script, mini_batch_size=1, process_count_per_node=1),
            (FileDataset.from_files(str(files(200, "many"))),),
            str(tmp_path / "o2"),
        ),
    )
    with Client(dask_cluster.scheduler_address) as client:
        submit_job(client, quick)
        submit_job(client, slow)
    event = await asyncio.wait_for(
        _first_event(
            ParallelRunJobTrigger("apr_test_dask", quick.job_id, poll_interval=0.5, first_poll_delay=0.1)
        ),
        60,
    )
    assert event["status"] == "done" and event["summary"]["succeeded_items"] == 6
    started = time.monotonic()
    identity = {"dag_id": "d", "run_id": "r", "task_id": "score", "map_index": -1}
    with mock.patch.object(TaskIdentity, "acurrent_state", mock.AsyncMock(return_value="success")):
        await ParallelRunJobTrigger("apr_test_dask", slow.job_id, identity=identity).on_kill()
    event = await asyncio.wait_for(
        _first_event(
            ParallelRunJobTrigger("apr_test_dask", slow.job_id, poll_interval=0.5, first_poll_delay=0.1)
        ),
        60,
    )
    words = "Job failed: the Airflow task was marked success"  # 200 inputs: the stop may come while listing
    stopped = event["summary"]
    assert stopped["status"] == "failed", stopped
    assert stopped["message"] in (words, with_unlisted_note(words, stopped["total_mini_batches"])), stopped
    assert time.monotonic() - started < 30 and event["summary"]["succeeded_items"] < 200


@pytest.mark.asyncio
async def test_the_job_trigger_keeps_a_job_with_a_short_watch_lease_alive(
    dask_cluster: Any, tmp_path: Path, write_script: Any, files: Any
) -> None:
    """The trigger refreshes the job's watch mark: a job that outlives its lease many times over runs to
    its end while the trigger waits for it (without the trigger, tests/core/driver/test_watch_lease.py: it stops)."""
    from distributed import Client

    from airflow_parallel_run.core import FileDataset, ParallelRunConfig
    from airflow_parallel_run.core.driver.job import JobRequest
    from airflow_parallel_run.core.driver.remote import RemoteJob, submit_job
    from airflow_parallel_run.triggers import ParallelRunJobTrigger

    script = write_script("import time\ndef run(b):\n    time.sleep(0.5)\n    return b\n")
    job = RemoteJob.of(
        JobRequest(
            ParallelRunConfig(entry_script=script, mini_batch_size=1, process_count_per_node=1),
            (FileDataset.from_files(str(files(60))),),
            str(tmp_path / "out"),
        ),
        watch_lease_s=3.0,  # below the operator's minimum on purpose: the trigger must refresh often
    )
    with Client(dask_cluster.scheduler_address) as client:
        submit_job(client, job)
    started = time.monotonic()
    trigger = ParallelRunJobTrigger(
        "apr_test_dask", job.job_id, poll_interval=30.0, first_poll_delay=0.1, watch_lease_s=3.0
    )
    event = await asyncio.wait_for(_first_event(trigger), 120)
    assert event["status"] == "done", event
    assert event["summary"]["status"] == "succeeded" and event["summary"]["succeeded_items"] == 60, event
    assert time.monotonic() - started > 2 * 3.0, "the job outlived its lease"
    assert trigger.serialize()[1]["watch_lease_s"] == 3.0


@pytest.mark.asyncio
async def test_partition_trigger_fires_when_complete_and_on_errors(tmp_path: Path) -> None:
    from airflow_parallel_run.triggers import DatasetPartitionTrigger

    day = tmp_path / "day"
    rule = {"marker_file": None, "min_file_count": 3, "stable_pokes": None}
    spec = [{"type": "FileDataset", "paths": [str(day)], "partition_format": None, "storage_options": {}}]

    async def land() -> None:
        await asyncio.sleep(1.0)
        day.mkdir()
        for i in range(3):
            (day / f"{i}.txt").write_text("x")

    lander = asyncio.create_task(land())
    event = await asyncio.wait_for(
        _first_event(DatasetPartitionTrigger(spec, rule, 0.2, first_poll_delay=0.1)), 30
    )
    await lander
    assert event["status"] == "complete" and "3 files" in event["seen"]
    bad = [{**spec[0], "paths": ["nosuchprotocol://b/x"]}]
    event = await asyncio.wait_for(
        _first_event(DatasetPartitionTrigger(bad, rule, 0.2, first_poll_delay=0.1)), 30
    )
    assert event["status"] == "error" and "nosuchprotocol" in event["message"]
