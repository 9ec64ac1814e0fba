"""docs/errors.md section 7 is true: each message it lists, triggered for real, is exactly the one printed there."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from airflow_parallel_run.azure.azureml_core import Model, ModelNotFoundException
from airflow_parallel_run.azure.job_yaml import load_azure_job
from airflow_parallel_run.azure.mltable import load_mltable
from airflow_parallel_run.azure.prs_arguments import split_prs_arguments
from airflow_parallel_run.core import ConfigError, FileDataset, InputError
from airflow_parallel_run.core.plan.planner import plan_inputs

DOC = Path(__file__).resolve().parents[2] / "docs" / "errors.md"


def section() -> str:
    text = DOC.read_text(encoding="utf-8")
    start = text.index("## 7. Azure ML job YAML and MLTables")
    return text[start : text.index("\n## ", start + 1)]  # up to the next section


def documented() -> list[str]:
    return re.findall(r"```\n(.*?)\n```", section(), flags=re.S)


def messages(tmp_path: Path, oj_example: Path, iris_example: Path) -> list[str]:
    found: list[str] = []

    def config_error(call: object) -> None:
        with pytest.raises(ConfigError) as info:
            call()  # type: ignore[operator]
        found.append(str(info.value).replace(str(tmp_path), "/data"))

    config_error(lambda: load_azure_job(str(oj_example / "pipeline.yml"), output_path="/o"))
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "score.py").write_text("def run(mini_batch):\n    return mini_batch\n")
    job = {
        "type": "parallel",
        "inputs": {"files": {"type": "uri_folder", "path": "azureml:iris:1"}},
        "input_data": "${{inputs.files}}",
        "task": {"code": "./src", "entry_script": "score.py"},
    }
    (tmp_path / "a.yml").write_text(yaml.safe_dump(job))
    config_error(lambda: load_azure_job(str(tmp_path / "a.yml"), output_path="/o"))
    config_error(lambda: split_prs_arguments(["--amlbi_async_mode", "true"]))
    job["inputs"] = {"files": {"type": "uri_folder", "path": "./src"}}
    job["error_threshold"] = 5
    job["task"]["program_arguments"] = "--error_threshold 10"  # type: ignore[index]
    (tmp_path / "b.yml").write_text(yaml.safe_dump(job))
    config_error(lambda: load_azure_job(str(tmp_path / "b.yml"), output_path="/o"))
    table = tmp_path / "t"
    table.mkdir()
    (table / "MLTable").write_text(
        "paths:\n  - file: ./x.csv\ntransformations:\n  - read_delimited: {}\n  - filter: 'col(\"a\") > 1'\n"
    )
    config_error(lambda: load_mltable(str(table)))
    (table / "MLTable").write_text(
        "paths:\n  - pattern: ./**/*.csv\ntransformations:\n  - read_delimited: {include_path_column: true}\n"
        "  - skip: 3\n  - drop_columns: [Path]\n"
    )
    config_error(lambda: load_mltable(str(table)).engine_dataset())
    (table / "x.csv").write_text("a\n1\n")
    job["inputs"] = {"files": {"type": "uri_folder", "path": "./t"}}
    job.pop("error_threshold")
    job["task"].pop("program_arguments")  # type: ignore[attr-defined]
    (tmp_path / "c.yml").write_text(yaml.safe_dump(job))
    config_error(lambda: load_azure_job(str(tmp_path / "c.yml"), output_path="/o"))
    with pytest.raises(InputError) as listed:
        plan_inputs([FileDataset.from_files(str(table))], 10)
    found.append(str(listed.value).replace(str(tmp_path), "/data"))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "airflow_parallel_run.cli",
            "run",
            "--azure-job",
            "pipeline.yml",
            "--output",
            "o",
            "--entry-script",
            "x.py",
        ],
        cwd=iris_example,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    found.append(done.stderr.strip().splitlines()[-1])
    models = tmp_path / "models"
    for version in ("1", "2"):
        (models / "iris" / version).mkdir(parents=True)
        (models / "iris" / version / "m.pkl").write_text("m")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AZUREML_MODEL_DIR", str(models))
        with pytest.raises(ModelNotFoundException) as info:
            Model.get_model_path("mnist")
    found.append(str(info.value).replace(str(tmp_path), "/data"))
    return found


def test_section_seven_lists_exactly_the_messages(
    tmp_path: Path, oj_example: Path, iris_example: Path
) -> None:
    actual = messages(tmp_path, oj_example, iris_example)
    assert documented() == actual
