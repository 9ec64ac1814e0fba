"""Parquet for pandas: one dtype per column in every mini-batch, and numpy's where the job has no missing value.

Property: for random Parquet inputs (several files, several row groups each, integer, unsigned, bool,
float and string columns, missing values placed at random, statistics written or not) and many mini-batch
sizes, every mini-batch's DataFrame, read on its own as a worker reads it, has the same dtypes; its values,
concatenated in order, are `pandas.read_parquet`'s of the whole input; and an integer or bool column is
numpy's int64/bool (as `pandas.read_parquet` reads it) exactly when no file holds a missing value in it and
every file wrote its statistics, pandas' nullable Int64/boolean otherwise, including in the mini-batches
that hold no missing value themselves.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from distributed import Client
from hypothesis import given
from hypothesis import strategies as st
from property_support import REPEATABLE

from airflow_parallel_run.core import ParallelRunConfig, TabularDataset, run_job
from airflow_parallel_run.core.errors import InputError
from airflow_parallel_run.core.inputs.batch_format import read_batch
from airflow_parallel_run.core.minibatch import MiniBatch
from airflow_parallel_run.core.plan import plan_inputs

TYPES = {"i64": pa.int64(), "i32": pa.int32(), "u8": pa.uint8(), "flag": pa.bool_(), "x": pa.float64()}
NUMPY = {"i64": "int64", "i32": "int32", "u8": "uint8", "flag": "bool"}
NULLABLE = {"i64": "Int64", "i32": "Int32", "u8": "UInt8", "flag": "boolean"}


def _value(name: str, row: int) -> Any:
    if name == "flag":
        return row % 3 == 0
    if name == "x":
        return row / 4
    if name == "s":
        return f"s{row}"
    return row % 200


@st.composite
def inputs(draw: Any) -> dict[str, Any]:
    files = []
    row = 0
    for _ in range(draw(st.integers(1, 3))):
        rows = draw(st.integers(1, 30))
        columns: dict[str, list[Any]] = {}
        for name in [*TYPES, "s"]:
            values = [_value(name, row + r) for r in range(rows)]
            for r in (
                draw(st.lists(st.integers(0, rows - 1), max_size=2)) if draw(st.integers(0, 4)) == 0 else []
            ):
                values[r] = None
            columns[name] = values
        files.append(
            {
                "columns": columns,
                "row_group_size": draw(st.integers(1, 12)),
                "statistics": draw(st.integers(0, 5)) > 0,
            }
        )
        row += rows
    return {"files": files, "size": draw(st.sampled_from([1, 600, 1500, 10**9]))}


def _write(folder: Path, case: dict[str, Any]) -> str:
    for i, spec in enumerate(case["files"]):
        table = pa.table(
            {name: pa.array(values, TYPES.get(name, pa.string())) for name, values in spec["columns"].items()}
        )
        pq.write_table(
            table,
            folder / f"part-{i}.parquet",
            row_group_size=spec["row_group_size"],
            write_statistics=spec["statistics"],
        )
    return str(folder)


def _mini_batches(folder: str, size: int, batch_format: str) -> tuple[list[MiniBatch], list[Any]]:
    """The job's mini-batches over `folder` and what run() receives for each, read on its own as a worker
    reads it."""
    dataset = TabularDataset.from_parquet_files(folder)
    batches = list(plan_inputs([dataset], size))
    job_input = dataset.with_column_types(batches)
    return batches, [read_batch(job_input, mb, folder, batch_format)[0] for mb in batches]


def _frames(folder: str, size: int) -> list[pd.DataFrame]:
    return _mini_batches(folder, size, "pandas")[1]


@REPEATABLE
@given(case=inputs())
def test_dtypes_are_one_per_job_and_numpy_where_no_file_holds_a_missing_value(case: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = _write(Path(tmp), case)
        frames = _frames(folder, case["size"])
        reference = pd.read_parquet(folder)  # pandas' own reading of the whole input, files in name order
    assert len({tuple(map(str, f.dtypes)) for f in frames}) == 1, [dict(f.dtypes) for f in frames]
    got = pd.concat(frames, ignore_index=True)
    for name in NUMPY:
        announced = all(spec["statistics"] for spec in case["files"])
        missing = any(v is None for spec in case["files"] for v in spec["columns"][name])
        expected = NUMPY[name] if announced and not missing else NULLABLE[name]
        assert str(got[name].dtype) == expected, (name, got[name].dtype, announced, missing)
        if expected == NUMPY[name]:
            assert got[name].dtype == reference[name].dtype  # as pandas.read_parquet reads it
    for name in reference.columns:
        assert (
            got[name].astype(object).where(got[name].notna(), None).tolist()
            == reference[name].astype(object).where(reference[name].notna(), None).tolist()
        ), name


@REPEATABLE
@given(case=inputs())
def test_arrow_mini_batches_concatenated_in_order_are_the_files_as_pyarrow_reads_them(
    case: dict[str, Any],
) -> None:
    """batch_format="pyarrow": every mini-batch's Table, read on its own, concatenated in plan order, is
    `pyarrow.parquet.read_table` of each file in name order: the same rows in the same order, each row group
    once, with the file's own types (a reader that returns a slice's row groups in its own order, or each
    only once, fails here)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = _write(Path(tmp), case)
        batches, tables = _mini_batches(folder, case["size"], "pyarrow")
        reference = [pq.read_table(path) for path in sorted(Path(folder).glob("*.parquet"))]
    assert all(isinstance(t, pa.Table) for t in tables), [type(t) for t in tables]
    assert [t.num_rows for t in tables] == [mb.items for mb in batches]
    for table in tables:
        for name in TYPES:
            assert table.schema.field(name).type == TYPES[name], (name, table.schema)
    assert pa.concat_tables(tables).to_pydict() == pa.concat_tables(reference).to_pydict()


