"""Every input source keeps the `InputSource` contract the planner, the reuse key, manifests and the
entry-script process rely on: its serialised form round-trips (with and without credentials), it plans,
fingerprints and reads a tiny input, and its credentials stay out of keys and manifests.

`conform` is the check itself; a source whose input needs a server (tests/core/inputs/test_sql_source.py)
calls it with its own fixture."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from airflow_parallel_run.core import ConfigError, FileDataset, InputError, TabularDataset
from airflow_parallel_run.core.inputs import dataset_from_dict, dataset_to_dict, source_class, source_names
from airflow_parallel_run.core.inputs.fingerprint import Fingerprinter
from airflow_parallel_run.core.inputs.source import InputSource, PlanContext
from airflow_parallel_run.core.output.folder import check_separate
from airflow_parallel_run.core.plan import plan_inputs
from airflow_parallel_run.core.reuse.key import key_fields

SECRET = "s3cr3t-credential-value"


def conform(source: Any, tmp_path: Path, *, size: int, expected_items: int) -> list[Any]:
    """Checks `source` against the protocol; returns what read() gave for each planned mini-batch."""
    assert isinstance(source, InputSource)
    assert source.kind in ("file", "tabular") and isinstance(source.template_fields, tuple)
    assert all(hasattr(source, name) for name in source.template_fields)
    # serialised, with and without credentials
    name = type(source).__name__
    assert name in source_names() and source_class(name) is type(source)
    full = dataset_to_dict(source, credentials=True)
    assert full["type"] == name and json.loads(json.dumps(full)) == full
    assert dataset_from_dict(full) == source
    bare = dataset_to_dict(source, credentials=False)
    assert SECRET not in json.dumps(bare), "credentials in the form manifests keep"
    assert SECRET not in json.dumps(key_fields(source)), "credentials in the reuse key"
    assert dataset_from_dict(bare, source.storage_options) == source
    # planned, fingerprinted and read
    numbers = itertools.count()
    batches = list(source.plan(PlanContext(0, source.kind, size, (), numbers)))
    assert [mb.index for mb in batches] == list(range(len(batches))) and batches
    assert sum(mb.items for mb in batches) == expected_items
    with Fingerprinter(str(tmp_path / "memo.sqlite")) as memo:
        prints = source.fingerprints(batches, memo)
    assert set(prints) == {unit for mb in batches for unit in mb.units()}
    read = []
    for mb in batches:
        data, items = source.read(mb, str(tmp_path / f"scratch{mb.index}"))
        assert items == mb.items
        read.append(data)
    assert source.locations() and all(isinstance(where, str) for where in source.locations())
    return read


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    root = tmp_path / "in"
    root.mkdir()
    for i in range(5):
        (root / f"f{i}.txt").write_text(f"{i}\n")
    (root / "t.csv").write_text("a,b\n" + "".join(f"{i},{i * 2}\n" for i in range(7)))
    return root


FACTORIES: dict[str, Callable[[Path], tuple[Any, int, int]]] = {
    # source, mini-batch size, items
    "FileDataset": lambda root: (
        FileDataset.from_files(str(root / "f*.txt"), storage_options={"token": SECRET}),
        2,
        5,
    ),
    "TabularDataset": lambda root: (
        TabularDataset.from_delimited_files(str(root / "t.csv"), storage_options={"token": SECRET}),
        10,
        7,
    ),
}


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_a_built_in_source_keeps_the_contract(name: str, tiny: Path, tmp_path: Path) -> None:
    source, size, items = FACTORIES[name](tiny)
    read = conform(source, tmp_path, size=size, expected_items=items)
    if name == "FileDataset":
        assert [len(paths) for paths in read] == [2, 2, 1]
    else:
        assert sum(len(frame) for frame in read) == 7 and list(read[0].columns) == ["a", "b"]


def test_built_in_sources_are_registered_by_their_type_names() -> None:
    assert source_names()[:2] == ("FileDataset", "TabularDataset")
    with pytest.raises(InputError, match="input type 'NoSuchDataset' is unknown here"):
        source_class("NoSuchDataset")
    with pytest.raises(InputError, match="is unknown here"):
        dataset_from_dict({"type": "NoSuchDataset", "paths": ["/x"]})


def test_credentials_fill_or_merge(tiny: Path) -> None:
    own = FileDataset.from_files(str(tiny), storage_options={"key": "own"})
    none = FileDataset.from_files(str(tiny))
    job = {"key": "job", "region": "eu"}
    assert none.with_credentials(job).storage_options == job
    assert own.with_credentials(job).storage_options == {"key": "own"}  # fill: its own stay whole
    assert own.with_credentials(job, mode="merge").storage_options == {"key": "own", "region": "eu"}
    assert none.with_credentials({}) is none


def test_mixed_kinds_and_foreign_objects_are_refused(tiny: Path) -> None:
    files = FileDataset.from_files(str(tiny / "f*.txt"))
    table = TabularDataset.from_delimited_files(str(tiny / "t.csv"))
    with pytest.raises(ConfigError, match="one type"):
        plan_inputs([files, table])
    with pytest.raises(ConfigError, match="FileDataset or TabularDataset objects"):
        plan_inputs([object()])  # type: ignore[list-item]


def test_mini_batch_numbers_run_on_over_inputs(tiny: Path) -> None:
    plan = plan_inputs(
        [FileDataset.from_files(str(tiny / "f*.txt")), FileDataset.from_files(str(tiny / "f1*"))], 2
    )
    assert [(mb.index, mb.input_index) for mb in plan] == [(0, 0), (1, 0), (2, 0), (3, 1)]
    assert len(plan) == 4 and plan.batch(3).files[0].url.endswith("f1.txt")


def test_a_location_that_is_no_file_system_never_overlaps_an_output(tmp_path: Path) -> None:
    """Sources such as a database name their location by URL; the output-overlap check takes them."""
    check_separate(
        str(tmp_path / "out"), {}, inputs=[("postgresql://db.example:5432/sales", {})], cache_root=None
    )
