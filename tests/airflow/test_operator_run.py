"""ParallelRunOperator.execute for real (engine + Dask), with a stand-in task context: no metadata DB.

Covers what the example DAGs cannot show cheaply: a `dask` connection to an existing cluster (and
the dashboard XCom for the extra link), the failure path, and on_kill cancelling a running job.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk import Asset
from airflow.sdk.exceptions import AirflowException
from distributed import LocalCluster

from airflow_parallel_run import operators
from airflow_parallel_run.core import ParallelRunConfig
from airflow_parallel_run.links import DASHBOARD_XCOM_KEY
from airflow_parallel_run.operators import SUMMARY_XCOM_KEY, ParallelRunOperator

ECHO = """
def run(mini_batch):
    return [open(p).read().strip() + " scored" for p in mini_batch]
"""
FAIL_ODD = """
def run(mini_batch):
    out = []
    for p in mini_batch:
        value = int(open(p).read())
        if value % 2:
            raise ValueError(f"odd value {value} in {p}")
        out.append(value)
    return out
"""
SLOW = """
import time

def run(mini_batch):
    time.sleep(2)
    return mini_batch
"""


class FakeTI:
    def __init__(self) -> None:
        self.xcom: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value


class FakeEvent:
    def __init__(self) -> None:
        self.extra: dict[str, Any] = {}
        self.added: list[tuple[Asset, dict[str, Any]]] = []

    def add(self, asset: Asset, extra: dict[str, Any] | None = None) -> None:
        self.added.append((asset, extra or {}))


class FakeOutletEvents(dict):
    def __missing__(self, key: Any) -> FakeEvent:
        self[key] = FakeEvent()
        return self[key]


def _context() -> dict[str, Any]:
    return {"ti": FakeTI(), "outlet_events": FakeOutletEvents()}


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=False,
        protocol="tcp://",
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
        silence_logs=logging.ERROR,
    ) as local:
        yield local


def test_run_on_a_dask_connection(
    cluster: LocalCluster,
    monkeypatch: pytest.MonkeyPatch,
    write_script: Callable[..., str],
    files: Callable[..., Path],
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    address = cluster.scheduler_address
    owned: list[bool] = []  # the driver runs in the task's process: it owns it (core/driver/allocator.py)
    monkeypatch.setattr(operators, "own_process", lambda: owned.append(True))
    monkeypatch.setenv(
        "AIRFLOW_CONN_DASK_TEST_CLUSTER",
        f'{{"conn_type": "dask", "extra": {{"address": "{address}", "dashboard_url": "http://dash:8787/status"}}}}',
    )
    config = ParallelRunConfig(entry_script=write_script(ECHO), mini_batch_size=4, process_count_per_node=2)
    op = ParallelRunOperator(
        task_id="score",
        parallel_run_config=config,
        inputs=str(files(10)),
        output_path=str(tmp_path / "out"),
        dask_conn_id="dask_test_cluster",
        mini_batch_size="3",
    )
    context = _context()
    op.render_template_fields(context)  # type: ignore[arg-type]
    summary = op.execute(context)  # type: ignore[arg-type]
    log = capfd.readouterr().out
    assert summary["status"] == "succeeded" and owned == [True]
    assert (summary["total_items"], summary["total_mini_batches"]) == (10, 4)
    lines = Path(summary["append_row_file"]).read_text().splitlines()
    assert lines == [f"{i} scored" for i in range(10)]
    assert context["ti"].xcom[DASHBOARD_XCOM_KEY] == "http://dash:8787/status"
    assert context["outlet_events"][op.output_asset].extra["succeeded_items"] == 10
    # Airflow's task logging writes to stdout: progress lines come once, from the task's logger.
    progress = [line for line in log.splitlines() if "Processed 4 of 4 mini-batches (100%)" in line]
    assert len(progress) == 1 and "ParallelRunOperator" in progress[0], log
    assert "cluster=connection 'dask_test_cluster'" in log
    assert "Dask dashboard: http://dash:8787/status" in log


def test_failed_job_fails_the_task_and_logs_the_error_summary(
    write_script: Callable[..., str],
    files: Callable[..., Path],
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    config = ParallelRunConfig(
        entry_script=write_script(FAIL_ODD), mini_batch_size=1, run_max_try=1, process_count_per_node=2
    )
    op = ParallelRunOperator(
        task_id="score",
        parallel_run_config=config,
        inputs=[str(files(6))],
        output_path=str(tmp_path / "out"),
        error_threshold=1,
    )
    context = _context()
    with pytest.raises(AirflowException) as info:
        op.execute(context)  # type: ignore[arg-type]
    log = capfd.readouterr().out
    assert "error_threshold exceeded" in str(info.value)
    summary = context["ti"].xcom[SUMMARY_XCOM_KEY]
    assert summary["status"] == "failed" and summary["message"] == str(info.value)
    head = log[log.index("First lines of") :]
    assert "logs/user/error.txt" in head.splitlines()[0]
    assert "RUN_EXCEPTION: ValueError: odd value 1" in head
    assert not context["outlet_events"], "a failed run emits no asset event"
    # the embedded cluster's dashboard (served while the task runs) is recorded for the extra link
    assert str(context["ti"].xcom[DASHBOARD_XCOM_KEY]).startswith("http://127.0.0.1:")


def test_on_kill_cancels_a_running_job(
    write_script: Callable[..., str], files: Callable[..., Path], tmp_path: Path
) -> None:
    config = ParallelRunConfig(entry_script=write_script(SLOW), mini_batch_size=1, process_count_per_node=1)
    op = ParallelRunOperator(
        task_id="score", parallel_run_config=config, inputs=str(files(20)), output_path=str(tmp_path / "out")
    )
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["summary"] = op.execute(_context())  # type: ignore[arg-type]
        except BaseException as exc:  # noqa: BLE001 - inspected below
            outcome["error"] = exc

    thread = threading.Thread(target=target)
    started = time.monotonic()
    thread.start()
    deadline = started + 60
    while op._driver is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    op.on_kill()
    thread.join(timeout=90)
    assert not thread.is_alive()
    assert isinstance(outcome.get("error"), AirflowException), outcome
    # outside a task runner Airflow cannot be asked what the user did: the words say what is certain
    assert "the task was stopped from Airflow (marked success/failed or cleared)" in str(outcome["error"])
    assert time.monotonic() - started < 30, "20 mini-batches x 2 s would take 40 s: the job must stop early"
