"""The `parallel_run_job` XCom the operator pushes when a job starts (what the UI's tab reads)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_operator_unit import FakeTI

from airflow_parallel_run.core import ParallelRunConfig
from airflow_parallel_run.operators import JOB_XCOM_KEY, ParallelRunOperator
from airflow_parallel_run.ui.files import JobFiles


@pytest.fixture
def config(tmp_path: Path) -> ParallelRunConfig:
    script = tmp_path / "score.py"
    script.write_text("def run(mini_batch):\n    return mini_batch\n")
    return ParallelRunConfig(
        entry_script=str(script),
        append_row_file_name="out.csv",
        environment_variables={"TOKEN": "t0p-secret"},
    )


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("s3://bucket/out/", "s3://bucket/out"),
        ("file:///data/out", "/data/out"),
        ("relative/out", os.path.abspath("relative/out")),
        ("~/out", os.path.expanduser("~/out")),
    ],
)
def test_the_record_names_locations_as_the_engine_writes_them(
    config: ParallelRunConfig, output: str, expected: str
) -> None:
    op = ParallelRunOperator(
        task_id="score", parallel_run_config=config, inputs="/in", output_path=output, storage_conn_id="aws_x"
    )
    ti = FakeTI()
    op._push_job({"ti": ti}, "job1", output, config)  # type: ignore[arg-type]
    record = ti.xcom[JOB_XCOM_KEY]
    assert record["job_id"] == "job1" and record["output"] == expected
    assert record["logs_dir"] == f"{expected}/logs" and record["append_row_file"] == f"{expected}/out.csv"
    assert record["storage_conn_id"] == "aws_x" and record["started"].endswith("+00:00")
    assert "t0p-secret" not in repr(record)
    JobFiles.from_record(record)  # a record the UI accepts


def test_summary_only_jobs_have_no_output_file(config: ParallelRunConfig) -> None:
    import dataclasses

    summary_only = dataclasses.replace(config, output_action="summary_only")
    op = ParallelRunOperator(
        task_id="score", parallel_run_config=summary_only, inputs="/in", output_path="/out"
    )
    ti = FakeTI()
    op._push_job({"ti": ti}, "job2", "/out", summary_only)  # type: ignore[arg-type]
    assert ti.xcom[JOB_XCOM_KEY]["append_row_file"] is None
