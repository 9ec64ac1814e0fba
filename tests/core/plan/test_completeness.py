"""Completeness rules (what DatasetPartitionSensor polls) and manifests, without Airflow."""

from __future__ import annotations

from pathlib import Path

import pytest

from airflow_parallel_run.core import ConfigError, FileDataset, InputError, TabularDataset
from airflow_parallel_run.core.plan import plan_inputs
from airflow_parallel_run.core.plan.completeness import Completeness, check_partition
from airflow_parallel_run.core.plan.manifest import is_manifest_reference, read_manifest, write_manifest


def land(folder: Path, count: int, start: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + count):
        (folder / f"img{i:03d}.png").write_bytes(b"x" * (i + 1))


def test_marker_rule(tmp_path: Path) -> None:
    day = tmp_path / "2024-01-01"
    rule = Completeness(marker_file="_SUCCESS")
    assert check_partition([FileDataset.from_files(str(day))], rule)[0] is False  # folder missing
    land(day, 5)
    done, _, seen = check_partition([FileDataset.from_files(str(day))], rule)
    assert not done and "waiting for marker file _SUCCESS" in seen
    (day / "_SUCCESS").touch()
    done, _, seen = check_partition([FileDataset.from_files(str(day))], rule)
    assert done and "5 files" in seen  # the marker itself is not an input file
    glob = FileDataset.from_files(str(day / "*.png"))
    assert check_partition([glob], rule)[0] is True


def test_min_file_count_rule(tmp_path: Path) -> None:
    day = tmp_path / "d"
    rule = Completeness(min_file_count=4)
    land(day, 3)
    done, _, seen = check_partition([FileDataset.from_files(str(day))], rule)
    assert not done and "waiting for 4 files" in seen
    land(day, 1, start=3)
    assert check_partition([FileDataset.from_files(str(day))], rule)[0] is True


def test_stable_sizes_rule(tmp_path: Path) -> None:
    day = tmp_path / "d"
    land(day, 2)
    rule = Completeness(stable_pokes=2)
    dataset = [FileDataset.from_files(str(day))]
    done, state, _ = check_partition(dataset, rule)
    assert not done and state["stable"] == 0
    done, state, _ = check_partition(dataset, rule, state)
    assert not done and state["stable"] == 1
    (day / "img000.png").write_bytes(b"grown")  # a file still being written resets the count
    done, state, _ = check_partition(dataset, rule, state)
    assert not done and state["stable"] == 0
    done, state, _ = check_partition(dataset, rule, state)
    done, state, seen = check_partition(dataset, rule, state)
    assert done and "complete" in seen


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"marker_file": "_SUCCESS", "min_file_count": 2},
        {"marker_file": "a/b"},
        {"min_file_count": 0},
        {"stable_pokes": True},
    ],
)
def test_bad_rules_are_named(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        Completeness(**kwargs)  # type: ignore[arg-type]


def test_unreadable_location_fails_instead_of_waiting(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot be opened"):
        check_partition([FileDataset.from_files("nosuchprotocol://bucket/x")], Completeness(min_file_count=1))


def test_manifest_round_trip_runs_exactly_the_plan(tmp_path: Path) -> None:
    day = tmp_path / "d"
    land(day, 7)
    datasets = [FileDataset.from_files(str(day), storage_options={"secret": "s3cr3t"})]
    planned = plan_inputs(datasets, 3)
    reference = write_manifest(str(tmp_path / "m" / "run.json"), datasets, planned, {"a": "b"})
    assert is_manifest_reference(reference) and reference["mini_batches"] == 3 and reference["items"] == 7
    assert reference["bytes"] == sum(range(1, 8))
    assert "s3cr3t" not in (tmp_path / "m" / "run.json").read_text(), "credentials never go into a manifest"
    land(day, 2, start=7)  # late files do not change a written manifest
    back_datasets, back_plan = read_manifest(reference["manifest"], {"secret": "again"})
    assert back_plan == planned
    assert back_datasets[0].storage_options == {"secret": "again"}
    with pytest.raises(InputError, match="does not exist"):
        read_manifest(str(tmp_path / "missing.json"))


def test_tabular_manifest_round_trip(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("a,b\n" + "".join(f"{i},{i}\n" for i in range(50)))
    datasets = [TabularDataset.from_delimited_files(str(tmp_path / "t.csv"))]
    planned = plan_inputs(datasets, "100")
    reference = write_manifest(str(tmp_path / "t.json"), datasets, planned)
    assert read_manifest(reference["manifest"])[1] == planned and reference["items"] == 50
