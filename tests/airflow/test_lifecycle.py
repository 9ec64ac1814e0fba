"""The task's lifecycle outside the happy path, for real (engine + Dask), with a stand-in task context.

Manifest integrity (files deleted or changed after the sensor planned them), settings that must fail
at try 1 naming the field, `execution_timeout` and a stop from Airflow on the embedded cluster (the job
writes its result and removes its staging area), a new try superseding the previous try's in-cluster
job, the trigger enforcing `execution_timeout`, and the deferrable path's log lines.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowTaskTimeout
from airflow.sdk.execution_time.timeout import TimeoutPosix

from airflow_parallel_run import airflow_config, operators
from airflow_parallel_run.core import (
    ConfigError,
    FileDataset,
    OutputBusyError,
    ParallelRunConfig,
    TabularDataset,
)
from airflow_parallel_run.deferral import supersede
from airflow_parallel_run.operators import ParallelRunOperator
from airflow_parallel_run.sensors import DatasetPartitionSensor
from airflow_parallel_run.task_identity import TaskIdentity, stop_reason_for_state
from tests.airflow.test_error_catalogue_airflow import check_documented
from tests.airflow.test_operator_run import FakeOutletEvents

ECHO = """
import os

def run(mini_batch):
    return [os.path.basename(p) + " " + open(p).read().strip() for p in mini_batch]
"""
ROWS = """
def run(table):
    return [f"{a}-{b}" for a, b in zip(table["a"], table["b"])]
"""
SLOW = """
import time

def run(mini_batch):
    time.sleep(2)
    return mini_batch
