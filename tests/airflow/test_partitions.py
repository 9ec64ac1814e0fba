"""Partition-keyed runs and partitioned asset events of ParallelRunOperator (airflow_parallel_run/partitions.py).

The operator runs for real (engine + a Dask cluster) with a stand-in task context whose outlet events are
Airflow's own `OutletEventAccessors`; what Airflow would register is read back through the task runner's
own serializer (`_serialize_outlet_events`), so a partition key Airflow refuses fails here too.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.sdk import Asset
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from airflow.sdk.execution_time.context import OutletEventAccessors
from airflow.sdk.execution_time.task_runner import _serialize_outlet_events
from distributed import LocalCluster
from test_error_catalogue_airflow import check_documented

from airflow_parallel_run.core import ConfigError, FileDataset, ParallelRunConfig
from airflow_parallel_run.operators import SUMMARY_XCOM_KEY, ParallelRunOperator
from airflow_parallel_run.partitions import (
    EXTRA_PARTITIONS,
    check_key_in_paths,
    partition_counts,
    partition_extra,
    path_problem,
    scored_partitions,
    with_run_partition,
)

NAME_ECHO = """
import os

def run(mini_batch):
    return [os.path.basename(os.path.dirname(p)) + "/" + os.path.basename(p) for p in mini_batch]
"""
FAIL_ALL = """
def run(mini_batch):
    raise ValueError("cannot score")
"""
SCORES = Asset(name="scores", uri="file:///scores")


class FakeTI:
    def __init__(self) -> None:
        self.xcom: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value


def _context(partition_key: str | None = None, partition_date: dt.datetime | None = None) -> dict[str, Any]:
    return {
        "ti": FakeTI(),
        "outlet_events": OutletEventAccessors(),
        "partition_key": partition_key,
        "partition_date": partition_date,
        "dag_run": SimpleNamespace(partition_key=partition_key, partition_date=partition_date),
    }


def _registered(context: dict[str, Any]) -> list[dict[str, Any]]:
    """What the task runner sends to Airflow for this task's outlets (one dict per asset event)."""
    return list(_serialize_outlet_events(context["outlet_events"]))


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=False,
        protocol="tcp://",
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
        silence_logs=logging.ERROR,
    ) as local:
        yield local


