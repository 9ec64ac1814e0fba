"""The task lifecycle on the real stack (REST only): mapped tasks, clearing and timing out deferrable
tasks, and marking a running task failed.

Every test keeps its files under a folder of its own (`dag_run.conf["root"]`, see
tests/dags/apr_e2e_lifecycle.py). Deferrable tests use the suite's Dask cluster of separate
worker processes (`dask_client`), named by the `apr_test_dask` connection made over REST.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from distributed import Client
from e2e_rest import Api, Stack
from test_e2e_deferrable import dask_connection  # noqa: F401 - the fixture, shared with that module

from airflow_parallel_run.core.driver.watch_lease import lease_reason, watch_key

pytestmark = pytest.mark.usefixtures("stack_logs_on_failure")

DAG_IDS = (
    "apr_test_mapped_partitions",
    "apr_e2e_deferrable_clear",
    "apr_e2e_deferrable_timeout",
    "apr_e2e_mark_failed",
    "apr_e2e_deferrable_mark_failed",
    "apr_e2e_deferrable_unwatched",
)
PARTITIONS = {"a": 3, "b": 2, "c": 4}
LOCK = ".airflow-parallel-run.lock"


@pytest.fixture(scope="module", autouse=True)
def lifecycle_dags(stack: Stack) -> None:
    stack.wait_for_dags(DAG_IDS)


@pytest.fixture
def root(demo_root: Path) -> Path:
    folder = demo_root / "lifecycle" / uuid.uuid4().hex[:12]
    folder.mkdir(parents=True)
    return folder


def _land(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / f"{name}.txt").write_text(f"v-{name}\n")


def _trigger(api: Api, dag_id: str, root: Path) -> str:
    response = api.trigger(dag_id, conf={"root": str(root)})
    assert response.status_code == 200, response.text
    return str(response.json()["dag_run_id"])


def _ti(api: Api, dag_id: str, run_id: str, task_id: str = "score", map_index: int | None = None) -> Any:
    path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}"
    return api.get(path + (f"/{map_index}" if map_index is not None else ""))


def _wait_ti(api: Api, dag_id: str, run_id: str, wanted: str, timeout: float, **where: Any) -> Any:
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while True:
        ti = _ti(api, dag_id, run_id, **where)
        if not seen or seen[-1] != ti["state"]:
            seen.append(ti["state"])
        if ti["state"] == wanted:
            return ti
        assert time.monotonic() < deadline, f"{dag_id} never {wanted} in {timeout:.0f} s: {seen}"
        time.sleep(0.5)


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not within {timeout:.0f} s"
        time.sleep(0.25)


def _job_id(api: Api, dag_id: str, run_id: str) -> str:
    """The id of the job the task submitted (its `parallel_run_job` XCom)."""
    return str(api.xcom(dag_id, run_id, "score", key="parallel_run_job")["job_id"])


def _wait_watched(client: Client, job_id: str, refreshes: int, timeout: float) -> None:
    """Waits until a trigger has refreshed the job's watch mark `refreshes` times (seen from the cluster)."""
    marks: set[str] = set()

    def refreshed() -> bool:
        mark = client.get_metadata(watch_key(job_id), default=None)
        if mark is not None:
            marks.add(str(mark))
        return len(marks) >= refreshes

    _wait_for(refreshed, timeout, f"{refreshes} refreshes of job {job_id}'s watch mark by its trigger")


def _attempt_rows(out: Path) -> int:
    report = out / "logs" / "sys" / "job_report" / "processed_mini-batches.csv"
    try:
        return max(0, len(report.read_text().splitlines()) - 1)
    except FileNotFoundError:
        return 0


def _xcom(api: Api, dag_id: str, run_id: str, task_id: str, map_index: int, key: str = "return_value") -> Any:
    path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}"
    return api.get(path, map_index=map_index)["value"]


def _sqlite(stack: Stack) -> bool:
    return str(stack.env.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "")).startswith("sqlite")


def _utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def _log_time(line: str) -> dt.datetime:
    """The time of a `master_role.txt` line (``YYYY-MM-DD HH:MM:SS ...``, UTC)."""
    return dt.datetime.strptime(line[:19], "%Y-%m-%d %H:%M:%S").replace(tzinfo=dt.timezone.utc)


