"""ParallelRunOperator construction, rendering and validation: no metadata DB, no cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from unittest import mock

import pendulum
import pytest
from airflow.sdk import DAG, Asset, AssetAlias
from airflow.sdk.exceptions import AirflowFailException

from airflow_parallel_run.core import ConfigError, FileDataset, ParallelRunConfig, TabularDataset
from airflow_parallel_run.core.inputs.normalise import to_datasets
from airflow_parallel_run.links import DASHBOARD_XCOM_KEY, DaskDashboardLink
from airflow_parallel_run.operators import TUNABLES, ParallelRunOperator, coerce_tunable

START = pendulum.datetime(2024, 1, 1, tz="UTC")


@pytest.fixture
def config(tmp_path: Path) -> ParallelRunConfig:
    script = tmp_path / "score.py"
    script.write_text("def run(mini_batch):\n    return mini_batch\n")
    return ParallelRunConfig(entry_script=str(script), mini_batch_size=10, process_count_per_node=2)


def _op(config: ParallelRunConfig, **kwargs: Any) -> ParallelRunOperator:
    kwargs.setdefault("task_id", "score")
    kwargs.setdefault("inputs", "/data/in/*.png")
    kwargs.setdefault("output_path", "/data/out")
    return ParallelRunOperator(parallel_run_config=config, **kwargs)


class FakeTI:
    def __init__(self) -> None:
        self.xcom: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value


# -- construction -------------------------------------------------------------------------------------


def test_template_fields_cover_inputs_outputs_and_every_tunable() -> None:
    fields = set(ParallelRunOperator.template_fields)
    assert {"inputs", "output_path", "side_inputs", "arguments"} <= fields
    assert set(TUNABLES) <= fields
    assert set(TUNABLES) == {
        "mini_batch_size",
        "node_count",
        "process_count_per_node",
        "max_concurrency_per_process",
        "logging_level",
        "run_invocation_timeout",
        "run_max_try",
        "error_threshold",
        "batch_format",
        "progress_update_timeout",
        "first_task_creation_timeout",
        "speculative_execution",
        "speculation_multiplier",
    }


def test_construction_keeps_arguments(config: ParallelRunConfig) -> None:
    op = _op(
        config,
        side_inputs=["/models/m.pkl"],
        arguments=["--model", "/models/m.pkl"],
        allow_reuse=False,
        dask_conn_id="dask_default",
        mini_batch_size=5,
        node_count=1,
        process_count_per_node=3,
        logging_level="DEBUG",
        run_invocation_timeout=30,
        run_max_try=2,
        error_threshold=4,
    )
    assert op.parallel_run_config is config
    assert op.output_path == "/data/out"
    assert op.allow_reuse is False
    assert op.dask_conn_id == "dask_default"
    resolved = op.resolve_config()
    assert (resolved.mini_batch_size, resolved.process_count_per_node, resolved.logging_level) == (
        5,
        3,
        "DEBUG",
    )
    assert (resolved.run_invocation_timeout, resolved.run_max_try, resolved.error_threshold) == (30.0, 2, 4)
    assert resolved.entry_script == config.entry_script


def test_none_tunables_keep_the_config_values(config: ParallelRunConfig) -> None:
    assert _op(config).resolve_config() == config


def test_config_must_be_a_parallel_run_config() -> None:
    not_a_config: Any = {"entry_script": "x.py"}
    with pytest.raises(TypeError, match="ParallelRunConfig"):
        ParallelRunOperator(task_id="t", parallel_run_config=not_a_config, inputs="a", output_path="b")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("mini_batch_size", "ten"),
        ("node_count", 0),
        ("process_count_per_node", -1),
        ("logging_level", "LOUD"),
        ("run_invocation_timeout", 0),
        ("run_max_try", 0),
        ("error_threshold", -2),
        ("progress_update_timeout", 0),
        ("first_task_creation_timeout", float("nan")),
        ("speculative_execution", "maybe"),
        ("speculation_multiplier", 1),
        ("batch_format", "arrow"),
    ],
)
def test_static_bad_tunable_fails_at_parse_time_naming_the_field(
    config: ParallelRunConfig, field: str, value: Any
) -> None:
    with pytest.raises(ConfigError) as info:
        _op(config, **{field: value})
    assert info.value.field == field
    assert field in str(info.value)


def test_templated_tunables_are_not_validated_at_parse_time(config: ParallelRunConfig) -> None:
    op = _op(config, mini_batch_size="{{ params.mbs }}", error_threshold="{{ params.et }}")
    assert op.mini_batch_size == "{{ params.mbs }}"


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ([], "at least one"),
        (42, "inputs=42"),
        ([FileDataset.from_files("a"), 3], "inputs=3"),
        ("  ", "inputs="),
    ],
)
def test_bad_inputs_fail_at_parse_time(config: ParallelRunConfig, inputs: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _op(config, inputs=inputs)


def test_bad_output_path_fails_at_parse_time(config: ParallelRunConfig) -> None:
    with pytest.raises(ConfigError, match="output_path"):
        _op(config, output_path="")


def test_bad_arguments_fail_at_parse_time(config: ParallelRunConfig) -> None:
    with pytest.raises(ConfigError, match="arguments"):
        _op(config, arguments=["--x", {"nested": 1}])


# -- inputs -------------------------------------------------------------------------------------------


def test_inputs_forms() -> None:
    files = FileDataset.from_files("/a/*.png")
    table = TabularDataset.from_delimited_files("/t.csv")
    assert to_datasets(files) == [files]
    assert to_datasets(table) == [table]
    assert to_datasets("/a/*.png") == [FileDataset.from_files("/a/*.png")]
    assert to_datasets(["/a/*.png", Path("/b")]) == [FileDataset.from_files(["/a/*.png", "/b"])]
    assert to_datasets([table, "/x", "/y"]) == [table, FileDataset.from_files(["/x", "/y"])]


# -- output asset -------------------------------------------------------------------------------------


def test_static_output_is_declared_as_a_file_asset(config: ParallelRunConfig, tmp_path: Path) -> None:
    op = _op(config, output_path=str(tmp_path / "out"))
    assert op.output_asset == Asset(uri=(tmp_path / "out").as_uri())
    assert op.output_asset.uri.startswith("file:///")
    assert op.outlets == [op.output_asset]


def test_remote_output_asset_keeps_the_url(config: ParallelRunConfig) -> None:
    op = _op(config, output_path="s3://bucket/scores/")
    assert op.output_asset is not None and op.output_asset.uri == "s3://bucket/scores"


def test_templated_output_is_declared_as_an_asset_alias(config: ParallelRunConfig) -> None:
    with DAG("alias_dag", schedule=None, start_date=START):
        op = _op(config, output_path="/out/{{ ds }}")
    assert op.output_asset is None
    assert op.output_asset_alias == AssetAlias(name="parallel_run_output:alias_dag.score")
    assert op.outlets == [op.output_asset_alias]


def test_user_outlets_are_kept_and_asset_can_be_turned_off(config: ParallelRunConfig) -> None:
    mine = Asset(uri="s3://bucket/other")
    assert _op(config, outlets=[mine], declare_output_asset=False).outlets == [mine]
    assert len(_op(config, outlets=[mine]).outlets) == 2


# -- rendering ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("native", [False, True])
def test_rendering_keeps_numbers_numbers_in_both_jinja_modes(config: ParallelRunConfig, native: bool) -> None:
    with DAG("render_dag", schedule=None, start_date=START, render_template_as_native_obj=native):
        op = _op(
            config,
            inputs="/data/{{ ds }}/*.png",
            output_path="/out/{{ ds }}",
            side_inputs=["/models/{{ params.model }}"],
            arguments=["--model", "/models/{{ params.model }}", "--top", "{{ params.top }}"],
            mini_batch_size="{{ params.mini_batch_size }}",
            process_count_per_node="{{ params.procs }}",
            error_threshold="{{ params.error_threshold }}",
            run_invocation_timeout="{{ params.timeout }}",
            logging_level="{{ params.level }}",
            node_count="{{ params.nodes }}",
        )
    params = {
        "mini_batch_size": 25,
        "procs": 3,
        "error_threshold": -1,
        "timeout": 12.5,
        "level": "debug",
        "nodes": None,
        "model": "m.pkl",
        "top": 3,
    }
    op.render_template_fields({"ds": "2024-01-02", "params": params})  # type: ignore[arg-type]
    assert op.mini_batch_size == 25 and type(op.mini_batch_size) is int
    assert op.process_count_per_node == 3 and type(op.process_count_per_node) is int
    assert op.error_threshold == -1 and type(op.error_threshold) is int
    assert op.run_invocation_timeout == 12.5
    assert op.node_count is None
    assert op.inputs == "/data/2024-01-02/*.png"
    assert op.output_path == "/out/2024-01-02"
    config_ = op.resolve_config()
    assert (config_.mini_batch_size, config_.process_count_per_node, config_.logging_level) == (
        25,
        3,
        "DEBUG",
    )
    assert config_.node_count == config.node_count
    assert op.resolve_inputs() == [FileDataset.from_files("/data/2024-01-02/*.png")]


def test_paths_inside_datasets_are_rendered(config: ParallelRunConfig) -> None:
    table = TabularDataset.from_delimited_files(["/t/{{ ds }}/a.csv", "/t/{{ ds }}/b.csv"], separator=";")
    op = _op(config, inputs=[table, FileDataset.from_files("/f/{{ ds_nodash }}")])
    op.render_template_fields({"ds": "2024-01-02", "ds_nodash": "20240102", "params": {}})  # type: ignore[arg-type]
    rendered_table, rendered_files = op.resolve_inputs()
    assert isinstance(rendered_table, TabularDataset)
    assert rendered_table.paths == ("/t/2024-01-02/a.csv", "/t/2024-01-02/b.csv")
    assert (rendered_table.format, rendered_table.separator) == ("csv", ";")
    assert rendered_files == FileDataset.from_files("/f/20240102")


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("mini_batch_size", "10", 10),
        ("mini_batch_size", " 10MB ", "10MB"),
        ("error_threshold", "-1", -1),
        ("node_count", 2.0, 2),
        ("run_invocation_timeout", "30", 30),
        ("run_invocation_timeout", "2.5", 2.5),
        ("process_count_per_node", "None", None),
        ("process_count_per_node", "", None),
        ("logging_level", " WARNING ", "WARNING"),
        ("run_max_try", "three", "three"),
        ("progress_update_timeout", "90", 90),
        ("first_task_creation_timeout", "1.5", 1.5),
        ("first_task_creation_timeout", "inf", "inf"),
        ("speculative_execution", "True", True),
        ("speculative_execution", " false ", False),
        ("speculation_multiplier", "2.5", 2.5),
        ("batch_format", " pyarrow ", "pyarrow"),
    ],
)
def test_coerce_tunable(name: str, value: Any, expected: Any) -> None:
    result = coerce_tunable(name, value)
    assert result == expected and type(result) is type(expected)


def test_watchdog_and_speculation_tunables_from_params(config: ParallelRunConfig) -> None:
    names = (
        "progress_update_timeout",
        "first_task_creation_timeout",
        "speculative_execution",
        "speculation_multiplier",
    )
    op = _op(config, **{name: "{{ params." + name + " }}" for name in names})
    params = {
        "progress_update_timeout": 120,
        "first_task_creation_timeout": "900",
        "speculative_execution": "true",
        "speculation_multiplier": 4,
    }
    op.render_template_fields({"params": params})  # type: ignore[arg-type]
    resolved = op.resolve_config()
    assert (resolved.progress_update_timeout, resolved.first_task_creation_timeout) == (120.0, 900.0)
    assert (resolved.speculative_execution, resolved.speculation_multiplier) == (True, 4.0)
    op = _op(config, first_task_creation_timeout="{{ params.t }}")
    op.render_template_fields({"params": {"t": "inf"}})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="first_task_creation_timeout='inf' is not allowed"):
        op.resolve_config()


def test_invalid_rendered_value_fails_the_task_naming_the_field(config: ParallelRunConfig) -> None:
    op = _op(config, error_threshold="{{ params.error_threshold }}")
    op.render_template_fields({"params": {"error_threshold": "lots"}})  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as info:
        op.resolve_config()
    assert info.value.field == "error_threshold"
    ti = FakeTI()
    with pytest.raises(AirflowFailException, match=r"error_threshold='lots' is not allowed"):
        op.execute({"ti": ti})  # type: ignore[arg-type]
    assert ti.xcom[DASHBOARD_XCOM_KEY] == ""  # the link's XCom exists even though nothing ran


# -- on_kill and the link -----------------------------------------------------------------------------


def test_on_kill_before_the_driver_exists_cancels_it_as_soon_as_it_does(config: ParallelRunConfig) -> None:
    op = _op(config)
    op.on_kill()  # nothing running yet (the job is being planned): no error, the stop is remembered
    driver = mock.Mock(job_id="j1")
    op._set_driver(driver)
    driver.cancel.assert_called_once_with(
        "the task was stopped from Airflow (marked success/failed or cleared)"
    )


def test_dashboard_link_reads_the_xcom(config: ParallelRunConfig) -> None:
    link = DaskDashboardLink()
    assert link.name == "Dask dashboard"
    assert ParallelRunOperator.operator_extra_links[0] == link
    key = mock.Mock(dag_id="d", task_id="t", run_id="r", map_index=-1)
    with mock.patch(
        "airflow.sdk.execution_time.xcom.XCom.get_value", return_value="http://h:8787/status"
    ) as get:
        assert link.get_link(_op(config), ti_key=key) == "http://h:8787/status"
    get.assert_called_once_with(ti_key=key, key=DASHBOARD_XCOM_KEY)
    with mock.patch("airflow.sdk.execution_time.xcom.XCom.get_value", return_value=""):
        assert link.get_link(_op(config), ti_key=key) == ""
