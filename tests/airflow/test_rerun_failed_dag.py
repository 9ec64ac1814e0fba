"""`ParallelRunOperator(rerun_failed=...)` with `dag.test()`: a run that fails some items, a run with the
switch on that runs only them into the same output folder (the output ends complete and in order), and a
third that is refused because nothing failed any more."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

FAILING = ["f02.txt", "f09.txt"]


@pytest.fixture(scope="module")
def dagbag(airflow_db: Path) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    assert not bag.import_errors, bag.import_errors
    return bag


def _summary(run: Any) -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        query = XComModel.get_many(
            run_id=run.run_id, key="return_value", task_ids="score", dag_ids=run.dag_id
        )
        row = session.scalars(query).first()
        return None if row is None else XComModel.deserialize_value(row)


def test_rerun_failed_switch(dagbag: Any, demo_root: Path, capfd: pytest.CaptureFixture[str]) -> None:
    root = demo_root / "rerun_failed"
    (root / "in").mkdir(parents=True)
    for i in range(15):
        (root / "in" / f"f{i:02d}.txt").write_text(f"value {i}\n")
    (root / "fail.txt").write_text("\n".join(FAILING))
    dag = dagbag.get_dag("apr_test_rerun_failed")

    first = dag.test()
    assert str(first.state) == "success"
    assert _summary(first)["failed_items"] == 2
    failed = (root / "out" / "logs" / "sys" / "job_report" / "failed_items.jsonl").read_text().splitlines()
    assert [Path(json.loads(line)["item"]["file"]).name for line in failed] == FAILING

    (root / "fail.txt").write_text("")
    (root / "calls.txt").unlink()
    second = dag.test(run_conf={"rerun_failed": True})
    assert str(second.state) == "success"
    summary = _summary(second)
    assert summary["failed_items"] == 0 and summary["reused_mini_batches"] == 13, summary
    assert sorted((root / "calls.txt").read_text().split()) == FAILING  # only the failed items ran
    expected = "".join(f"f{i:02d}.txt value {i}\n" for i in range(15))
    assert (root / "out" / "parallel_run_step.txt").read_text() == expected  # every item once, in order

    capfd.readouterr()
    third = dag.test(run_conf={"rerun_failed": True})
    log = capfd.readouterr().out
    assert str(third.state) == "failed"
    assert "Invalid ParallelRunOperator setting: rerun_failed=" in log
    assert "nothing failed in job" in log
    assert (root / "out" / "parallel_run_step.txt").read_text() == expected  # the refusal changed nothing


def test_rerun_failed_deferrable(
    dagbag: Any, demo_root: Path, dask_cluster: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    """deferrable=True: the re-run's checks and its job run in the cluster (the operator ships the previous
    job's record with the request); items marked failed in place run alone there too."""
    root = demo_root / "rerun_failed_deferrable"
    (root / "in").mkdir(parents=True)
    for i in range(15):
        (root / "in" / f"f{i:02d}.txt").write_text(f"value {i}\n")
    (root / "fail.txt").write_text("\n".join(FAILING))
    dag = dagbag.get_dag("apr_test_rerun_failed_deferrable")

    first = dag.test()
    assert str(first.state) == "success"
    assert _summary(first)["failed_items"] == 2
    failed = [
        json.loads(line)
        for line in (root / "out" / "logs" / "sys" / "job_report" / "failed_items.jsonl")
        .read_text()
        .splitlines()
    ]
    assert [Path(line["item"]["file"]).name for line in failed] == FAILING
    assert [(line["position"], line["certain"]) for line in failed] == [(2, True), (4, True)]

    (root / "fail.txt").write_text("")
    (root / "calls.txt").unlink()
    capfd.readouterr()
    second = dag.test(run_conf={"rerun_failed": True})
    log = capfd.readouterr().out
    assert str(second.state) == "success"
    assert "runs inside the Dask cluster; this task defers until it finishes" in log  # it did defer
    assert "2 of them run only their 2 failed items" in log
    summary = _summary(second)
    assert summary["failed_items"] == 0 and summary["reused_mini_batches"] == 1, summary
    assert sorted((root / "calls.txt").read_text().split()) == FAILING  # only the failed items ran
    expected = "".join(f"f{i:02d}.txt value {i}\n" for i in range(15))
    assert (root / "out" / "parallel_run_step.txt").read_text() == expected  # every item once, in order


def test_rerun_failed_values(tmp_path: Path) -> None:
    from airflow_parallel_run.core import ConfigError, ParallelRunConfig
    from airflow_parallel_run.core.reuse.rerun import rerun_switch
    from airflow_parallel_run.operators import ParallelRunOperator

    script = tmp_path / "score.py"
    script.write_text("def run(mini_batch):\n    return mini_batch\n")
    config = ParallelRunConfig(entry_script=str(script))
    with pytest.raises(ConfigError) as info:
        ParallelRunOperator(
            task_id="t", parallel_run_config=config, inputs="in", output_path="out", rerun_failed="maybe"
        )
    doc = (Path(__file__).resolve().parents[2] / "docs" / "errors.md").read_text(encoding="utf-8")
    assert f"```\n{info.value}\n```" in doc  # the message docs/errors.md lists
    templated = ParallelRunOperator(
        task_id="u", parallel_run_config=config, inputs="in", output_path="out", rerun_failed="{{ params.x }}"
    )
    assert "rerun_failed" in templated.template_fields
    assert [rerun_switch(v) for v in (True, "True", "true", "1", False, "False", "", "None")] == [
        True,
        True,
        True,
        True,
        False,
        False,
        False,
        False,
    ]