def test_mapped_sensor_and_operator_score_each_partition_once(api: Api, root: Path) -> None:
    for name, count in PARTITIONS.items():
        _land(root / "partitions" / name, [f"{name}{i}" for i in range(count)])
    dag_id = "apr_test_mapped_partitions"
    run_id = _trigger(api, dag_id, root)
    run = api.wait_run(dag_id, run_id, timeout=360)
    assert run["state"] == "success", run

    manifests = [_xcom(api, dag_id, run_id, "wait", i)["manifest"] for i in range(3)]
    assert len(set(manifests)) == 3 and all(m.endswith(f".map{i}.json") for i, m in enumerate(manifests))
    for index, (name, count) in enumerate(PARTITIONS.items()):
        summary = _xcom(api, dag_id, run_id, "score", index)
        assert summary["output"] == str(root / "out" / run_id / str(index))
        lines = Path(summary["append_row_file"]).read_text().splitlines()
        assert lines == [f"{name}{i}.txt v-{name}{i}" for i in range(count)], (index, lines)

    events = api.get("/assets/events", source_dag_id=dag_id, source_run_id=run_id, limit=50)["asset_events"]
    by_index = {event["source_map_index"]: event for event in events}
    assert sorted(by_index) == [0, 1, 2], events
    for index, count in enumerate(PARTITIONS.values()):
        assert by_index[index]["uri"] == (root / "out" / run_id / str(index)).as_uri()
        assert by_index[index]["extra"]["succeeded_items"] == count


def test_clearing_a_running_deferrable_task_runs_it_again_cleanly(
    api: Api,
    root: Path,
    dask_connection: str,  # noqa: F811 - the imported fixture
) -> None:
    names = [f"item{i:02d}" for i in range(60)]
    _land(root / "in", names)
    dag_id = "apr_e2e_deferrable_clear"
    run_id = _trigger(api, dag_id, root)
    _wait_ti(api, dag_id, run_id, "deferred", timeout=180)
    _wait_for(lambda: _attempt_rows(root / "out") >= 4, 120, "four attempts of the first try")

    response = api.request(
        "POST",
        f"/dags/{dag_id}/clearTaskInstances",
        json={"dry_run": False, "task_ids": ["score"], "dag_run_id": run_id, "only_failed": False},
    )
    assert response.status_code == 200, response.text
    run = api.wait_run(dag_id, run_id, timeout=300)
    ti = _ti(api, dag_id, run_id)
    assert run["state"] == "success" and ti["state"] == "success", (run, ti)
    assert ti["try_number"] >= 2, "the success is the new try's"

    summary = api.xcom(dag_id, run_id, "score")
    assert summary["succeeded_items"] == 60 and summary["reused_mini_batches"] >= 1, summary
    lines = Path(summary["append_row_file"]).read_text().splitlines()
    assert lines == [f"{name}.txt v-{name}" for name in names], "every item exactly once, in order"
    assert not (root / "out" / LOCK).exists() and not (root / "out" / ".staging").exists()
    log = api.task_log(dag_id, run_id, "score", try_number=ti["try_number"])
    assert "Reuse: " in log and " mini-batches reused from " in log, "the deferrable log has the reuse line"
    assert "Job succeeded: 60 of 60 items succeeded" in log, "and the result line"


def test_marking_a_deferrable_task_failed_stops_its_job_with_those_words(
    api: Api,
    stack: Stack,
    root: Path,
    dask_client: Client,
    dask_connection: str,  # noqa: F811 - the imported fixture
) -> None:
    """Marked failed while its trigger watches the job: `on_kill` stops the job with those words.

    The PATCH waits until the trigger has refreshed the job's watch mark twice (so the triggerer runs the
    trigger and answers again), and the job would take two minutes (60 mini-batches of 8 s on 4
    processes), so a slow triggerer cannot let it finish before the stop arrives.
    """
    _land(root / "in", [f"item{i:03d}" for i in range(240)])
    dag_id = "apr_e2e_deferrable_mark_failed"
    run_id = _trigger(api, dag_id, root)
    _wait_ti(api, dag_id, run_id, "deferred", timeout=180)
    job_id = _job_id(api, dag_id, run_id)
    _wait_watched(dask_client, job_id, refreshes=2, timeout=90)
    assert dask_client.get_metadata(["airflow-parallel-run", job_id, "summary"], default=None) is None
    response = api.request(
        "PATCH", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/score", json={"new_state": "failed"}
    )
    assert response.status_code == 200, response.text
    result_file = root / "out" / "logs" / "job_result.txt"
    _wait_for(result_file.exists, 120, "logs/job_result.txt of the stopped job")
    result = result_file.read_text()
    words = result.splitlines()[0]
    if _sqlite(stack):
        # The triggerer answers a trigger's questions through an in-process API on the metadata DB; on
        # SQLite, while Airflow handles the very mark-failed, that answer took 10-20 s, so on_kill stops
        # the job after 8 s (STATE_WAIT_S) with the words that are certain.
        assert words in (
            "Job failed: the Airflow task was marked failed",
            "Job failed: the task was stopped from Airflow (marked success/failed or cleared)",
        ), result[:300]
    else:
        assert words == "Job failed: the Airflow task was marked failed", result[:300]
    summary = json.loads(result[result.rindex("\n{\n") :])  # the summary closes job_result.txt
    assert summary["succeeded_mini_batches"] < 30, "the job stopped before its end"
    _wait_for(lambda: not (root / "out" / LOCK).exists(), 30, "the output folder's lock released")
    assert not (root / "out" / ".staging").exists()
    assert _ti(api, dag_id, run_id)["state"] == "failed"