"""


class FakeTI:
    """The task instance fields and XCom calls the operator and sensor use."""

    def __init__(self, task_id: str = "score", map_index: int = -1) -> None:
        self.dag_id = "apr_unit"
        self.run_id = "manual__2024-05-01T00:00:00+00:00"
        self.task_id = task_id
        self.map_index = map_index
        self.start_date = dt.datetime.now(dt.timezone.utc)
        self.xcom: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value


def _context(task_id: str = "score", map_index: int = -1) -> dict[str, Any]:
    ti = FakeTI(task_id, map_index)
    return {"ti": ti, "run_id": ti.run_id, "outlet_events": FakeOutletEvents()}


def _land(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (folder / f"item{i}.txt").write_text(f"v{i}\n")
    return folder


def _manifest(tmp_path: Path, dataset: Any, mini_batch_size: Any = 2) -> dict[str, Any]:
    """What DatasetPartitionSensor hands the operator once the partition is complete."""
    sensor = DatasetPartitionSensor(
        task_id="wait",
        input=dataset,
        mini_batch_size=mini_batch_size,
        min_file_count=1,
        manifest_dir=str(tmp_path / "manifests"),
    )
    return sensor._finish(_context("wait"))  # type: ignore[arg-type]


def _operator(script: str, inputs: Any, out: Path, **kwargs: Any) -> ParallelRunOperator:
    config = ParallelRunConfig(entry_script=script, mini_batch_size=2, process_count_per_node=2)
    return ParallelRunOperator(
        task_id="score", parallel_run_config=config, inputs=inputs, output_path=str(out), **kwargs
    )


# -- manifest integrity --------------------------------------------------------------------------------


def test_a_file_deleted_after_the_sensor_fails_naming_the_manifest_and_the_file(
    tmp_path: Path, write_script: Callable[..., str]
) -> None:
    landing = _land(tmp_path / "landing", 5)
    reference = _manifest(tmp_path, str(landing))
    (landing / "item3.txt").unlink()
    op = _operator(write_script(ECHO), reference, tmp_path / "out")
    with pytest.raises(AirflowFailException) as info:  # retrying cannot bring the file back
        op.execute(_context())  # type: ignore[arg-type]
    check_documented(
        "Cannot run the planned inputs: manifest <manifest>: 1 input file(s) changed after DatasetPartitionSensor "
        "planned them: <file> was deleted; the planned mini-batches no longer describe the data. Clear the "
        "sensor task to plan the partition again, or set on_manifest_change='replan' on the operator",
        str(info.value),
    )
    assert reference["manifest"] in str(info.value) and str(landing / "item3.txt") in str(info.value)
    assert not (tmp_path / "out").exists(), "nothing ran"


def test_a_file_rewritten_after_the_sensor_fails_instead_of_scoring_new_content(
    tmp_path: Path, write_script: Callable[..., str]
) -> None:
    landing = _land(tmp_path / "landing", 5)
    reference = _manifest(tmp_path, str(landing))
    time.sleep(0.01)
    (landing / "item1.txt").write_text("X1\n")  # same size, other content
    (landing / "item4.txt").write_text("v4 and more\n")
    op = _operator(write_script(ECHO), reference, tmp_path / "out")
    with pytest.raises(AirflowFailException) as info:
        op.execute(_context())  # type: ignore[arg-type]
    message = str(info.value)
    assert "2 input file(s) changed" in message
    assert f"{landing / 'item1.txt'} was changed; {landing / 'item4.txt'} was changed" in message


def test_a_tabular_file_changed_after_the_sensor_fails(
    tmp_path: Path, write_script: Callable[..., str]
) -> None:
    table = tmp_path / "landing" / "t.csv"
    table.parent.mkdir()
    table.write_text("a,b\n" + "".join(f"{i},{i}\n" for i in range(40)))
    reference = _manifest(tmp_path, TabularDataset.from_delimited_files(str(table)), "100")
    with table.open("a") as handle:  # the planned byte ranges now cut other rows
        handle.write("".join(f"{i},{i}\n" for i in range(40, 60)))
    op = _operator(write_script(ROWS), reference, tmp_path / "out")
    with pytest.raises(AirflowFailException, match=rf"{table} was changed"):
        op.execute(_context())  # type: ignore[arg-type]


def test_object_store_manifests_are_checked_from_one_listing(tmp_path: Path) -> None:
    """Remote files (here fsspec's memory store, which has no ETag: their bytes are hashed) are checked
    against the manifest from a fresh listing; deleted and rewritten files are both named."""
    import fsspec

    from airflow_parallel_run.core.inputs.fingerprint import Fingerprinter
    from airflow_parallel_run.core.plan import plan_inputs
    from airflow_parallel_run.core.plan.manifest import (
        check_inputs,
        fingerprint_plan,
        load_manifest,
        write_manifest,
    )

    fs = fsspec.filesystem("memory")
    root = f"/apr-lifecycle-{uuid.uuid4().hex[:8]}"
    for i in range(4):
        fs.pipe(f"{root}/day/f{i}.txt", f"v{i}".encode())
    datasets = [FileDataset.from_files(f"memory://{root}/day")]
    planned = plan_inputs(datasets, 2)
    fingerprinter = Fingerprinter(str(tmp_path / "memo.sqlite"))
    try:
        fingerprints = fingerprint_plan(planned, datasets, fingerprinter)
        assert len(fingerprints) == 4
        reference = write_manifest(str(tmp_path / "m.json"), datasets, planned, fingerprints)
        manifest = load_manifest(reference["manifest"])
        assert check_inputs(manifest, fingerprinter) == []
        fs.pipe(f"{root}/day/f1.txt", b"X1")  # same size, other bytes
        fs.rm(f"{root}/day/f3.txt")
        changes = [(c.url.rsplit("/", 1)[1], c.what) for c in check_inputs(manifest, fingerprinter)]
        assert changes == [("f1.txt", "changed"), ("f3.txt", "deleted")]
        fs.rm(f"{root}/day", recursive=True)  # nothing left to list: every file is named deleted
        assert [c.what for c in check_inputs(manifest, fingerprinter)] == ["deleted"] * 4
    finally:
        fingerprinter.close()
        if fs.exists(root):
            fs.rm(root, recursive=True)


def test_replan_runs_the_inputs_as_they_are_now(
    tmp_path: Path, write_script: Callable[..., str], capfd: pytest.CaptureFixture[str]
) -> None:
    landing = _land(tmp_path / "landing", 5)
    reference = _manifest(tmp_path, str(landing))
    (landing / "item0.txt").unlink()
    (landing / "item2.txt").write_text("new\n")
    op = _operator(write_script(ECHO), reference, tmp_path / "out", on_manifest_change="replan")
    summary = op.execute(_context())  # type: ignore[arg-type]
    log = capfd.readouterr().out
    assert "on_manifest_change='replan'" in log and "item0.txt was deleted" in log
    lines = Path(summary["append_row_file"]).read_text().splitlines()
    assert lines == ["item1.txt v1", "item2.txt new", "item3.txt v3", "item4.txt v4"]


def test_an_unchanged_manifest_runs_exactly_its_plan(
    tmp_path: Path, write_script: Callable[..., str]
) -> None:
    landing = _land(tmp_path / "landing", 5)
    reference = _manifest(tmp_path, str(landing))
    _land(landing, 7)  # two late files
    summary = _operator(write_script(ECHO), reference, tmp_path / "out").execute(_context())  # type: ignore[arg-type]
    assert summary["total_items"] == 5


def test_bad_on_manifest_change_fails_at_parse_time(tmp_path: Path, write_script: Callable[..., str]) -> None:
    with pytest.raises(ConfigError) as info:
        _operator(write_script(ECHO), "/in", tmp_path / "out", on_manifest_change="ignore")
    check_documented("on_manifest_change='ignore' is not allowed: fail or replan", str(info.value))


# -- settings that fail at try 1, naming the field -----------------------------------------------------


@pytest.mark.parametrize("rendered", ["nan", "inf", "-inf", "1e999", "NaN"])
def test_a_non_finite_timeout_fails_naming_the_field(
    tmp_path: Path, write_script: Callable[..., str], rendered: str
) -> None:
    landing = _land(tmp_path / "landing", 2)
    op = _operator(
        write_script(ECHO), str(landing), tmp_path / "out", run_invocation_timeout="{{ params.t }}"
    )
    op.render_template_fields({"params": {"t": rendered}})  # type: ignore[arg-type]
    json.dumps(op.run_invocation_timeout, allow_nan=False)  # the rendered field is storable
    with pytest.raises(AirflowFailException) as info:
        op.execute(_context())  # type: ignore[arg-type]
    check_documented(
        "Invalid ParallelRunOperator setting: run_invocation_timeout='nan' is not allowed: a finite number "
        "of seconds > 0",
        str(info.value).replace(repr(rendered), "'nan'"),
    )
    assert not (tmp_path / "out").exists()


def test_a_literal_non_finite_timeout_fails_at_parse_time(
    tmp_path: Path, write_script: Callable[..., str]
) -> None:
    with pytest.raises(ConfigError, match="run_invocation_timeout=inf is not allowed: a finite number"):
        _operator(write_script(ECHO), "/in", tmp_path / "out", run_invocation_timeout=float("inf"))


def test_a_byte_mini_batch_size_on_file_input_fails_without_retry(
    tmp_path: Path, write_script: Callable[..., str]
) -> None:
    landing = _land(tmp_path / "landing", 2)
    op = _operator(write_script(ECHO), str(landing), tmp_path / "out", mini_batch_size="{{ params.size }}")
    op.render_template_fields({"params": {"size": "5MB"}})  # type: ignore[arg-type]
    with pytest.raises(AirflowFailException) as info:
        op.execute(_context())  # type: ignore[arg-type]
    check_documented(
        "Invalid ParallelRunOperator setting: mini_batch_size='5MB' is not allowed: a number of files for file "
        "input (units KB/MB/GB are for tabular input)",
        str(info.value),
    )


def test_a_config_error_inside_the_cluster_fails_without_retry(
    tmp_path: Path, write_script: Callable[..., str]
) -> None:
    op = _operator(write_script(ECHO), "/in", tmp_path / "out")
    error = {
        "status": "error",
        "error_type": "ConfigError",
        "field": "output_path",
        "message": "output_path='x' ...",
    }
    with pytest.raises(AirflowFailException, match="Invalid ParallelRunOperator setting: output_path='x'"):
        op._remote_summary(_context(), error)  # type: ignore[arg-type]
    with pytest.raises(AirflowException) as info:  # anything else may be transient: retried
        op._remote_summary(_context(), {**error, "error_type": "OSError"})  # type: ignore[arg-type]
    assert not isinstance(info.value, AirflowFailException)


def test_a_busy_output_folder_is_retried_while_other_setting_errors_are_final(
    tmp_path: Path, write_script: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine's OutputBusyError (a ConfigError of the moment: another job holds the folder) fails the
    try so that Airflow retries it; any other ConfigError fails the task for good."""

    landing = _land(tmp_path / "landing", 2)
    raised: list[Exception] = []

    def busy_run_job(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise raised[-1]

    monkeypatch.setattr(operators, "run_job", busy_run_job)
    op = _operator(write_script(ECHO), str(landing), tmp_path / "out")
    raised.append(OutputBusyError("output_path", "/out", "a folder no other running job writes to"))
    with pytest.raises(AirflowException, match="The output folder is busy: output_path='/out'") as info:
        op.execute(_context())  # type: ignore[arg-type]
    assert not isinstance(info.value, AirflowFailException)
    raised.append(ConfigError("output_path", "/out", "a folder"))
    with pytest.raises(AirflowFailException, match="Invalid ParallelRunOperator setting: output_path='/out'"):
        op.execute(_context())  # type: ignore[arg-type]


def test_more_processes_than_the_cpus_warn_in_the_task_log(
    tmp_path: Path,
    write_script: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    landing = _land(tmp_path / "landing", 2)
    monkeypatch.setattr(airflow_config, "cpu_count", lambda: 2)
    ran: dict[str, Any] = {}

    def fake_run_job(config: ParallelRunConfig, *args: Any, **kwargs: Any) -> dict[str, Any]:
        ran["processes"] = config.processes_per_node
        return {"status": "succeeded", "output": str(tmp_path / "out")}

    monkeypatch.setattr(operators, "run_job", fake_run_job)
    op = _operator(
        write_script(ECHO), str(landing), tmp_path / "out", process_count_per_node="{{ params.p }}"
    )
    op.render_template_fields({"params": {"p": "30"}})  # type: ignore[arg-type]
    op.execute(_context())  # type: ignore[arg-type]
    log = capfd.readouterr().out
    assert ran["processes"] == 30
    warning = next(line for line in log.splitlines() if "process_count_per_node=30 is more than" in line)
    check_documented(
        "process_count_per_node=30 is more than 2 x the 2 CPU(s) of this host: the embedded cluster starts 30 "
        "entry-script processes that compete for them and for memory. Lower it unless run() mostly waits for "
        "I/O, or use a dask_conn_id cluster",
        warning[warning.index("process_count_per_node") : warning.index("dask_conn_id cluster") + 20],
    )
    op = _operator(write_script(ECHO), str(landing), tmp_path / "out2", process_count_per_node=4)
    op.execute(_context())  # type: ignore[arg-type]
    assert "more than 2 x" not in capfd.readouterr().out


# -- stopping on the embedded cluster ------------------------------------------------------------------


def _slow_job(tmp_path: Path, write_script: Callable[..., str], files: int = 20) -> ParallelRunOperator:
    landing = _land(tmp_path / "landing", files)
    config = ParallelRunConfig(entry_script=write_script(SLOW), mini_batch_size=1, process_count_per_node=1)
    return ParallelRunOperator(
        task_id="score", parallel_run_config=config, inputs=str(landing), output_path=str(tmp_path / "out")
    )


def _assert_stopped_cleanly(out: Path, words: str) -> str:
    result = (out / "logs" / "job_result.txt").read_text()
    assert result.startswith(f"Job failed: {words}"), result[:300]
    assert not (out / ".staging").exists(), "the staging area is removed"
    assert not list(out.glob(".airflow-parallel-run*.lock")), "the output folder is free again"
    assert words in (out / "logs" / "sys" / "master_role.txt").read_text()
    return result


def _timed_out_job(tmp_path: Path, write_script: Callable[..., str]) -> tuple[AirflowTaskTimeout, float]:
    op = _slow_job(tmp_path, write_script)
    op.execution_timeout = dt.timedelta(seconds=5)
    started = time.monotonic()
    with pytest.raises(AirflowTaskTimeout) as info, TimeoutPosix(5):  # what Airflow's task runner does
        op.execute(_context())  # type: ignore[arg-type]
    return info.value, time.monotonic() - started


def test_execution_timeout_on_the_embedded_cluster_stops_the_job_and_keeps_its_result(
    tmp_path: Path, write_script: Callable[..., str], capfd: pytest.CaptureFixture[str]
) -> None:
    error, _ = _timed_out_job(tmp_path, write_script)
    log = capfd.readouterr().out
    check_documented(
        "execution_timeout=<limit> exceeded: the parallel run job was stopped with <done> of <total> mini-batches "
        "committed (a re-run reuses them); see <logs>/job_result.txt",
        str(error),
    )
    assert str(tmp_path / "out" / "logs") in str(error)
    assert "Stopping: execution_timeout=0:00:05 exceeded" in log
    _assert_stopped_cleanly(tmp_path / "out", "execution_timeout=0:00:05 exceeded")


def _entry_processes_started_after_the_stop(out: Path) -> list[str]:
    """`started pid` lines of the node logs later than the driver's `stopping:` line."""
    master = (out / "logs" / "sys" / "master_role.txt").read_text().splitlines()
    stop = next(line for line in master if " stopping at " in line)[:19]  # second resolution
    started = [
        line
        for node_log in (out / "logs" / "sys" / "node").rglob("*.txt")
        for line in node_log.read_text().splitlines()
        if "|started pid " in line
    ]
    return [line for line in started if line[:19] > stop]


def test_execution_timeout_on_the_embedded_cluster_stops_within_seconds(
    tmp_path: Path, write_script: Callable[..., str]
) -> None:
    _, elapsed = _timed_out_job(tmp_path, write_script)
    assert _entry_processes_started_after_the_stop(tmp_path / "out") == []
    assert elapsed < 5 + 15, f"20 mini-batches x 2 s would take 40 s; stopped after {elapsed:.1f} s"


def test_a_stop_from_airflow_names_what_the_user_did(
    tmp_path: Path, write_script: Callable[..., str]
) -> None:
    op = _slow_job(tmp_path, write_script)
    previous = signal.signal(signal.SIGTERM, lambda *_: op.on_kill())  # as Airflow's task runner does

    def stop_when_running() -> None:
        deadline = time.monotonic() + 60
        while op._driver is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)  # the supervisor, after the user marked the task failed

    stopper = threading.Thread(target=stop_when_running, daemon=True)
    try:
        with mock.patch.object(TaskIdentity, "current_state", return_value="failed"):
            stopper.start()
            with pytest.raises(AirflowException, match="Job failed: the Airflow task was marked failed"):
                op.execute(_context())  # type: ignore[arg-type]
    finally:
        signal.signal(signal.SIGTERM, previous)
        stopper.join(timeout=10)
    _assert_stopped_cleanly(tmp_path / "out", "the Airflow task was marked failed")


@pytest.mark.parametrize(
    ("state", "words"),
    [
        ("success", "the Airflow task was marked success"),
        ("failed", "the Airflow task was marked failed"),
        (None, "the Airflow task was cleared"),
        ("restarting", "the Airflow task was cleared"),
        ("up_for_retry", "the task was stopped from Airflow (its state is now up_for_retry)"),
    ],
)
def test_stop_words_follow_the_state_airflow_gave_the_task(state: str | None, words: str) -> None:
    assert stop_reason_for_state(state) == words
    assert stop_reason_for_state(state, known=False) == (
        "the task was stopped from Airflow (marked success/failed or cleared)"
    )


def test_every_task_instance_has_its_own_artefact_path() -> None:
    base = TaskIdentity("d", "manual__2024-01-01T00:00:00+00:00", "wait")
    paths = {
        base.path_base("/m"),
        TaskIdentity("d", base.run_id, "wait", 0).path_base("/m"),
        TaskIdentity("d", base.run_id, "wait", 1).path_base("/m"),
        TaskIdentity("d", "manual__2024-01-01T00_00_00_00_00", "wait").path_base("/m"),  # sanitises alike
        TaskIdentity("d", "manual__2024-01-01T00:00:00_00:00", "wait").path_base("/m"),
    }
    assert len(paths) == 5, paths
    assert TaskIdentity("d", "r", "t", 2).path_base("/m") == "/m/d/t/r.map2"
    assert len({TaskIdentity("d", "r", "t", i).key for i in (-1, 0, 1)}) == 3


# -- deferrable mode -----------------------------------------------------------------------------------


def _remote(script: str, folder: Path, out: Path, files: int) -> Any:
    from airflow_parallel_run.core.driver.job import JobRequest
    from airflow_parallel_run.core.driver.remote import RemoteJob

    return RemoteJob.of(
        JobRequest(
            ParallelRunConfig(entry_script=script, mini_batch_size=1, process_count_per_node=2),
            (FileDataset.from_files(str(_land(folder, files))),),
            str(out),
        ),
    )


def test_a_new_try_stops_the_previous_tries_job_before_it_starts(
    dask_cluster: Any, tmp_path: Path, write_script: Callable[..., str], capfd: pytest.CaptureFixture[str]
) -> None:
    from distributed import Client

    from airflow_parallel_run.core.driver.remote import job_state, submit_job, wait_for_end

    identity = TaskIdentity("apr_unit", "r1", "score")
    old = _remote(write_script(SLOW), tmp_path / "in", tmp_path / "out", 40)
    with Client(dask_cluster.scheduler_address) as client:
        submit_job(client, old, identity.key)
        deadline = time.monotonic() + 60
        while not (tmp_path / "out" / "logs" / "sys" / "job_report" / "processed_mini-batches.csv").exists():
            assert time.monotonic() < deadline, "the first try's job never started"
            time.sleep(0.2)
        op = _operator(
            write_script(ECHO), str(tmp_path / "in"), tmp_path / "out", dask_conn_id="apr_test_dask"
        )
        started = time.monotonic()
        supersede(client, identity, op.log)  # what the new try does before it submits its own job
        waited = time.monotonic() - started
        summary, _ = job_state(client, old.job_id)
        assert summary is not None and summary["status"] == "failed"
        assert "superseded by a new try of the Airflow task" in summary["message"]
        assert waited < 60
        new = _remote(write_script(ECHO), tmp_path / "in", tmp_path / "out", 40)
        submit_job(client, new, identity.key)
        done = wait_for_end(client, new.job_id, 120)
    assert done is not None and done["status"] == "succeeded", done
    assert f"Job {old.job_id} of a previous try of {identity} is still running" in capfd.readouterr().out


@pytest.mark.asyncio
async def test_the_trigger_stops_the_job_at_the_execution_timeout(
    dask_cluster: Any, tmp_path: Path, write_script: Callable[..., str]
) -> None:
    from distributed import Client

    from airflow_parallel_run.core.driver.remote import submit_job
    from airflow_parallel_run.triggers import ParallelRunJobTrigger

    job = _remote(write_script(SLOW), tmp_path / "in", tmp_path / "out", 40)
    with Client(dask_cluster.scheduler_address) as client:
        submit_job(client, job)
    started = time.time()
    trigger = ParallelRunJobTrigger(
        "apr_test_dask",
        job.job_id,
        poll_interval=0.5,
        first_poll_delay=0.1,
        deadline=started + 6,
        timeout_label="execution_timeout=0:00:06",
    )
    event = await asyncio.wait_for(_first_event(trigger), 120)
    assert event["status"] == "timeout" and event["message"] == "execution_timeout=0:00:06 exceeded"
    assert event["summary"]["message"] == "Job failed: execution_timeout=0:00:06 exceeded"
    assert time.time() - started < 6 + 40, "stopped in time, not after all 40 mini-batches"
    assert any(line.startswith("Reuse: 0 of 40 mini-batches") for line in event["lines"])
    assert event["lines"][-1].startswith("Job failed: execution_timeout=0:00:06 exceeded")
    _assert_stopped_cleanly(tmp_path / "out", "execution_timeout=0:00:06 exceeded")

    op = _operator(write_script(ECHO), "/in", tmp_path / "out", dask_conn_id="apr_test_dask", deferrable=True)
    context = _context()
    with pytest.raises(
        AirflowTaskTimeout, match=r"execution_timeout=0:00:06 exceeded: the parallel run job was stopped"
    ):
        op.execute_complete(context, event)  # type: ignore[arg-type]
    assert context["ti"].xcom["summary"]["status"] == "failed"


async def _first_event(trigger: Any) -> Any:
    async for event in trigger.run():
        return event.payload
    return None


def test_a_rerun_in_the_cluster_explains_what_changed(
    dask_cluster: Any, tmp_path: Path, write_script: Callable[..., str]
) -> None:
    """The in-cluster driver finds the same code in the same place each time, so the reuse line of a
    re-run names the changed input instead of claiming there was no earlier run."""
    from distributed import Client

    from airflow_parallel_run.core.driver.remote import job_lines, submit_job, wait_for_end

    script = write_script(ECHO)
    with Client(dask_cluster.scheduler_address) as client:
        first = _remote(script, tmp_path / "in", tmp_path / "out", 6)
        submit_job(client, first)
        assert (wait_for_end(client, first.job_id, 120) or {}).get("status") == "succeeded"
        (tmp_path / "in" / "item4.txt").write_text("changed\n")
        second = _remote(script, tmp_path / "in", tmp_path / "out", 0)
        submit_job(client, second)
        assert (wait_for_end(client, second.job_id, 120) or {}).get("status") == "succeeded"
        reuse = next(line for line in job_lines(client, second.job_id) if line.startswith("Reuse:"))
    assert reuse.endswith(
        f"5 of 6 mini-batches reused from {tmp_path / 'reuse-cache'}; 1 to run: input file "
        f"{tmp_path / 'in' / 'item4.txt'} changed"
    ), reuse


def test_the_resumed_task_logs_the_jobs_lines(
    tmp_path: Path, write_script: Callable[..., str], capfd: pytest.CaptureFixture[str]
) -> None:
    op = _operator(write_script(ECHO), "/in", tmp_path / "out", dask_conn_id="c", deferrable=True)
    lines = [
        "Reuse: 3 of 4 mini-batches reused from /cache; 1 to run: input file /in/x changed",
        "Job succeeded: 8 of 8",
    ]
    summary = {
        "status": "succeeded",
        "output": str(tmp_path / "out"),
        "logs_dir": str(tmp_path / "out" / "logs"),
    }
    assert op.execute_complete(_context(), {"status": "done", "summary": summary, "lines": lines}) == summary  # type: ignore[arg-type]
    log = capfd.readouterr().out
    assert lines[0] in log and lines[1] in log and f"Logs: {tmp_path / 'out' / 'logs'}" in log
