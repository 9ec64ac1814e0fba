"""docs/errors.md section 5: DAG and connection mistakes give exactly the documented messages.

The engine and CLI part of the catalogue is tested in tests/faults/test_error_catalogue.py; this part
needs Airflow, so it lives here (tests/airflow/conftest.py sets AIRFLOW_HOME before Airflow is imported).
Connections come from `AIRFLOW_CONN_<ID>` environment variables: no metadata DB is needed.
"""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException, AirflowNotFoundException

from airflow_parallel_run.core import ConfigError, FileDataset, ParallelRunConfig, TabularDataset
from airflow_parallel_run.hooks import DaskHook
from airflow_parallel_run.operators import ParallelRunOperator

DOC = Path(__file__).resolve().parents[2] / "docs" / "errors.md"
MBS_TEN = (
    "mini_batch_size='ten' is not allowed: digits with an optional KB/MB/GB unit, e.g. 10, '1024KB', '10MB'"
)


def check_documented(template: str, actual: str) -> None:
    """`actual` is `template` (listed in docs/errors.md) with each <placeholder> standing for any text."""
    assert template in DOC.read_text(encoding="utf-8"), f"docs/errors.md does not list:\n{template}"
    pattern = "".join(
        ".+?" if re.fullmatch(r"<[a-z]+>", part) else re.escape(part)
        for part in re.split(r"(<[a-z]+>)", template)
    )
    assert re.fullmatch(pattern, actual), f"the message changed:\n  doc:    {template}\n  actual: {actual}"


class FakeTI:
    def __init__(self) -> None:
        self.xcom: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value


@pytest.fixture
def config(tmp_path: Path) -> ParallelRunConfig:
    script = tmp_path / "score.py"
    script.write_text("def run(mini_batch):\n    return mini_batch\n")
    return ParallelRunConfig(entry_script=str(script))


@pytest.fixture
def inputs(tmp_path: Path) -> str:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.txt").write_text("a\n")
    return str(folder)


def operator(config: ParallelRunConfig, inputs: Any, tmp_path: Path, **kwargs: Any) -> ParallelRunOperator:
    return ParallelRunOperator(
        task_id="score",
        parallel_run_config=config,
        inputs=inputs,
        output_path=str(tmp_path / "out"),
        **kwargs,
    )


@pytest.mark.parametrize(
    ("field", "rendered", "message"),
    [
        ("mini_batch_size", "ten", f"Invalid ParallelRunOperator setting: {MBS_TEN}"),
        (
            "run_invocation_timeout",
            "soon",
            "Invalid ParallelRunOperator setting: run_invocation_timeout='soon' is not allowed: a number of seconds > 0",
        ),
    ],
)
def test_templated_value_of_the_wrong_type_fails_the_task(
    config: ParallelRunConfig, inputs: str, tmp_path: Path, field: str, rendered: str, message: str
) -> None:
    op = operator(config, inputs, tmp_path, **{field: f"{{{{ params.{field} }}}}"})
    op.render_template_fields({"params": {field: rendered}})  # type: ignore[arg-type]
    with pytest.raises(AirflowFailException) as info:  # AirflowFailException: no retries
        op.execute({"ti": FakeTI()})  # type: ignore[arg-type]
    check_documented(message, str(info.value))
    assert not (tmp_path / "out").exists()


def test_literal_bad_value_fails_when_the_dag_is_parsed(
    config: ParallelRunConfig, inputs: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as info:
        operator(config, inputs, tmp_path, mini_batch_size="ten")
    check_documented(MBS_TEN, str(info.value))


def test_a_short_watch_lease_fails_when_the_dag_is_parsed(
    config: ParallelRunConfig, inputs: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as info:
        operator(config, inputs, tmp_path, watch_lease_s=5)
    check_documented("watch_lease_s=5 is not allowed: a finite number of seconds >= 10", str(info.value))


def test_mixed_input_types_fail_the_task(config: ParallelRunConfig, inputs: str, tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    table.write_text("a\n1\n")
    op = operator(
        config, [FileDataset.from_files(inputs), TabularDataset.from_delimited_files(str(table))], tmp_path
    )
    with pytest.raises(AirflowFailException) as info:
        op.execute({"ti": FakeTI()})  # type: ignore[arg-type]
    check_documented(
        "Invalid ParallelRunOperator setting: inputs=['FileDataset', 'TabularDataset'] is not allowed: datasets of "
        "one type (all file or all tabular)",
        str(info.value),
    )


def test_unknown_connection_id(config: ParallelRunConfig, inputs: str, tmp_path: Path) -> None:
    with pytest.raises(AirflowNotFoundException) as info:
        DaskHook("nope").get_client()
    check_documented("The conn_id `nope` isn't defined", str(info.value))
    op = operator(config, inputs, tmp_path, dask_conn_id="nope")  # the operator says the same
    with pytest.raises(AirflowNotFoundException) as info:
        op.execute({"ti": FakeTI()})  # type: ignore[arg-type]
    check_documented("The conn_id `nope` isn't defined", str(info.value))


def test_unreachable_scheduler_in_a_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the block ends
    connection = {"conn_type": "dask", "host": "127.0.0.1", "port": port, "extra": {"connect_timeout": "1"}}
    monkeypatch.setenv("AIRFLOW_CONN_DASK_DOWN", json.dumps(connection))
    with pytest.raises(Exception) as info:  # noqa: B017 - the hook's AirflowException
        DaskHook("dask_down").get_client()
    check_documented(
        "Dask connection 'dask_down': cannot connect to tcp://127.0.0.1:<port>: Timed out trying to connect to "
        "tcp://127.0.0.1:<port> after 1 s",
        str(info.value),
    )
    assert f"127.0.0.1:{port}" in str(info.value)
