"""Every example DAG runs for real with `dag.test()`: SQLite metadata DB, embedded Dask LocalCluster.

The conftest points AIRFLOW_HOME at a temp folder whose DAGs folder links the repo's `dags/` files
(plus a failing test DAG) and points AIRFLOW_PARALLEL_RUN_DEMO_ROOT at a temp demo root; the first
DAG run writes the demo data there through its own `prepare_demo_data` task.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pendulum
import pytest
from sklearn.datasets import load_digits

EXAMPLE_DAGS = (
    "digits_file_scoring",
    "iris_tabular_scoring",
    "daily_backfill_scoring",
    "side_inputs_scoring",
    "partitioned_daily_scoring",
    "arrival_driven_scoring",
)
DIGITS = 1797
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@pytest.fixture(scope="module")
def dagbag(airflow_db: Path) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    assert not bag.import_errors, bag.import_errors
    return bag


def _xcom(run: Any, task_id: str, key: str = "return_value") -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        query = XComModel.get_many(run_id=run.run_id, key=key, task_ids=task_id, dag_ids=run.dag_id)
        row = session.scalars(query).first()
        return None if row is None else XComModel.deserialize_value(row)


def _asset_events(uri_prefix: str) -> list[tuple[str, dict[str, Any]]]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(
            select(AssetModel.uri, AssetEvent.extra)
            .join(AssetEvent, AssetEvent.asset_id == AssetModel.id)
            .where(AssetModel.uri.startswith(uri_prefix))
        ).all()
        return [(uri, dict(extra or {})) for uri, extra in rows]


def _states(run: Any) -> dict[str, str]:
    from airflow.utils.session import create_session

    with create_session() as session:
        return {ti.task_id: str(ti.state) for ti in run.get_task_instances(session=session)}


def _test(dagbag: Any, dag_id: str, **kwargs: Any) -> Any:
    return dagbag.get_dag(dag_id).test(**kwargs)


def test_every_example_dag_imports_and_is_documented(dagbag: Any) -> None:
    assert set(EXAMPLE_DAGS) <= set(dagbag.dag_ids)
    for dag_id in EXAMPLE_DAGS:
        dag = dagbag.get_dag(dag_id)
        assert dag.doc_md and dag_id in dag.doc_md.splitlines()[0], dag_id
        assert "parallel-run" in dag.tags
        (op,) = [t for t in dag.tasks if t.task_type == "ParallelRunOperator"]
        assert op.outlets, f"{dag_id}: the output folder is an outlet"


def test_digits_params_have_titles_for_the_trigger_form(dagbag: Any) -> None:
    params = dagbag.get_dag("digits_file_scoring").params
    for name, title in (
        ("mini_batch_size", "Mini-batch size"),
        ("process_count_per_node", "Processes per node"),
        ("error_threshold", "Error threshold"),
    ):
        param = params.get_param(name)
        assert param.schema["title"] == title and param.schema["type"] == "integer"
    assert params["mini_batch_size"] == 10


def test_digits_file_scoring(dagbag: Any, demo_root: Path, capfd: pytest.CaptureFixture[str]) -> None:
    run = _test(dagbag, "digits_file_scoring", run_conf={"mini_batch_size": 25, "error_threshold": 5})
    log = capfd.readouterr().out
    assert str(run.state) == "success", _states(run)
    summary = _xcom(run, "score_digits")
    assert summary["status"] == "succeeded"
    assert (summary["total_items"], summary["succeeded_items"]) == (DIGITS, DIGITS)
    assert summary["total_mini_batches"] == 72, "mini_batch_size 25 from the trigger form: ceil(1797 / 25)"
    output = demo_root / "output" / "digits_file_scoring"
    assert summary["append_row_file"] == str(output / "digits_predictions.txt")
    lines = Path(summary["append_row_file"]).read_text().splitlines()
    assert len(lines) == DIGITS
    assert [line.split()[0] for line in lines] == sorted(line.split()[0] for line in lines)
    truth = load_digits().target
    hits = sum(
        int(digit) == truth[int(name[len("digit_") : -len(".png")])] for name, digit in map(str.split, lines)
    )
    assert hits / DIGITS > 0.9, "each line is '<file> <predicted digit>'"
    assert "Processed 72 of 72 mini-batches (100%)" in log
    assert "mini_batch_size=25 files" in log and "error_threshold=5" in log
    events = _asset_events(output.as_uri())
    assert events and events[-1][0] == output.as_uri()
    assert events[-1][1]["succeeded_items"] == DIGITS
    link = _xcom(run, "score_digits", key="_link_DaskDashboardLink")
    assert link.startswith("http://127.0.0.1:"), "embedded cluster: its dashboard, live while the task ran"


def test_iris_tabular_scoring(dagbag: Any, demo_root: Path) -> None:
    run = _test(dagbag, "iris_tabular_scoring")
    assert str(run.state) == "success", _states(run)
    summary = _xcom(run, "score_iris")
    assert (summary["status"], summary["total_items"], summary["succeeded_items"]) == ("succeeded", 150, 150)
    assert summary["total_mini_batches"] > 1, "1KB mini-batches split the 5 KB CSV"
    with open(summary["append_row_file"], newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 150
    assert {"sepal_length", "species", "prediction"} <= set(rows[0])
    accuracy = sum(row["prediction"] == row["species"] for row in rows) / len(rows)
    assert accuracy > 0.9


def test_daily_backfill_scoring_templates_paths_by_ds(dagbag: Any, demo_root: Path) -> None:
    outputs = {}
    for day in ("2024-01-02", "2024-01-03"):
        run = _test(dagbag, "daily_backfill_scoring", logical_date=pendulum.parse(f"{day}T00:00:00+00:00"))
        assert str(run.state) == "success", _states(run)
        summary = _xcom(run, "score_daily_partition")
        output = demo_root / "output" / "daily_backfill_scoring" / day
        assert summary["output"] == str(output)
        assert summary["total_items"] == summary["succeeded_items"] == 60
        outputs[day] = Path(summary["append_row_file"]).read_text().splitlines()
        assert sorted(p.name for p in (demo_root / "data" / "daily" / day).iterdir()) == [
            line.split()[0] for line in outputs[day]
        ]
        events = _asset_events(output.as_uri())
        assert [uri for uri, _ in events] == [output.as_uri()], "the alias resolves to the day's folder"
    assert outputs["2024-01-02"] != outputs["2024-01-03"], "each date scores its own partition"


def test_backfill_recipe_plans_one_run_per_date(dagbag: Any) -> None:
    """The docs' backfill command (dry run: no scheduler here) plans one run per day of the range."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import sync_bag_to_db

    DagBundlesManager().sync_bundles_to_db()
    sync_bag_to_db(dagbag, "dags-folder", None)
    result = subprocess.run(
        [sys.executable, "-m", "airflow", "backfill", "create", "--dag-id", "daily_backfill_scoring"]
        + ["--from-date", "2024-02-01", "--to-date", "2024-02-03", "--dry-run"],
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    for day in ("2024-02-01", "2024-02-02", "2024-02-03"):
        assert f"{day} 00:00:00+00:00" in result.stdout, result.stdout
    assert "2024-02-04" not in result.stdout


def test_side_inputs_scoring(dagbag: Any) -> None:
    run = _test(dagbag, "side_inputs_scoring")
    assert str(run.state) == "success", _states(run)
    summary = _xcom(run, "score_digits_with_words")
    assert summary["status"] == "succeeded" and summary["total_items"] == 200
    lines = Path(summary["append_row_file"]).read_text().splitlines()
    assert len(lines) == 200
    for line in lines:
        name, digit, word = line.split()
        assert name.startswith(("digit_00", "digit_01"))
        assert word == WORDS[int(digit)], line  # the word came from the side-input lookup table


def test_run_on_a_dask_connection_sets_the_dashboard_link(
    dagbag: Any, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """The hook, the operator and the extra link inside a real task run, on an existing cluster."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=False,
        protocol="tcp://",
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
        silence_logs=logging.ERROR,
    ) as cluster:
        conn = {
            "conn_type": "dask",
            "extra": {"address": cluster.scheduler_address, "dashboard_url": "http://dask.test:8787/status"},
        }
        monkeypatch.setenv("AIRFLOW_CONN_APR_TEST_DASK", json.dumps(conn))
        run = _test(dagbag, "apr_test_dask_connection")
    log = capfd.readouterr().out
    assert str(run.state) == "success", _states(run)
    summary = _xcom(run, "score")
    assert (summary["status"], summary["succeeded_items"]) == ("succeeded", 6)
    assert "connection 'apr_test_dask'" in log
    assert _xcom(run, "score", key="dask_dashboard_url") == "http://dask.test:8787/status"
    # What the UI shows: Airflow stores each extra link's URL under the link's xcom_key after the run.
    assert _xcom(run, "score", key="_link_DaskDashboardLink") == "http://dask.test:8787/status"


def test_failing_job_fails_the_task(dagbag: Any, capfd: pytest.CaptureFixture[str]) -> None:
    run = _test(dagbag, "apr_test_failing_scoring")
    log = capfd.readouterr().out
    assert str(run.state) == "failed"
    assert _states(run) == {"write_inputs": "success", "score": "failed"}
    summary = _xcom(run, "score", key="summary")
    assert summary["status"] == "failed"
    assert "error_threshold exceeded" in summary["message"]
    assert "First lines of" in log and "RUN_EXCEPTION: ValueError: cannot score 'bad'" in log
    assert "AirflowException: Job failed: error_threshold exceeded" in log