@pytest.fixture
def dask_conn(cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> str:
    conn = {"conn_type": "dask", "extra": {"address": cluster.scheduler_address}}
    monkeypatch.setenv("AIRFLOW_CONN_APR_PARTITIONS", json.dumps(conn))
    return "apr_partitions"


def _land(root: Path, partitions: dict[str, int], prefix: str = "") -> Path:
    """`root/<prefix><key>/item<i>.txt` for each partition (hive style with prefix 'day=')."""
    for key, count in partitions.items():
        folder = root / f"{prefix}{key}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            (folder / f"item{i}.txt").write_text(f"{key} {i}\n")
    return root


# -- the run's partition key ------------------------------------------------------------------------
def test_run_partition_key_reaches_templates_summary_and_the_event(
    dask_conn: str, write_script: Callable[..., str], tmp_path: Path
) -> None:
    data = _land(tmp_path / "landing", {"2024-01-01": 3, "2024-01-02": 5})
    out = tmp_path / "scores"
    op = ParallelRunOperator(
        task_id="score",
        parallel_run_config=ParallelRunConfig(entry_script=write_script(NAME_ECHO), mini_batch_size=2),
        inputs=f"{data}/{{{{ partition_key }}}}/*.txt",
        output_path=f"{out}/{{{{ partition_date | ds }}}}",
        arguments=["--partition", "{{ dag_run.partition_key }}"],
        output_asset=SCORES,
        dask_conn_id=dask_conn,
    )
    context = _context("2024-01-02", dt.datetime(2024, 1, 2, tzinfo=dt.timezone.utc))
    op.render_template_fields(context)  # type: ignore[arg-type]
    assert op.arguments == ["--partition", "2024-01-02"]
    summary = op.execute(context)  # type: ignore[arg-type]
    assert summary["partition_key"] == "2024-01-02"
    assert summary["output"] == str(out / "2024-01-02")
    lines = Path(summary["append_row_file"]).read_text().splitlines()
    assert lines == [f"2024-01-02/item{i}.txt" for i in range(5)], "only the run's partition was scored"
    (event,) = _registered(context)
    assert event["dest_asset_key"] == {"name": "scores", "uri": "file:///scores"}
    assert "partition_key" not in event, "Airflow attaches the run's own key to the event"
    extra = event["extra"]
    assert (extra["succeeded_items"], extra["failed_items"], extra["reused_mini_batches"]) == (5, 0, 0)
    assert extra["cache_key"] == summary["cache_key"] and extra["partition_key"] == "2024-01-02"
    assert extra["output_uri"] == (out / "2024-01-02").as_uri()
    assert op.job_summary == summary


def test_a_run_without_a_partition_key_has_none_in_its_summary(
    dask_conn: str, write_script: Callable[..., str], files: Callable[..., Path], tmp_path: Path
) -> None:
    op = ParallelRunOperator(
        task_id="score",
        parallel_run_config=ParallelRunConfig(entry_script=write_script(NAME_ECHO)),
        inputs=str(files(3)),
        output_path=str(tmp_path / "out"),
        dask_conn_id=dask_conn,
    )
    context = _context()
    summary = op.execute(context)  # type: ignore[arg-type]
    assert "partition_key" not in summary
    (event,) = _registered(context)
    assert "partition_key" not in event and "partition_key" not in event["extra"]


@pytest.mark.parametrize(
    ("key", "field", "problem"),
    [
        ("../other_dag", "output_path", "it has an empty, '.' or '..' path segment"),
        ("/etc", "output_path", "it has an empty, '.' or '..' path segment"),
        ("*", "inputs", "it holds glob characters (*?[])"),
        ("2024-01-0[12]", "inputs", "it holds glob characters (*?[])"),
    ],
)
def test_a_partition_key_that_escapes_its_path_fails_before_anything_runs(
    write_script: Callable[..., str], tmp_path: Path, key: str, field: str, problem: str
) -> None:
    data = _land(tmp_path / "landing", {"2024-01-01": 1})
    out = tmp_path / "scores"
    op = ParallelRunOperator(
        task_id="score",
        parallel_run_config=ParallelRunConfig(entry_script=write_script(NAME_ECHO)),
        inputs=f"{data}/{{{{ partition_key }}}}" if field == "inputs" else str(data / "2024-01-01"),
        output_path=f"{out}/{{{{ partition_key }}}}" if field == "output_path" else str(out),
    )
    context = _context(key)
    op.render_template_fields(context)  # type: ignore[arg-type]
    with pytest.raises(AirflowFailException) as info:  # no retries: the key will not change
        op.execute(context)  # type: ignore[arg-type]
    rendered = f"{out}/{key}" if field == "output_path" else f"{data}/{key}"
    check_documented(
        "Invalid ParallelRunOperator setting: partition_key=<key> is not allowed: a key that is safe in a "
        "path when <field> uses it (<problem>; <field> renders to <path>)",
        str(info.value),
    )
    assert f"({problem}; {field} renders to {rendered!r})" in str(info.value)
    assert not out.exists() and not _registered(context)


@pytest.mark.parametrize("key", ["2024-01-01", "us|2024-01-01T00:00:00", "2024/01/02", "2024-01-01 (W01)"])
def test_keys_that_stay_inside_their_path_are_allowed(key: str) -> None:
    assert path_problem(key) is None
    check_key_in_paths(key, {"output_path": [f"/out/{key}"]})


def test_with_run_partition_adds_the_key_only_when_the_run_has_one() -> None:
    assert with_run_partition({"status": "succeeded"}, {"partition_key": None}) == {"status": "succeeded"}
    assert with_run_partition({"status": "succeeded"}, {"dag_run": SimpleNamespace(partition_key="k")}) == {
        "status": "succeeded",
        "partition_key": "k",
    }


# -- data partitions: one event per scored partition --------------------------------------------------
def _data_operator(script: str, data: Path, out: Path, conn: str, **kwargs: Any) -> ParallelRunOperator:
    return ParallelRunOperator(
        task_id="score",
        parallel_run_config=ParallelRunConfig(entry_script=script, partition_keys=["day"], **kwargs),
        inputs=FileDataset.from_files(str(data)),
        output_path=str(out),
        output_asset=SCORES,
        outlet_partitions="data",
        dask_conn_id=conn,
    )


def test_one_event_per_scored_partition_with_each_partitions_counts(
    dask_conn: str, write_script: Callable[..., str], tmp_path: Path
) -> None:
    counts = {"2024-01-01": 3, "2024-01-02": 1, "2024-01-03": 4}
    data = _land(tmp_path / "landing", counts, prefix="day=")
    script = write_script(NAME_ECHO)
    context = _context()
    summary = _data_operator(script, data, tmp_path / "run1", dask_conn).execute(context)  # type: ignore[arg-type]
    events = _registered(context)
    assert sorted(e["partition_key"] for e in events) == sorted(counts)
    extra = events[0]["extra"]
    assert all(e["extra"] == extra for e in events), "Airflow gives every partition event one extra"
    for key, count in counts.items():
        mine = partition_extra(extra, key)
        assert (mine["partition_key"], mine["total_items"], mine["succeeded_items"]) == (key, count, count)
        assert (mine["total_mini_batches"], mine["reused_mini_batches"]) == (1, 0)
        assert mine["cache_key"] == summary["cache_key"] and mine["output"] == summary["output"]
    with pytest.raises(KeyError, match="did not score partition '2024-01-09'"):
        partition_extra(extra, "2024-01-09")

    # Unchanged partitions are reused; the changed one runs again, and the counts say so per partition.
    (data / "day=2024-01-02" / "item0.txt").write_text("changed\n")
    context = _context()
    summary = _data_operator(script, data, tmp_path / "run2", dask_conn).execute(context)  # type: ignore[arg-type]
    assert (summary["total_mini_batches"], summary["reused_mini_batches"]) == (3, 2)
    extra = _registered(context)[0]["extra"]
    reused = {key: partition_extra(extra, key)["reused_mini_batches"] for key in counts}
    assert reused == {"2024-01-01": 1, "2024-01-02": 0, "2024-01-03": 1}


def test_a_failed_job_emits_no_event(
    dask_conn: str, write_script: Callable[..., str], tmp_path: Path
) -> None:
    data = _land(tmp_path / "landing", {"2024-01-01": 2}, prefix="day=")
    op = _data_operator(write_script(FAIL_ALL), data, tmp_path / "out", dask_conn, run_max_try=1)
    context = _context("2024-01-01")
    with pytest.raises(AirflowException, match="Job failed"):
        op.execute(context)  # type: ignore[arg-type]
    assert not _registered(context)
    assert context["ti"].xcom[SUMMARY_XCOM_KEY]["partition_key"] == "2024-01-01"


def test_a_partition_key_airflow_would_refuse_fails_the_task(
    dask_conn: str, write_script: Callable[..., str], tmp_path: Path
) -> None:
    """An empty hive value (``day=/``) scores, but Airflow refuses an empty partition key: the task must not
    look green while its consumers never hear of that partition."""
    data = tmp_path / "landing"
    _land(data, {"2024-01-01": 1}, prefix="day=")
    _land(data, {"": 1}, prefix="day=")
    op = _data_operator(write_script(NAME_ECHO), data, tmp_path / "out", dask_conn)
    with pytest.raises(AirflowFailException) as info:
        op.execute(_context())  # type: ignore[arg-type]
    check_documented(
        "Cannot announce the scored partitions: Airflow refuses partition keys <keys> (formed from "
        "partition_keys <names> joined by '|')",
        str(info.value),
    )
    assert "'' (it is empty)" in str(info.value)


def test_partition_counts_count_the_first_commit_of_a_mini_batch_once() -> None:
    header = "Mini-batch Id,Attempt,Node,Process,Start Time (UTC),Total,Succeeded,Failed,Elapsed Seconds,"
    header += "Process Seconds,Run Method Seconds,Status,Error Message,Mini-batch Detail\n"

    def row(index: int, attempt: int, total: int, ok: int, status: str, day: str) -> str:
        detail = json.dumps({"input_index": 0, "files": [], "partition_key_value": {"day": day}})
        return f'{index},{attempt},n,p,t,{total},{ok},{total - ok},0,0,0,{status},,"{detail.replace(chr(34), chr(34) * 2)}"\n'

    text = header + "".join(
        [
            row(0, 1, 4, 0, "RUN_EXCEPTION", "a"),  # a retry...
            row(0, 2, 4, 3, "RUN_DONE", "a"),  # ...that committed
            row(0, 2, 4, 4, "RUN_DONE", "a"),  # a duplicate delivery: logged, not counted
            row(1, 0, 2, 2, "REUSED", "b"),
            row(2, 1, 5, 0, "RUN_EXCEPTION", "b"),  # failed for good
        ]
    )
    counts = partition_counts(text, ["day"])
    assert counts["a"].as_extra() == {
        "total_items": 4,
        "succeeded_items": 3,
        "failed_items": 1,
        "total_mini_batches": 1,
        "succeeded_mini_batches": 1,
        "reused_mini_batches": 0,
    }
    assert (counts["b"].succeeded_items, counts["b"].failed_items, counts["b"].reused_mini_batches) == (
        2,
        5,
        1,
    )


# -- parse-time settings ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"outlet_partitions": "data", "output_asset": SCORES},
            "outlet_partitions='data' is not allowed: 'run' unless parallel_run_config sets partition_keys "
            "(the partitions of the input are what 'data' emits)",
        ),
        (
            {"outlet_partitions": "data", "partition_keys": ["day"], "output_path": "/out/{{ ds }}"},
            "outlet_partitions='data' is not allowed: 'run' unless the outlet is a fixed asset: pass "
            "output_asset=Asset(...) (a templated output_path is an asset alias, and Airflow attaches "
            "partitions to concrete assets only)",
        ),
        ({"outlet_partitions": "keys"}, "outlet_partitions='keys' is not allowed: 'run' or 'data'"),
    ],
)
def test_outlet_partitions_is_checked_when_the_dag_is_parsed(
    write_script: Callable[..., str], kwargs: dict[str, Any], message: str
) -> None:
    config = ParallelRunConfig(
        entry_script=write_script(NAME_ECHO), partition_keys=kwargs.pop("partition_keys", None)
    )
    with pytest.raises(ConfigError) as info:
        ParallelRunOperator(
            task_id="score",
            parallel_run_config=config,
            inputs="/in",
            output_path=kwargs.pop("output_path", "/out"),
            **kwargs,
        )
    check_documented(message, str(info.value))