def test_a_mini_batch_without_a_missing_value_is_nullable_when_another_file_has_one(tmp_path: Path) -> None:
    """The first file has no missing value, the second has one: the first file's mini-batches are Int64
    too (read on their own, plain to_pandas() gave them int64 and the second float64)."""
    pq.write_table(pa.table({"v": pa.array(range(20), pa.int64())}), tmp_path / "a.parquet", row_group_size=5)
    pq.write_table(pa.table({"v": pa.array([1, None, 3], pa.int64())}), tmp_path / "b.parquet")
    frames = _frames(str(tmp_path), 1)
    assert len(frames) == 5
    assert {str(f["v"].dtype) for f in frames} == {"Int64"}
    (tmp_path / "b.parquet").unlink()
    assert {str(f["v"].dtype) for f in _frames(str(tmp_path), 1)} == {"int64"}


def test_a_missing_value_the_statistics_did_not_announce_fails_its_mini_batch(tmp_path: Path) -> None:
    """A file rewritten after planning with a missing value where its statistics had none: the mini-batch
    fails naming the file and the column, never a float64 column beside int64 ones."""
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"v": pa.array(range(10), pa.int64())}), path, row_group_size=5)
    dataset = TabularDataset.from_parquet_files(str(path))
    batches = list(plan_inputs([dataset], 1))
    job_input = dataset.with_column_types(batches)
    assert job_input.null_columns == ()
    pq.write_table(pa.table({"v": pa.array([None, *range(1, 10)], pa.int64())}), path, row_group_size=5)
    with pytest.raises(InputError, match=r"a\.parquet: column 'v' holds 1 missing value.*statistics"):
        read_batch(job_input, batches[0], str(tmp_path), "pandas")
    assert read_batch(job_input, batches[1], str(tmp_path), "pandas")[0]["v"].dtype == np.int64


def test_a_plan_from_a_manifest_written_before_null_columns_reads_nullable(tmp_path: Path) -> None:
    """A slice read back from a manifest keeps what its footer said; one written before the field existed
    does not say, and the job reads every integer column nullable (as before)."""
    pq.write_table(pa.table({"v": pa.array(range(10), pa.int64())}), tmp_path / "a.parquet", row_group_size=5)
    dataset = TabularDataset.from_parquet_files(str(tmp_path))
    batches = list(plan_inputs([dataset], 1))
    documents = [json.loads(json.dumps(mb.to_dict())) for mb in batches]
    assert [MiniBatch.from_dict(d) for d in documents] == batches
    for document in documents:
        for piece in document["slices"]:
            del piece["null_columns"]
    old = [MiniBatch.from_dict(d) for d in documents]
    assert dataset.with_column_types(old).null_columns is None
    assert {
        str(read_batch(dataset.with_column_types(old), mb, str(tmp_path), "pandas")[0]["v"].dtype)
        for mb in old
    } == {"Int64"}


