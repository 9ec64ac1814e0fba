"""ParallelRunConfig validation: each bad value names its field, the value and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from airflow_parallel_run.core import ConfigError, ParallelRunConfig
from airflow_parallel_run.core.config import parse_mini_batch_size


@pytest.fixture
def script(tmp_path: Path) -> str:
    path = tmp_path / "score.py"
    path.write_text("def run(mini_batch):\n    return mini_batch\n")
    return str(path)


def test_defaults(script: str) -> None:
    cfg = ParallelRunConfig(entry_script=script)
    assert cfg.error_threshold == -1 and cfg.output_action == "append_row"
    assert cfg.output_file_name == "parallel_run_step.txt" and cfg.run_max_try == 3
    assert cfg.mini_batch_size_for(tabular=False) == 10
    assert cfg.mini_batch_size_for(tabular=True) == 1024 * 1024
    assert cfg.processes_per_node >= 1


@pytest.mark.parametrize(
    ("fmt", "name"),
    [
        ("text", "parallel_run_step.txt"),
        ("csv", "parallel_run_step.csv"),
        ("jsonl", "parallel_run_step.jsonl"),
        ("parquet", "parallel_run_step.parquet"),
    ],
)
def test_default_output_file_name_says_what_the_file_holds(script: str, fmt: str, name: str) -> None:
    cfg = ParallelRunConfig(entry_script=script, append_row_format=fmt)
    assert cfg.append_row_file_name is None and cfg.output_file_name == name
    assert cfg.with_overrides(append_row_format="parquet").output_file_name == "parallel_run_step.parquet"
    named = ParallelRunConfig(entry_script=script, append_row_format=fmt, append_row_file_name="scores.out")
    assert named.output_file_name == "scores.out"
    assert named.with_overrides(append_row_format="csv").output_file_name == "scores.out"


@pytest.mark.parametrize(
    ("value", "tabular", "expected"),
    [
        (10, False, 10),
        ("10", False, 10),
        ("1024", True, 1024),
        ("1KB", True, 1024),
        ("10mb", True, 10 << 20),
        ("1GB", True, 1 << 30),
    ],
)
def test_mini_batch_size_units(value: object, tabular: bool, expected: int) -> None:
    assert parse_mini_batch_size(value, tabular=tabular) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("mini_batch_size", "10 files", "KB/MB/GB"),
        ("mini_batch_size", 0, "at least 1"),
        ("mini_batch_size", 1.5, "an int or a string"),
        ("error_threshold", -2, ">= -1"),
        ("allowed_failed_count", "3", "integer"),
        ("allowed_failed_percent", 101, "0 to 100"),
        ("output_action", "file", "append_row or summary_only"),
        ("append_row_file_name", "../out.txt", "no path separators"),
        ("append_row_file_name", "a/b.txt", "no path separators"),
        ("append_row_format", "xml", "text, csv, jsonl, parquet"),
        ("node_count", 0, ">= 1"),
        ("process_count_per_node", 0, ">= 1"),
        ("run_invocation_timeout", 0, "> 0"),
        ("run_max_try", 0, ">= 1"),
        ("logging_level", "TRACE", "DEBUG, INFO, WARNING"),
        ("environment_variables", ["A=1"], "mapping"),
        ("resource_monitor_interval", -1, ">= 0"),
        ("partition_keys", [], "non-empty list"),
    ],
)
def test_bad_values_name_the_field(script: str, field: str, value: object, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        ParallelRunConfig(entry_script=script, **{field: value})  # type: ignore[arg-type]
    assert info.value.field == field
    assert field in str(info.value) and repr(value) in str(info.value) and fragment in str(info.value)


def test_file_input_rejects_byte_units(script: str) -> None:
    cfg = ParallelRunConfig(entry_script=script, mini_batch_size="1MB")
    with pytest.raises(ConfigError, match="number of files"):
        cfg.mini_batch_size_for(tabular=False)


def test_entry_script_must_exist_and_define_run(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="entry_script.*existing file"):
        ParallelRunConfig(entry_script=str(tmp_path / "missing.py"))
    no_run = tmp_path / "no_run.py"
    no_run.write_text("def init():\n    pass\n")
    with pytest.raises(ConfigError, match="defines run"):
        ParallelRunConfig(entry_script=str(no_run))
    broken = tmp_path / "broken.py"
    broken.write_text("def run(:\n")
    with pytest.raises(ConfigError, match="valid Python"):
        ParallelRunConfig(entry_script=str(broken))


def test_source_directory(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "main.py").write_text("def run(b):\n    return b\n")
    cfg = ParallelRunConfig(entry_script="main.py", source_directory=str(tmp_path / "src"))
    assert cfg.entry_script_path.endswith("src/main.py")
    with pytest.raises(ConfigError, match="source_directory"):
        ParallelRunConfig(entry_script="main.py", source_directory=str(tmp_path / "nope"))


def test_overrides_validate_again(script: str) -> None:
    cfg = ParallelRunConfig(entry_script=script)
    assert cfg.with_overrides(mini_batch_size=5, node_count=None).mini_batch_size == 5
    with pytest.raises(ConfigError, match="run_max_try"):
        cfg.with_overrides(run_max_try=-1)
    with pytest.raises(ConfigError, match="not_a_field"):
        cfg.with_overrides(not_a_field=1)