# -- consumers -------------------------------------------------------------------------------------
def test_scored_partitions_reads_each_triggering_events_partition() -> None:
    from airflow.sdk.execution_time.comms import AssetEventDagRunReferenceResult
    from airflow.sdk.execution_time.context import TriggeringAssetEventsAccessor

    extra = {
        "succeeded_items": 7,
        "cache_key": "c",
        EXTRA_PARTITIONS: {"a": {"succeeded_items": 3}, "b": {"succeeded_items": 4}},
    }

    def event(key: str | None, minute: int) -> AssetEventDagRunReferenceResult:
        return AssetEventDagRunReferenceResult(
            asset={"name": "scores", "uri": "file:///scores", "extra": {}},
            extra=extra,
            source_task_id="score",
            source_dag_id="d",
            source_run_id="r",
            source_map_index=-1,
            source_aliases=[],
            timestamp=dt.datetime(2024, 1, 1, 0, minute, tzinfo=dt.timezone.utc),
            partition_key=key,
        )

    accessor = TriggeringAssetEventsAccessor.build([event("a", 1), event("b", 2), event(None, 3)])
    found = scored_partitions({"triggering_asset_events": accessor}, SCORES)
    assert found == {
        "a": {"succeeded_items": 3, "cache_key": "c", "partition_key": "a"},
        "b": {"succeeded_items": 4, "cache_key": "c", "partition_key": "b"},
    }