def test_null_columns_is_for_parquet_only() -> None:
    with pytest.raises(Exception, match="null_columns"):
        TabularDataset(("x.csv",), "csv", null_columns=("a",))


# run() reports the dtypes it got; the output holds one line per mini-batch
DTYPES_SCRIPT = """
def run(mini_batch):
    return [";".join(f"{c}={t}" for c, t in mini_batch.dtypes.astype(str).items())]
"""


def test_a_job_reads_columns_as_pandas_reads_them_and_the_key_follows(
    dask_client: Client, write_script: Any, tmp_path: Path
) -> None:
    """Through a job: numpy dtypes where no file has a missing value, nullable where one has; adding a file
    with a missing value changes every mini-batch's reuse key (the dtypes run() sees changed)."""
    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(
        pa.table({"k": pa.array(range(40), pa.int64()), "ok": pa.array([True] * 40)}),
        data / "a.parquet",
        row_group_size=10,
    )
    config = ParallelRunConfig(
        entry_script=write_script(DTYPES_SCRIPT), mini_batch_size=1, process_count_per_node=2, run_max_try=1
    )
    cache = str(tmp_path / "cache")

    def job(name: str) -> tuple[set[str], dict[str, Any]]:
        summary = run_job(
            config,
            [TabularDataset.from_parquet_files(str(data))],
            str(tmp_path / name),
            client=dask_client,
            cache_dir=cache,
        )
        assert summary["status"] == "succeeded", summary
        return set(Path(summary["append_row_file"]).read_text().split()), summary

    lines, first = job("one")
    assert lines == {"k=int64;ok=bool"}
    assert job("again")[1]["reused_mini_batches"] == first["total_mini_batches"]
    pq.write_table(
        pa.table({"k": pa.array([None, 1], pa.int64()), "ok": pa.array([True, None])}), data / "b.parquet"
    )
    lines, summary = job("two")
    assert lines == {"k=Int64;ok=boolean"}
    assert summary["reused_mini_batches"] == 0


@pytest.mark.parametrize("levels", [["id"], ["id", "day"]])
def test_an_index_pandas_wrote_keeps_one_dtype_beside_a_nullable_column(
    tmp_path: Path, levels: list[str]
) -> None:
    """A DataFrame written by pandas with a named integer index: the index comes back as an index, numpy int64
    in every mini-batch (as pandas.read_parquet reads it) also when another column is nullable (the numpy
    dtype was looked for among the columns only, and the mini-batch failed with KeyError: 'id')."""
    rows = 12
    frame = pd.DataFrame(
        {
            "id": [i * i for i in range(rows)],  # not a range: stored as a column, not as metadata
            "day": [i % 3 for i in range(rows)],
            "k": pd.array([None if i == 7 else i for i in range(rows)], dtype="Int64"),
            "v": range(rows),
        }
    ).set_index(levels)
    frame.to_parquet(tmp_path / "a.parquet", row_group_size=4)
    frames = _frames(str(tmp_path), 1)
    assert len(frames) == 3
    reference = pd.read_parquet(tmp_path / "a.parquet")
    for got in frames:
        assert str(got["k"].dtype) == "Int64" and got["v"].dtype == np.int64
        assert list(got.index.names) == levels
        for level in levels:
            assert got.index.get_level_values(level).dtype == np.int64
    whole = pd.concat(frames)
    assert whole.index.equals(reference.index)
    assert whole["v"].tolist() == reference["v"].tolist()
    assert (
        whole["k"].astype(object).where(whole["k"].notna(), None).tolist()
        == reference["k"].astype(object).where(reference["k"].notna(), None).tolist()
    )