def test_a_deferrable_job_no_trigger_watches_stops_at_its_watch_lease(
    api: Api,
    stack: Stack,
    root: Path,
    dask_client: Client,
    dask_connection: str,  # noqa: F811 - the imported fixture
) -> None:
    """Marked failed before any trigger ran (the triggerer is paused: it cannot take the trigger, nor
    cancel it): nothing in Airflow stops the job, so the job stops itself once its `watch_lease_s=10`
    ran out, with words that say why."""
    _land(root / "in", [f"item{i:03d}" for i in range(240)])
    dag_id = "apr_e2e_deferrable_unwatched"
    triggerer = stack.processes["triggerer"].pid
    result_file = root / "out" / "logs" / "job_result.txt"
    os.killpg(triggerer, signal.SIGSTOP)
    try:
        run_id = _trigger(api, dag_id, root)
        _wait_ti(api, dag_id, run_id, "deferred", timeout=180)
        response = api.request(
            "PATCH", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/score", json={"new_state": "failed"}
        )
        assert response.status_code == 200, response.text
        _wait_for(result_file.exists, 120, "logs/job_result.txt of the unwatched job")
        job_id = _job_id(api, dag_id, run_id)
        assert dask_client.get_metadata(watch_key(job_id), default=None) is None, "no trigger ever ran"
    finally:
        os.killpg(triggerer, signal.SIGCONT)
    result = result_file.read_text()
    assert result.splitlines()[0] == f"Job failed: {lease_reason(10)}", result[:300]
    assert result.startswith("Job failed: no Airflow trigger watched the job for 10 s (its task was marked")
    summary = json.loads(result[result.rindex("\n{\n") :])
    assert summary["succeeded_mini_batches"] < 30, "the job stopped before its end"
    _wait_for(lambda: not (root / "out" / LOCK).exists(), 30, "the output folder's lock released")
    assert not (root / "out" / ".staging").exists()
    assert _ti(api, dag_id, run_id)["state"] == "failed"


def test_execution_timeout_stops_a_deferrable_job_in_time(
    api: Api,
    root: Path,
    dask_connection: str,  # noqa: F811 - the imported fixture
) -> None:
    _land(root / "in", [f"item{i:03d}" for i in range(160)])  # 80 mini-batches x 1 s on 2 slots: 40 s
    dag_id = "apr_e2e_deferrable_timeout"
    run_id = _trigger(api, dag_id, root)
    run = api.wait_run(dag_id, run_id, timeout=300)
    ti = _ti(api, dag_id, run_id)
    assert run["state"] == "failed" and ti["state"] == "failed", (run, ti)

    out = root / "out"
    result = (out / "logs" / "job_result.txt").read_text()
    assert result.startswith("Job failed: execution_timeout=0:00:15 exceeded"), result[:300]
    master = (out / "logs" / "sys" / "master_role.txt").read_text().splitlines()
    stop = next(
        line for line in master if " stopping at " in line and "execution_timeout=0:00:15 exceeded" in line
    )
    stopped_after = (_log_time(stop) - _utc(ti["start_date"])).total_seconds()
    assert stopped_after < 15 + 8, f"the job was told to stop {stopped_after:.1f} s after the task started"
    assert _attempt_rows(out) < 80, "the job did not run to its end"
    assert not (out / LOCK).exists() and not (out / ".staging").exists()
    log = api.task_log(dag_id, run_id, "score")
    assert "execution_timeout=0:00:15 exceeded: the parallel run job was stopped with" in log


def test_mark_failed_stops_the_job_and_leaves_its_result(api: Api, root: Path) -> None:
    _land(root / "in", [f"item{i:03d}" for i in range(80)])  # 80 x 0.5 s on 2 processes: 20 s
    dag_id = "apr_e2e_mark_failed"
    run_id = _trigger(api, dag_id, root)
    out = root / "out"
    _wait_ti(api, dag_id, run_id, "running", timeout=180)
    _wait_for(lambda: _attempt_rows(out) >= 4, 120, "four attempts")

    response = api.request(
        "PATCH", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/score", json={"new_state": "failed"}
    )
    assert response.status_code == 200, response.text
    _wait_for(lambda: (out / "logs" / "job_result.txt").exists(), 60, "logs/job_result.txt")
    _wait_for(lambda: not (out / LOCK).exists(), 30, "the output folder's lock released")
    result = (out / "logs" / "job_result.txt").read_text()
    assert result.startswith("Job failed: the Airflow task was marked failed"), result[:300]
    assert not (out / ".staging").exists()

    master = (out / "logs" / "sys" / "master_role.txt").read_text().splitlines()
    stop = next(line for line in master if " stopping at " in line)
    started = [
        line
        for node_log in (out / "logs" / "sys" / "node").rglob("*.txt")
        for line in node_log.read_text().splitlines()
        if "|started pid " in line
    ]
    assert started, "the node logs name the entry-script processes"
    late = [line for line in started if line[:19] > stop[:19]]
    assert late == [], f"entry-script processes started after the stop line ({stop}): {late}"
