"""`airflow-parallel-run run --azure-job`: Azure's sample jobs run from their YAML, scripts unmodified."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

CLI = [sys.executable, "-m", "airflow_parallel_run.cli"]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "run", *args], cwd=cwd, capture_output=True, text=True, timeout=240)


def summary_of(done: subprocess.CompletedProcess[str]) -> dict:
    return json.loads(done.stdout)


def test_iris_mltable_job(iris_example: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = cli("--azure-job", "pipeline.yml", "--output", str(out), "--json", cwd=iris_example)
    assert done.returncode == 0, done.stderr
    summary = summary_of(done)
    assert summary["status"] == "succeeded" and summary["total_items"] == 1500
    assert summary["total_mini_batches"] > 1  # mini_batch_size "10kb" split the 43 KB file
    # the YAML's keys with no effect are shown, and the PRS options the driver ignores
    assert "not used: compute" in done.stderr and "--task_overhead_timeout 1200 has no effect" in done.stderr
    # append_row_to a uri_file: its name, Azure's text layout (space-separated, no header)
    rows = (out / "aggregated_returns.csv").read_text().splitlines()
    data = pd.read_csv(iris_example / "neural-iris-mltable" / "iris.csv")
    assert len(rows) == len(data)
    with open(iris_example / "iris-model" / "model.pkl", "rb") as handle:
        model = pickle.load(handle)
    expected = model.predict(data.iloc[:, :4])
    got = sorted((tuple(map(float, r.split()[:4])), int(r.split()[4])) for r in rows)
    want = sorted(
        zip(map(tuple, data.iloc[:, :4].astype(float).values.tolist()), map(int, expected), strict=True)
    )
    assert got == want


def test_command_line_flags_override_the_yaml(iris_example: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = cli(
        "--azure-job",
        "pipeline.yml",
        "--output",
        str(out),
        "--json",
        "--append-row-format",
        "csv",
        "--process-count-per-node",
        "1",
        cwd=iris_example,
    )
    assert done.returncode == 0, done.stderr
    frame = pd.read_csv(out / "aggregated_returns.csv")
    assert list(frame.columns) == ["sepal_length", "sepal_width", "petal_length", "petal_width", "variety"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--entry-script", "x.py"], "argument --entry-script: not allowed with --azure-job"),
        (["--input-type", "tabular"], "argument --input-type: not allowed with --azure-job"),
    ],
)
def test_usage_errors_with_azure_job(iris_example: Path, args: list[str], message: str) -> None:
    done = cli("--azure-job", "pipeline.yml", "--output", "out", *args, cwd=iris_example)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


def test_usage_errors_without_azure_job(tmp_path: Path) -> None:
    done = cli("--output", "out", "--entry-script", "x.py", cwd=tmp_path)
    assert done.returncode == 2 and "the following arguments are required: --input" in done.stderr
    done = cli(
        "--output", "out", "--input", "in", "--job-output", "a=b", "--entry-script", "x.py", cwd=tmp_path
    )
    assert done.returncode == 2 and "argument --job-output: only with --azure-job" in done.stderr


def test_an_unmapped_azure_input_is_a_config_error(oj_example: Path, tmp_path: Path) -> None:
    done = cli("--azure-job", "pipeline.yml", "--output", str(tmp_path / "out"), cwd=oj_example)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith(
            "airflow-parallel-run: error: inputs.data_source='${{parent.jobs.partition_job.outputs.tabular_output_data}}' "
            "is not allowed"
        )
    )
    assert not (tmp_path / "out").exists()


OJ_RETURNS_NOTHING = """
def run(input_data, mini_batch_context):
    _train(input_data, mini_batch_context)
    return []
"""


def run_oj_job(oj_example: Path, out: Path) -> subprocess.CompletedProcess[str]:
    """The OJ pipeline's parallel job as its YAML gives it, its data input mapped to the local partitions."""
    return cli(
        "--azure-job",
        "pipeline.yml",
        "--output",
        str(out),
        "--json",
        "--input",
        f"data_source={oj_example / 'partitioned'}",
        cwd=oj_example,
    )


def test_oj_many_models_job(oj_example: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = run_oj_job(oj_example, out)
    assert done.returncode == 0, done.stderr
    summary = summary_of(done)
    assert summary["status"] == "succeeded" and summary["total_mini_batches"] == 6  # 2 stores x 3 brands
    models = sorted(
        p.relative_to(out / "model_folder").as_posix() for p in (out / "model_folder").rglob("*.pkl")
    )
    assert len(models) == 6 and models[0] == "1000/dominicks/my_model.pkl"


def test_oj_training_that_returns_nothing_succeeds(oj_example: Path, tmp_path: Path) -> None:
    script = oj_example / "src" / "parallel_train" / "parallel_train.py"
    text = script.read_text().replace(
        "def run(input_data, mini_batch_context):", "def _train(input_data, mini_batch_context):"
    )
    script.write_text(text + OJ_RETURNS_NOTHING)
    out = tmp_path / "out"
    done = run_oj_job(oj_example, out)
    assert done.returncode == 0, done.stderr
    assert summary_of(done)["status"] == "succeeded"
    assert len(list((out / "model_folder").rglob("*.pkl"))) == 6


def test_cli_input_naming_an_mltable_folder_reads_the_mltable(oj_example: Path, tmp_path: Path) -> None:
    """`--input <MLTable folder>` is the MLTable (its column steps applied), not its files: run() gets DataFrames
    with the Store and Brand columns, one mini-batch per partition."""
    script = tmp_path / "cols.py"
    script.write_text(
        "def run(mini_batch, mini_batch_context):\n"
        "    keys = mini_batch_context.partition_key_value\n"
        "    assert {*mini_batch['Store']} == {keys['Store']} and 'Path' not in mini_batch.columns\n"
        "    return [f\"{keys['Store']}/{keys['Brand']} {len(mini_batch)}\"]\n"
    )
    out = tmp_path / "out"
    done = cli(
        "--input",
        str(oj_example / "partitioned"),
        "--entry-script",
        str(script),
        "--partition-keys",
        "Store,Brand",
        "--output",
        str(out),
        "--json",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    summary = summary_of(done)
    assert summary["status"] == "succeeded" and summary["total_mini_batches"] == 6, summary
    lines = (out / "parallel_run_step.txt").read_text().splitlines()
    assert len(lines) == 6 and all(int(line.split()[1]) > 0 for line in lines)
