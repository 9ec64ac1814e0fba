"""CSV read by Arrow with one set of column types per job, for both batch formats.

Property: for random tables (quoted fields with separators, quotes, LF/CRLF inside; empty strings and
missing values; unicode; CRLF or LF record ends; a byte order mark; a trailing newline or not; with or
without a header) and many mini-batch sizes, the job's mini-batches, each read on its own as a worker reads
it and concatenated, are what `pyarrow.csv.read_csv` reads from the whole file with the same explicit types
(batch_format="pyarrow"), and its `to_pandas()` (batch_format="pandas"); every mini-batch has the very
same schema; and the types the job decides are the types the table was generated with.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
from hypothesis import given
from hypothesis import strategies as st
from property_support import REPEATABLE

from airflow_parallel_run.core.errors import InputError
from airflow_parallel_run.core.inputs.batch_format import read_batch
from airflow_parallel_run.core.inputs.tabular import TabularDataset
from airflow_parallel_run.core.plan import plan_inputs

# pandas' default missing-value spellings: the reference reads with them too
NULLS = [
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>",
    "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
]  # fmt: skip
ARROW_TYPES = {"int": pa.int64(), "float": pa.float64(), "text": pa.string()}
TEXT = st.text(alphabet=list("ab,;\"' \n\r\tzé€日😀"), min_size=0, max_size=8).map(
    lambda s: "x" + s
)  # a letter first: never a number, never a null spelling


@st.composite
def tables(draw: Any) -> dict[str, Any]:
    sep = draw(st.sampled_from([",", ";", "\t"]))
    kinds = draw(st.lists(st.sampled_from(["int", "float", "text"]), min_size=1, max_size=4))
    rows = draw(st.integers(1, 25))
    header = draw(st.booleans())
    eol = draw(st.sampled_from(["\n", "\r\n"]))
    lines = [sep.join(f"c{i}é" for i in range(len(kinds)))] if header else []
    for r in range(rows):
        fields = []
        for kind in kinds:
            missing = r > 0 and draw(st.integers(0, 5)) == 0  # the first row has every value (types)
            if kind == "int":
                fields.append("" if missing else str(draw(st.integers(-(10**12), 10**12))))
            elif kind == "float":
                fields.append(
                    ""
                    if missing
                    else f"{draw(st.integers(-999, 999))}.{draw(st.sampled_from(['5', '25', '125']))}"
                )
            else:
                value = "" if missing else draw(TEXT)
                if missing or draw(st.booleans()) or any(c in value for c in f'{sep}"\r\n'):
                    value = '"' + value.replace('"', '""') + '"'
                fields.append(value)
        lines.append(sep.join(fields))
    text = eol.join(lines) + (eol if draw(st.booleans()) else "")
    data = ("\ufeff" if draw(st.booleans()) else "").encode() + text.encode()
    return {"data": data, "sep": sep, "kinds": kinds, "header": header}


def _reference(path: str, case: dict[str, Any]) -> pa.Table:
    names = (
        [f"c{i}é" for i in range(len(case["kinds"]))]
        if case["header"]
        else [str(i) for i in range(len(case["kinds"]))]
    )
    types = {name: ARROW_TYPES[kind] for name, kind in zip(names, case["kinds"], strict=True)}
    return pacsv.read_csv(
        path,
        read_options=pacsv.ReadOptions(column_names=None if case["header"] else names),
        parse_options=pacsv.ParseOptions(delimiter=case["sep"], newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(column_types=types, null_values=NULLS, strings_can_be_null=True),
    )


def check_table(case: dict[str, Any], sizes: list[int]) -> None:
    with tempfile.TemporaryDirectory(prefix="apr-arrow-property-") as folder:
        path = str(Path(folder) / "data.csv")
        Path(path).write_bytes(case["data"])
        want = _reference(path, case)
        dataset = TabularDataset.from_delimited_files(path, separator=case["sep"], header=case["header"])
        for size in sizes:
            batches = list(plan_inputs([dataset], size))
            job_input = dataset.with_column_types(batches)
            assert {n: pa.type_for_alias(t) for n, t in (job_input.column_types or {}).items()} == dict(
                zip(want.schema.names, want.schema.types, strict=True)
            ), "the job's types are not the table's"
            tables = [read_batch(job_input, mb, folder, "pyarrow")[0] for mb in batches]
            assert all(t.schema == want.schema for t in tables), [t.schema for t in tables]
            got = pa.concat_tables(tables)
            assert got.equals(want), (size, got.to_pylist(), want.to_pylist())
            frames = [read_batch(job_input, mb, folder, "pandas")[0] for mb in batches]
            assert len({tuple(map(str, f.dtypes)) for f in frames}) == 1, [f.dtypes for f in frames]
            expected = want.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
            if not case["header"]:
                expected.columns = range(expected.shape[1])
            pd.testing.assert_frame_equal(pd.concat(frames, ignore_index=True), expected)


@REPEATABLE
@given(case=tables(), sizes=st.lists(st.integers(1, 400), min_size=1, max_size=3, unique=True))
def test_mini_batches_concatenated_equal_arrow_reading_the_whole_file(
    case: dict[str, Any], sizes: list[int]
) -> None:
    check_table(case, [1, *sizes])


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "data.csv"
    path.write_text(text)
    return str(path)


def test_a_column_is_one_type_in_every_mini_batch(tmp_path: Path) -> None:
    """Integers in the first rows, floats later: float64 in every mini-batch (pandas read each slice on its
    own, and the first mini-batches got int64)."""
    path = _write(tmp_path, "id,price\n" + "".join(f"{i},{i}\n" for i in range(20)) + "20,2.5\n")
    dataset = TabularDataset.from_delimited_files(path)
    batches = list(plan_inputs([dataset], 16))
    assert len(batches) > 3
    job_input = dataset.with_column_types(batches)
    for fmt in ("pandas", "pyarrow"):
        kinds = {
            str(read_batch(job_input, mb, str(tmp_path), fmt)[0].schema.field("price").type)
            if fmt == "pyarrow"
            else str(read_batch(job_input, mb, str(tmp_path), fmt)[0]["price"].dtype)
            for mb in batches
        }
        assert kinds == ({"double"} if fmt == "pyarrow" else {"float64"}), (fmt, kinds)


@pytest.mark.parametrize("size", [32, 1000])  # sampled from whole slices / from Arrow's first block
def test_a_value_outside_the_decided_type_fails_its_mini_batch_naming_the_fix(
    tmp_path: Path, size: int
) -> None:
    """A word beyond the sample in a column the sample saw as integers: a loud error, never a silently
    different type in that mini-batch."""
    from airflow_parallel_run.core.inputs import tabular_types

    path = _write(tmp_path, "code\n" + "".join(f"{i}\n" for i in range(40)) + "A1B\n")
    dataset = TabularDataset.from_delimited_files(path)
    batches = list(plan_inputs([dataset], size))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tabular_types, "SAMPLE_BYTES", 64)  # the sample ends before the word
        job_input = dataset.with_column_types(batches)
    assert job_input.column_types == {"code": "int64"}
    with pytest.raises(
        InputError,
        match=r"bytes \[\d+, \d+\): cannot read as csv with the job's column types.*'A1B'.*column_types",
    ):
        for mb in batches:
            read_batch(job_input, mb, str(tmp_path), "pyarrow")
    given = TabularDataset.from_delimited_files(path, column_types={"code": "string"}).with_column_types(
        batches
    )
    values = [
        v for mb in batches for v in read_batch(given, mb, str(tmp_path), "pyarrow")[0]["code"].to_pylist()
    ]
    assert values == [str(i) for i in range(40)] + ["A1B"]


def test_parquet_row_groups_are_handed_over_as_read(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    table = pa.table({"a": list(range(100)), "b": [f"v{i}" for i in range(100)]})
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=10)
    dataset = TabularDataset.from_parquet_files(str(tmp_path / "t.parquet"))
    batches = list(plan_inputs([dataset], 1))
    tables = [read_batch(dataset, mb, str(tmp_path), "pyarrow")[0] for mb in batches]
    assert all(isinstance(t, pa.Table) for t in tables)
    assert pa.concat_tables(tables).equals(table)


@pytest.mark.parametrize("fmt", ["pyarrow", "pandas"])
def test_a_blank_line_inside_a_quoted_field_is_kept_after_a_byte_order_mark(tmp_path: Path, fmt: str) -> None:
    """One column, no header, a byte order mark before a quoted field holding a line of spaces, and a line
    of spaces outside it: pandas (and the planner) skip the outer one only. Arrow reads that one as a row,
    so the slice's blank records are taken out and the bytes parsed again; the quoted line of spaces was
    taken out with them (the mark hid the quote that opens the field), and the job 'succeeded' with the
    value 'x\\ny' instead of 'x\\n   \\ny'."""
    path = tmp_path / "data.csv"
    path.write_bytes(b'\xef\xbb\xbf"x\n   \ny"\n   \nb\n')
    dataset = TabularDataset.from_delimited_files(str(path), header=False)
    for size in (1, 1000):
        batches = list(plan_inputs([dataset], size))
        job_input = dataset.with_column_types(batches)
        values = []
        for mb in batches:
            data = read_batch(job_input, mb, str(tmp_path), fmt)[0]
            assert len(data) == mb.items
            values += data["0"].to_pylist() if fmt == "pyarrow" else data[0].tolist()
        assert values == ["x\n   \ny", "b"], (size, values)


@pytest.mark.parametrize(
    ("before", "after"), [("a\n1\n2\n", "a\n12\n\n"), ("a,b\n1,2\n3,4\n", "a,b\n1,2\n\n\n\n\n")]
)
def test_rows_other_than_planned_fail_the_mini_batch_naming_the_file_and_bytes(
    tmp_path: Path, before: str, after: str
) -> None:
    """A file rewritten after planning with the same size but fewer records: the slice's rows are not the
    rows the plan counted, and the mini-batch fails naming the file and its bytes (it was handed to run()
    with a row fewer, and the job 'succeeded')."""
    assert len(before) == len(after)
    path = tmp_path / "data.csv"
    path.write_text(before)
    dataset = TabularDataset.from_delimited_files(str(path), column_types={"a": "string"})
    batches = list(plan_inputs([dataset], 1000))
    job_input = dataset.with_column_types(batches)
    path.write_text(after)
    for fmt in ("pyarrow", "pandas"):
        with pytest.raises(
            InputError,
            match=r"data\.csv bytes \[\d+, \d+\): Arrow's CSV reader found 1 row where the plan counted 2",
        ):
            read_batch(job_input, batches[0], str(tmp_path), fmt)


@pytest.mark.parametrize("quoted", [True, False])
def test_a_field_larger_than_arrows_block_keeps_the_jobs_types(tmp_path: Path, quoted: bool) -> None:
    """A 3 MB field (Arrow's CSV reader parses 1 MiB blocks and refuses a record that straddles two): the
    job's types were left undecided, and the first mini-batch read column 'a' as string, the next as
    int64."""
    big = b'"' + b"x\n" * 1_500_000 + b'"' if quoted else b"x" * 3_000_000
    path = tmp_path / "data.csv"
    path.write_bytes(b"a,b\n1," + big + b"\n2,y\n")
    dataset = TabularDataset.from_delimited_files(str(path))
    batches = list(plan_inputs([dataset], 1))
    job_input = dataset.with_column_types(batches)
    assert job_input.column_types == {"a": "int64", "b": "string"}
    tables = [read_batch(job_input, mb, str(tmp_path), "pyarrow")[0] for mb in batches]
    assert [t.schema for t in tables] == [tables[0].schema] * len(tables)
    values = pa.concat_tables(tables).to_pylist()
    assert values == [{"a": 1, "b": big.strip(b'"').decode()}, {"a": 2, "b": "y"}]


def test_a_file_that_shrinks_while_its_slice_is_streamed_names_the_file(tmp_path: Path) -> None:
    """The size is checked before the slice is streamed into Arrow's parser; a file truncated in between
    fails the mini-batch naming the file and its bytes."""
    import os

    from airflow_parallel_run.core.inputs import tabular_read

    path = tmp_path / "data.csv"
    path.write_text("a,b\n" + "".join(f"{i},x{i}\n" for i in range(5000)))
    dataset = TabularDataset.from_delimited_files(str(path))
    batches = list(plan_inputs([dataset], 10**9))
    job_input = dataset.with_column_types(batches)
    stream = tabular_read._FileRange.stream

    def shrinking(self: Any, tail: bytes) -> Any:
        os.truncate(path, self.start + 100)
        return stream(self, tail)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tabular_read._FileRange, "stream", shrinking)
        with pytest.raises(InputError, match=r"data\.csv bytes \[4, \d+\): the file is shorter than planned"):
            read_batch(job_input, batches[0], str(tmp_path), "pyarrow")
