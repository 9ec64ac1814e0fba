"""PRS driver options inside program arguments are read as Azure's driver reads them."""

from __future__ import annotations

import pytest

from airflow_parallel_run.azure.prs_arguments import DRIVER_OPTIONS, split_prs_arguments
from airflow_parallel_run.core import ConfigError

IRIS = [
    "--model",
    "/m",
    "--allowed_failed_percent",
    "30",
    "--task_overhead_timeout",
    "1200",
    "--progress_update_timeout",
    "600",
    "--first_task_creation_timeout",
    "600",
    "--resource_monitor_interval",
    "20",
]


def test_the_iris_sample_options_are_read_and_the_script_keeps_its_arguments() -> None:
    prs = split_prs_arguments(IRIS)
    assert prs.settings == {
        "allowed_failed_percent": 30.0,
        "resource_monitor_interval": 20.0,
        "progress_update_timeout": 600.0,
        "first_task_creation_timeout": 600.0,
    }
    assert prs.script_arguments == tuple(IRIS)  # the script sees the whole command line, as on Azure
    ignored = [w.split(" ")[1] for w in prs.warnings]
    assert ignored == ["--task_overhead_timeout"]


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["--error_threshold", "5"], {"error_threshold": 5}),
        (["--error_threshold=-1"], {"error_threshold": -1}),
        (["--error_threshold", "2.5"], {"error_threshold": 3}),  # the driver rounds a fraction up
        (["--allowed_failed_count", "4"], {"allowed_failed_count": 4}),
        (["--mini_batch_size", "10kb"], {"mini_batch_size": "10kb"}),
        (["--mini_batch_size", "3"], {"mini_batch_size": 3}),
        (["--run_invocation_timeout", "90"], {"run_invocation_timeout": 90.0}),
        (["--score_run_timeout", "90"], {"run_invocation_timeout": 90.0}),
        (["--run_max_try", "4"], {"run_max_try": 4}),
        (["--process_count_per_node", "2"], {"process_count_per_node": 2}),
        (["--logging_level", "debug"], {"logging_level": "DEBUG"}),
        (["--append_row_file_name", "out.csv"], {"append_row_file_name": "out.csv"}),
        (["--output_action", "SUMMARY_ONLY"], {"output_action": "summary_only"}),
        (["--progress_update_timeout", "270"], {"progress_update_timeout": 270.0}),
        (["--progress_update_timeout", "-1"], {"progress_update_timeout": None}),  # Azure: calculated
        (["--first_task_creation_timeout", "518400"], {"first_task_creation_timeout": 518400.0}),
    ],
)
def test_mapped_options(arguments: list[str], expected: dict[str, object]) -> None:
    assert split_prs_arguments(["--x", "1", *arguments]).settings == expected


def test_non_strings_become_strings() -> None:
    prs = split_prs_arguments(["--test_size", 20, "--error_threshold", 3])
    assert prs.script_arguments == ("--test_size", "20", "--error_threshold", "3")
    assert prs.settings == {"error_threshold": 3}


@pytest.mark.parametrize(
    ("arguments", "field", "allowed"),
    [
        (["--error_threshold", "-2"], "program_arguments --error_threshold", "an integer >= -1"),
        (["--allowed_failed_percent", "101"], "program_arguments --allowed_failed_percent", "a number >= 0"),
        (["--error_threshold"], "program_arguments --error_threshold", "a value after the option"),
        (["--error_threshold", "--x"], "program_arguments --error_threshold", "a value after the option"),
        (["--amlbi_async_mode", "true"], "program_arguments --amlbi_async_mode", "async def run(mini_batch)"),
        (["--append_row_dataframe_header", "True"], "program_arguments --append_row_dataframe_header", "csv"),
        (
            ["--error_threshold", "1", "--error_threshold", "2"],
            "program_arguments --error_threshold",
            "one value",
        ),
        (["--copy_logs_to_parent", "maybe"], "program_arguments --copy_logs_to_parent", "True or False"),
        (["--progress_update_timeout", "0"], "program_arguments --progress_update_timeout", "a number > 0"),
    ],
)
def test_refused(arguments: list[str], field: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as info:
        split_prs_arguments(arguments)
    assert info.value.field == field
    assert allowed in info.value.allowed


def test_a_near_miss_passes_to_the_script_with_a_warning() -> None:
    prs = split_prs_arguments(["--resource_monitor_interva", "20"])  # the typo Azure's docs once shipped
    assert prs.settings == {}
    assert prs.script_arguments == ("--resource_monitor_interva", "20")
    assert prs.warnings and "did you mean --resource_monitor_interval" in prs.warnings[0]


def test_a_value_that_looks_like_a_number_option_is_a_value() -> None:
    assert split_prs_arguments(["--error_threshold", "-1"]).settings == {"error_threshold": -1}


def test_every_option_has_one_status() -> None:
    for option in DRIVER_OPTIONS:
        assert [bool(option.config_field), bool(option.ignored), bool(option.refused)].count(True) == 1, (
            option.name
        )
