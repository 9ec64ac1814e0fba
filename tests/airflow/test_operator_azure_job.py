"""`ParallelRunOperator.from_azure_job`: an Azure ML v2 parallel job YAML as an operator of a DAG."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_parallel_run.core import ConfigError, TabularDataset
from airflow_parallel_run.operators import ParallelRunOperator

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "azure" / "iris_mltable"


@pytest.fixture
def iris(tmp_path: Path) -> Path:
    folder = tmp_path / "iris"
    shutil.copytree(
        EXAMPLE, folder, ignore=shutil.ignore_patterns("__pycache__", "neural-iris-mltable", "iris-model")
    )
    subprocess.run(
        [sys.executable, str(folder / "make_data.py"), str(folder)], check=True, capture_output=True
    )
    return folder


def test_from_azure_job_builds_the_operator(iris: Path, tmp_path: Path) -> None:
    op = ParallelRunOperator.from_azure_job(str(iris / "pipeline.yml"), output_path=str(tmp_path / "out"))
    assert op.task_id == "batch_prediction"
    assert op.parallel_run_config.append_row_file_name == "aggregated_returns.csv"
    assert op.parallel_run_config.allowed_failed_percent == 30
    assert isinstance(op.inputs[0], TabularDataset)
    assert op.side_inputs == [str(iris / "iris-model")]
    assert op.arguments[:2] == ["--model", str(iris / "iris-model")]
    assert op.allow_reuse


def test_from_azure_job_keeps_operator_arguments(iris: Path, tmp_path: Path) -> None:
    op = ParallelRunOperator.from_azure_job(
        str(iris / "pipeline.yml"),
        output_path=str(tmp_path / "out"),
        task_id="score_iris",
        arguments=["--extra", "1"],
        allow_reuse=False,
        mini_batch_size="{{ params.size }}",
    )
    assert op.task_id == "score_iris" and not op.allow_reuse
    assert op.arguments[-2:] == ["--extra", "1"] and op.mini_batch_size == "{{ params.size }}"


def test_from_azure_job_refuses_what_it_cannot_run(iris: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        ParallelRunOperator.from_azure_job(
            str(iris / "pipeline.yml"), output_path=str(tmp_path / "out"), input_map={"nope": "/x"}
        )
    assert info.value.field == "--input"
