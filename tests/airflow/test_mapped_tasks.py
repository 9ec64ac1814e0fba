"""Mapped sensors and operators with `dag.test()`: every map index has its own manifest, sensor
state, output folder and asset event; map indexes that would share an output folder fail at try 1
with a message naming `output_path` (never retried, never writing one folder twice)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pendulum
import pytest

from tests.airflow.test_error_catalogue_airflow import check_documented
from tests.airflow.test_example_dags import _asset_events, _states

LOGICAL = pendulum.datetime(2024, 4, 2, tz="UTC")
PARTITIONS = {"a": 3, "b": 2, "c": 4}


@pytest.fixture(scope="module")
def dagbag(airflow_db: Path) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    assert not bag.import_errors, bag.import_errors
    return bag


@pytest.fixture(scope="module")
def partitions(demo_root: Path) -> Path:
    root = demo_root / "mapped" / "partitions"
    for name, count in PARTITIONS.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            (folder / f"{name}{i}.txt").write_text(f"{name}-{i}\n")
    return root


def _task_instances(run: Any, task_id: str) -> dict[int, Any]:
    from airflow.utils.session import create_session

    with create_session() as session:
        return {ti.map_index: ti for ti in run.get_task_instances(session=session) if ti.task_id == task_id}


def _mapped_xcoms(run: Any, task_id: str, key: str = "return_value") -> dict[int, Any]:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(
            select(XComModel).where(
                XComModel.dag_id == run.dag_id,
                XComModel.run_id == run.run_id,
                XComModel.task_id == task_id,
                XComModel.key == key,
            )
        ).all()
        return {row.map_index: XComModel.deserialize_value(row) for row in rows}


def test_mapped_sensor_feeds_a_mapped_operator_one_partition_per_map_index(
    dagbag: Any, partitions: Path, demo_root: Path, isolated_cache: Path
) -> None:
    run = dagbag.get_dag("apr_test_mapped_partitions").test(logical_date=LOGICAL)
    assert str(run.state) == "success", _states(run)
    references = _mapped_xcoms(run, "wait")
    manifests = {index: ref["manifest"] for index, ref in references.items()}
    assert sorted(manifests) == [0, 1, 2] and len(set(manifests.values())) == 3, manifests
    assert all(manifests[i].endswith(f".map{i}.json") for i in manifests)
    state_files = sorted(p.name for p in (isolated_cache / "manifests").rglob("*.state.json"))
    assert len(state_files) == 3, f"one stable_pokes state per map index: {state_files}"

    summaries = _mapped_xcoms(run, "score")
    assert sorted(summaries) == [0, 1, 2]
    for index, name in enumerate(PARTITIONS):
        summary = summaries[index]
        assert summary["output"].endswith(f"/{index}"), summary["output"]
        lines = Path(summary["append_row_file"]).read_text().splitlines()
        assert lines == [f"{name}{i}.txt {name}-{i}" for i in range(PARTITIONS[name])], (index, lines)

    out = (demo_root / "mapped" / "out" / run.run_id).resolve()
    events = sorted(_asset_events(out.as_uri()))
    assert [uri for uri, _ in events] == [(out / str(i)).as_uri() for i in range(3)], events
    assert [extra["succeeded_items"] for _, extra in events] == list(PARTITIONS.values())


@pytest.mark.parametrize("dag_id", ["apr_test_mapped_fixed_output", "apr_test_mapped_shared_output"])
def test_map_indexes_sharing_an_output_folder_fail_at_try_1_naming_output_path(
    dagbag: Any, partitions: Path, demo_root: Path, dag_id: str, capfd: pytest.CaptureFixture[str]
) -> None:
    run = dagbag.get_dag(dag_id).test(logical_date=LOGICAL)
    log = capfd.readouterr().out
    assert str(run.state) == "failed", _states(run)
    tis = _task_instances(run, "score")
    failed = {i: ti for i, ti in tis.items() if str(ti.state) == "failed"}
    assert failed, {i: str(ti.state) for i, ti in tis.items()}
    assert all(ti.try_number == 1 for ti in failed.values()), "a bad output_path is not retried"
    marker = "AirflowFailException: "
    messages = [line.split(marker, 1)[1] for line in log.splitlines() if marker + "Invalid" in line]
    assert messages, log[-3000:]
    if dag_id == "apr_test_mapped_fixed_output":  # known at render time: no map index writes anything
        assert not (demo_root / "mapped" / "fixed").exists()
        assert len(failed) == 3
        check_documented(
            "Invalid ParallelRunOperator setting: output_path='/data/out' is not allowed: a folder per map index "
            "for a mapped task (every map index would write to this one): template it, e.g. "
            "output_path='/data/out/{{ ti.map_index }}'",
            messages[0].replace(str(demo_root / "mapped" / "fixed"), "/data/out"),
        )
    else:  # the map index that ran first wrote its folder; the others found it claimed
        assert len(failed) == 2 and sorted(str(ti.state) for ti in tis.values()).count("success") == 1
        check_documented(
            "Invalid ParallelRunOperator setting: output_path='/data/out/2024-04-02' is not allowed: a folder per "
            "map index for a mapped task: map index <index> of this task writes to it too in this run; put "
            "{{ ti.map_index }} in the template",
            messages[0].replace(str(demo_root / "mapped" / "shared"), "/data/out"),
        )
