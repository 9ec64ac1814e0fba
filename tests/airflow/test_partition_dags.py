"""The partition example DAGs with `dag.test()`: partition-keyed runs, their asset events, and the consumers.

`dag.test()` cannot give a run a partition key, so `partition_run` sets the key (and date) on the run it
creates, as the scheduler does for a `CronPartitionTimetable` or `PartitionedAssetTimetable` run; the
task then gets it from Airflow's own context. The consumers' tasks are called with the triggering events
Airflow would hand them (the scheduler's matching of keys is shown on the real stack, tests/e2e).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import pendulum
import pytest

DAY = "2024-01-03"


@pytest.fixture(scope="module")
def dagbag(airflow_db: Path) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    assert not bag.import_errors, bag.import_errors
    return bag


@contextmanager
def partition_run(key: str, date: dt.datetime | None) -> Iterator[None]:
    """`dag.test()` creates its run with this partition key and date."""
    import airflow.models.dagrun as dagrun_module

    original = dagrun_module.get_or_create_dagrun

    def create(**kwargs: Any) -> Any:
        run = original(**kwargs)
        run.partition_key, run.partition_date = key, date
        kwargs["session"].merge(run)
        kwargs["session"].commit()
        return run

    with mock.patch.object(dagrun_module, "get_or_create_dagrun", create):
        yield


def _xcom(run: Any, task_id: str) -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        query = XComModel.get_many(
            run_id=run.run_id, key="return_value", task_ids=task_id, dag_ids=run.dag_id
        )
        row = session.scalars(query).first()
        return None if row is None else XComModel.deserialize_value(row)


def _events(name: str) -> list[tuple[str | None, dict[str, Any]]]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(
            select(AssetEvent.partition_key, AssetEvent.extra)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .where(AssetModel.name == name)
            .order_by(AssetEvent.id)
        ).all()
        return [(key, dict(extra or {})) for key, extra in rows]


def test_cron_partitioned_run_scores_its_partition_and_announces_it(dagbag: Any, demo_root: Path) -> None:
    dag = dagbag.get_dag("partitioned_daily_scoring")
    assert type(dag.timetable).__name__ == "CronPartitionTimetable"
    date = dt.datetime(2024, 1, 3, tzinfo=dt.timezone.utc)
    with partition_run(DAY, date):
        run = dag.test(logical_date=pendulum.datetime(2024, 1, 4, 1, tz="UTC"))
    assert str(run.state) == "success"
    summary = _xcom(run, "score_partition")
    assert summary["partition_key"] == DAY
    day_input = demo_root / "data" / "partitions" / DAY
    output = demo_root / "output" / "partitioned_daily_scoring" / DAY
    assert summary["output"] == str(output)
    lines = Path(summary["append_row_file"]).read_text().splitlines()
    assert [line.split()[0] for line in lines] == sorted(p.name for p in day_input.iterdir())
    assert summary["succeeded_items"] == 20
    ((key, extra),) = _events("scored_digits_daily")
    assert key == DAY, "the event carries the run's partition key"
    assert extra["succeeded_items"] == 20 and extra["output"] == str(output)
    assert extra["cache_key"] == summary["cache_key"]


def test_arrival_driven_scoring_reads_the_arrived_partition(dagbag: Any, demo_root: Path) -> None:
    import shutil

    digits = sorted((demo_root / "data" / "digits").glob("*.png"))  # written by the test above
    assert digits, "the demo data exists"
    landed = demo_root / "data" / "arrivals" / "batch-0042"
    landed.mkdir(parents=True)
    for image in digits[:7]:
        shutil.copy2(image, landed / image.name)
    (landed / "_SUCCESS").touch()
    with partition_run("batch-0042", None):
        run = dagbag.get_dag("arrival_driven_scoring").test()
    assert str(run.state) == "success"
    summary = _xcom(run, "score_arrival")
    assert (summary["partition_key"], summary["succeeded_items"]) == ("batch-0042", 7)
    ((key, extra),) = _events("scored_digit_arrivals")
    assert key == "batch-0042" and extra["succeeded_items"] == 7


def _reference(name: str, key: str, extra: dict[str, Any], minute: int) -> Any:
    """A triggering event of asset `name` (by its name and URI in the DB), as Airflow hands it to a run."""
    from airflow.models.asset import AssetModel
    from airflow.sdk.execution_time.comms import AssetEventDagRunReferenceResult
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        uri = session.scalar(select(AssetModel.uri).where(AssetModel.name == name))
    return AssetEventDagRunReferenceResult(
        asset={"name": name, "uri": uri, "extra": {}},
        extra=extra,
        source_task_id="score",
        source_dag_id="d",
        source_run_id=f"r{minute}",
        source_map_index=-1,
        source_aliases=[],
        timestamp=dt.datetime(2024, 1, 8, 0, minute, tzinfo=dt.timezone.utc),
        partition_key=key,
    )


def test_the_consumers_read_each_partitions_extra(dagbag: Any, demo_root: Path) -> None:
    from airflow.sdk.execution_time.context import TriggeringAssetEventsAccessor

    (_, extra), *_ = _events("scored_digit_arrivals")
    report = dagbag.get_dag("scored_partition_report").get_task("report")
    events = TriggeringAssetEventsAccessor.build(
        [_reference("scored_digit_arrivals", "batch-0042", extra, 1)]
    )
    result = report.python_callable(triggering_asset_events=events, partition_key="batch-0042")
    assert result["succeeded_items"] == 7 and sum(result["digits"].values()) == 7
    assert (
        json.loads((demo_root / "output" / "scored_partition_report" / "batch-0042.json").read_text())
        == result
    )

    weekly = dagbag.get_dag("weekly_digit_scores").get_task("summarise_week")
    days = [f"2024-01-0{d}" for d in range(1, 8)]
    day_extra = {"succeeded_items": 20, "failed_items": 0, "reused_mini_batches": 4, "append_row_file": "f"}
    events = TriggeringAssetEventsAccessor.build(
        [_reference("scored_digits_daily", day, day_extra, i) for i, day in enumerate(days)]
    )
    summary = weekly.python_callable(
        triggering_asset_events=events,
        partition_key="2024-01-01 (W01)",
        partition_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    )
    assert sorted(summary["days"]) == days and summary["succeeded_items"] == 140
    assert (demo_root / "output" / "weekly_digit_scores" / "2024-01-01.json").is_file()


def test_the_weekly_rollup_waits_for_the_whole_week(dagbag: Any) -> None:
    """The schedule a user copies: every day of a week maps to that week's one run, which needs all
    seven days (Airflow's own mapper, as the scheduler evaluates it)."""
    from airflow.serialization.serialized_objects import DagSerialization

    timetable = DagSerialization.deserialize_dag(
        DagSerialization.serialize_dag(dagbag.get_dag("weekly_digit_scores"))
    ).timetable
    mapper = timetable.get_partition_mapper(name="scored_digits_daily", uri="")
    weeks = {mapper.to_downstream(f"2024-01-0{d}") for d in range(1, 8)}
    assert weeks == {"2024-01-01 (W01)"}
    assert sorted(mapper.to_upstream("2024-01-01 (W01)")) == [f"2024-01-0{d}" for d in range(1, 8)]
    assert type(mapper.wait_policy).__name__ == "WaitForAll"


def test_backfill_plans_one_partitioned_run_per_day(dagbag: Any) -> None:
    """The docs' backfill command (dry run: no scheduler here) plans one run per partition key."""
    import subprocess
    import sys

    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import sync_bag_to_db

    DagBundlesManager().sync_bundles_to_db()
    sync_bag_to_db(dagbag, "dags-folder", None)
    result = subprocess.run(
        [sys.executable, "-m", "airflow", "backfill", "create", "--dag-id", "partitioned_daily_scoring"]
        + ["--from-date", "2024-02-01", "--to-date", "2024-02-03", "--dry-run"],
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    for day in ("2024-02-01", "2024-02-02", "2024-02-03"):
        assert day in result.stdout, result.stdout
    assert "2024-02-04" not in result.stdout and "2024-01-31" not in result.stdout
