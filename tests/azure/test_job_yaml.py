"""v2 parallel job YAML -> the engine's job: every key mapped, listed as not used, or refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from airflow_parallel_run.azure.job_yaml import load_azure_job, parse_name_map
from airflow_parallel_run.core import ConfigError, FileDataset, TabularDataset

SCRIPT = "def init():\n    pass\n\n\ndef run(mini_batch):\n    return mini_batch\n"


def job_file(tmp_path: Path, job: dict, name: str = "job.yml") -> Path:
    (tmp_path / "src").mkdir(exist_ok=True)
    (tmp_path / "src" / "score.py").write_text(SCRIPT)
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "a.txt").write_text("a\n")
    path = tmp_path / name
    path.write_text(yaml.safe_dump(job))
    return path


def parallel(**overrides: object) -> dict:
    job = {
        "type": "parallel",
        "inputs": {"files": {"type": "uri_folder", "path": "./data"}},
        "input_data": "${{inputs.files}}",
        "task": {"type": "run_function", "code": "./src", "entry_script": "score.py"},
    }
    job.update(overrides)
    return job


def test_the_iris_sample(iris_example: Path) -> None:
    job = load_azure_job(str(iris_example / "pipeline.yml"), output_path="/out")
    c = job.config
    assert job.name == "batch_prediction"
    assert (c.mini_batch_size, c.node_count, c.process_count_per_node) == ("10kb", 2, 2)
    assert (c.error_threshold, c.allowed_failed_count, c.allowed_failed_percent) == (5, 5, 30.0)
    assert (c.run_max_try, c.run_invocation_timeout, c.logging_level) == (3, 60.0, "DEBUG")
    assert (c.output_action, c.append_row_file_name, c.resource_monitor_interval) == (
        "append_row",
        "aggregated_returns.csv",
        20.0,
    )
    assert c.environment_variables == {"AZUREML_PARALLEL_EXAMPLE": "2a_yaml"}
    assert c.source_directory == str(iris_example / "script") and c.entry_script == "iris_prediction.py"
    (dataset,) = job.inputs
    assert isinstance(dataset, TabularDataset) and dataset.paths == (
        str(iris_example / "neural-iris-mltable" / "iris.csv"),
    )
    assert job.side_inputs == (str(iris_example / "iris-model"),)
    assert job.arguments[:2] == ("--model", str(iris_example / "iris-model"))
    noted = " ".join(job.not_used)
    assert "compute" in noted and "task.environment" in noted and "settings" in noted


def test_the_oj_sample_needs_the_partition_jobs_output(oj_example: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_azure_job(str(oj_example / "pipeline.yml"), output_path="/out")
    assert info.value.field == "inputs.data_source"
    assert "--input data_source=PATH_OR_URL" in info.value.allowed


def test_the_oj_sample_settings(oj_example: Path) -> None:
    from airflow_parallel_run.azure import mltable

    table = mltable.load_mltable(str(oj_example / "partitioned"))
    with (
        pytest.MonkeyPatch.context() as patch
    ):  # the column steps aside (see test_mltable): the job's settings
        patch.setattr(mltable.MLTable, "engine_dataset", lambda self: self.dataset)
        job = load_azure_job(
            str(oj_example / "pipeline.yml"),
            output_path="/out",
            input_map={"data_source": str(oj_example / "partitioned")},
        )
    c = job.config
    assert c.partition_keys == ("Store", "Brand") and c.output_action == "summary_only"
    assert (c.error_threshold, c.allowed_failed_count) == (-1, 5)
    assert job.inputs[0] == table.dataset
    assert job.arguments == (
        "--drop_cols",
        "Revenue,Advert,Store,Brand",
        "--target_col",
        "Quantity",
        "--date_col",
        "WeekStarting",
        "--lagging_orders",
        "1,2,3,4,5,6",
        "--model_folder",
        "/out/model_folder",
    )
    assert any("jobs.partition_job (type: command): not run here" in n for n in job.not_used)


def test_a_component_node_and_optional_groups(tmp_path: Path) -> None:
    component = parallel(
        name="train",
        inputs={
            "files": {"type": "uri_folder"},
            "lags": {"type": "string", "optional": True},
            "target": {"type": "string", "default": "Quantity"},
        },
        mini_batch_size=5,
        task={
            "type": "run_function",
            "code": "./src",
            "entry_script": "score.py",
            "program_arguments": "--target ${{inputs.target}} $[[--lags ${{inputs.lags}}]] --n 3",
        },
    )
    job_file(tmp_path, component, "component.yml")
    pipeline = {
        "type": "pipeline",
        "inputs": {"raw": {"type": "uri_folder", "path": "./data"}},
        "jobs": {
            "train": {
                "type": "parallel",
                "component": "./component.yml",
                "inputs": {"files": "${{parent.inputs.raw}}"},
                "mini_batch_size": 2,
            }
        },
    }
    path = job_file(tmp_path, pipeline, "pipeline.yml")
    job = load_azure_job(str(path), output_path="/out")
    assert job.config.mini_batch_size == 2  # the node wins over the component
    assert isinstance(job.inputs[0], FileDataset) and job.inputs[0].paths == (str(tmp_path / "data"),)
    assert job.arguments == ("--target", "Quantity", "--n", "3")
    with_lags = load_azure_job(str(path), output_path="/out", input_map={"lags": "1,2"})
    assert with_lags.arguments == ("--target", "Quantity", "--lags", "1,2", "--n", "3")


def test_yaml_settings_and_program_arguments_must_agree(tmp_path: Path) -> None:
    task = {"code": "./src", "entry_script": "score.py", "program_arguments": "--error_threshold 10"}
    path = job_file(tmp_path, parallel(error_threshold=5, task=task))
    with pytest.raises(ConfigError) as info:
        load_azure_job(str(path), output_path="/out")
    assert info.value.field == "task.program_arguments --error_threshold"
    assert "error_threshold: 5" in info.value.allowed
    task["program_arguments"] = "--error_threshold 5 --allowed_failed_count 2"
    job = load_azure_job(str(job_file(tmp_path, parallel(error_threshold=5, task=task))), output_path="/out")
    assert (job.config.error_threshold, job.config.allowed_failed_count) == (5, 2)


def test_retry_settings_and_defaults(tmp_path: Path) -> None:
    job = load_azure_job(str(job_file(tmp_path, parallel())), output_path="/out")
    c = job.config  # Azure's defaults are the engine's: 2 retries, 60 s, thresholds off, summary_only
    assert (c.run_max_try, c.run_invocation_timeout, c.error_threshold, c.output_action) == (
        3,
        60.0,
        -1,
        "summary_only",
    )
    job = load_azure_job(
        str(job_file(tmp_path, parallel(retry_settings={"max_retries": 0, "timeout": 1800}))),
        output_path="/out",
    )
    assert (job.config.run_max_try, job.config.run_invocation_timeout) == (1, 1800.0)


def test_is_deterministic_false_turns_reuse_off(tmp_path: Path) -> None:
    assert not load_azure_job(
        str(job_file(tmp_path, parallel(is_deterministic=False))), output_path="/o"
    ).allow_reuse


@pytest.mark.parametrize(
    ("overrides", "field", "allowed"),
    [
        ({"frobnicate": 1}, "frobnicate", "a key of a parallel job"),
        ({"retry_settings": {"max_retries": -1}}, "retry_settings.max_retries", "an integer >= 0"),
        ({"retry_settings": {"timeout": 300000}}, "retry_settings.timeout", "<= 259200"),
        ({"retry_settings": {"backoff": 1}}, "retry_settings.backoff", "max_retries or timeout"),
        ({"resources": {"instance_count": 0}}, "resources.instance_count", "an integer >= 1"),
        ({"resources": {"gpus": 1}}, "resources.gpus", "instance_count"),
        ({"max_concurrency_per_instance": "two"}, "max_concurrency_per_instance", "an integer >= 1"),
        ({"mini_batch_error_threshold": -2}, "mini_batch_error_threshold", "an integer >= -1"),
        ({"logging_level": "TRACE"}, "logging_level", "DEBUG, INFO or WARNING"),
        ({"input_data": "./data"}, "input_data", "${{inputs.NAME}}"),
        (
            {"inputs": {"files": {"type": "uri_folder", "path": "azureml:iris:1"}}},
            "inputs.files",
            "--input files=",
        ),
        ({"inputs": {"files": {"type": "table"}}}, "inputs.files.type", "uri_folder"),
        (
            {"inputs": {"files": {"type": "uri_folder", "paht": "./data"}}},
            "inputs.files.paht",
            "an input key",
        ),
        ({"inputs": {"files": {"type": "uri_folder"}}}, "inputs.files", "--input files=VALUE"),
        ({"task": {"code": "./src"}}, "task.entry_script", "the entry script"),
        ({"task": {"entry_script": "score.py"}}, "task.code", "the folder"),
        ({"task": {"code": "./src", "entry_script": "score.py", "model": "m"}}, "task.model", "as an input"),
        (
            {"task": {"code": "./src", "entry_script": "score.py", "type": "model"}},
            "task.type",
            "run_function",
        ),
        (
            {"task": {"code": "./src", "entry_script": "score.py", "commands": "x"}},
            "task.commands",
            "a task key",
        ),
        (
            {
                "task": {
                    "code": "./src",
                    "entry_script": "score.py",
                    "program_arguments": "--x ${{inputs.nope}}",
                }
            },
            "task.program_arguments",
            "bindings of the job's inputs",
        ),
        (
            {"task": {"code": "./src", "entry_script": "score.py", "append_row_to": "${{outputs.nope}}"}},
            "task.append_row_to",
            "${{outputs.NAME}}",
        ),
        ({"type": "command"}, "type", "parallel"),
    ],
)
def test_refused_by_name(tmp_path: Path, overrides: dict, field: str, allowed: str) -> None:
    path = job_file(tmp_path, parallel(**overrides))
    with pytest.raises(ConfigError) as info:
        load_azure_job(str(path), output_path="/out")
    assert info.value.field == field
    assert allowed in info.value.allowed


def test_input_and_output_maps(tmp_path: Path) -> None:
    job = parallel(
        inputs={
            "files": {"type": "uri_folder", "path": "azureml:raw:1"},
            "model": {"type": "mlflow_model", "path": "azureml:m:1"},
        },
        outputs={
            "models": {"type": "uri_folder"},
            "scores": {"type": "uri_file", "path": "azureml://datastores/x/paths/s.csv"},
        },
        task={
            "code": "./src",
            "entry_script": "score.py",
            "program_arguments": "--model ${{inputs.model}} --out ${{outputs.models}}",
            "append_row_to": "${{outputs.scores}}",
        },
    )
    path = job_file(tmp_path, job)
    loaded = load_azure_job(
        str(path),
        output_path="/out",
        input_map={"files": str(tmp_path / "data"), "model": str(tmp_path / "src")},
        output_map={"models": str(tmp_path / "models")},
    )
    assert loaded.side_inputs == (str(tmp_path / "src"),)
    assert loaded.arguments == ("--model", str(tmp_path / "src"), "--out", str(tmp_path / "models"))
    assert loaded.config.append_row_file_name == "s.csv" and loaded.config.output_action == "append_row"
    with pytest.raises(ConfigError, match="an input of the job"):
        load_azure_job(str(path), output_path="/o", input_map={"nope": "x", "files": "x", "model": "y"})
    with pytest.raises(ConfigError, match="an output other than append_row_to"):
        load_azure_job(
            str(path), output_path="/o", input_map={"files": "x", "model": "y"}, output_map={"scores": "/x"}
        )


def test_parse_name_map() -> None:
    assert parse_name_map(["a=/x/Store=1", "b = s3://b/k"]) == {"a": "/x/Store=1", "b": "s3://b/k"}
    for bad in (["noequals"], ["=x"], ["1a=x"], ["a="], ["a=x", "a=y"]):
        with pytest.raises(ConfigError):
            parse_name_map(bad)


def test_several_parallel_jobs_need_a_name(tmp_path: Path) -> None:
    pipeline = {"type": "pipeline", "jobs": {"a": parallel(), "b": parallel(mini_batch_size=3)}}
    path = job_file(tmp_path, pipeline)
    with pytest.raises(ConfigError, match="exactly one parallel job"):
        load_azure_job(str(path), output_path="/o")
    assert load_azure_job(str(path), output_path="/o", job_name="b").config.mini_batch_size == 3
