"""Whole jobs against a reference reader of the whole file: what run() receives across every mini-batch,
concatenated in order, is what `pyarrow.csv.read_csv` / `pandas.read_csv` read from the file, or the job
fails with an error naming the file; never a green job with other data.

Each case plans the input with small mini-batches (many slices), decides the job's types as a job does
and reads every mini-batch on its own, as a worker reads it, for both batch formats.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

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
from airflow_parallel_run.core.inputs.tabular_types import unique_names
from airflow_parallel_run.core.plan import plan_inputs


def _job(dataset: TabularDataset, size: int, folder: Path, batch_format: str) -> list[object]:
    """What run() receives for each mini-batch of the job, in order."""
    batches = list(plan_inputs([dataset], size))
    job_input = dataset.with_column_types(batches)
    return [read_batch(job_input, mb, str(folder), batch_format)[0] for mb in batches]


def _write(tmp_path: Path, data: bytes) -> str:
    path = tmp_path / "data.csv"
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize("batch_format", ["pandas", "pyarrow"])
@pytest.mark.parametrize(
    "data",
    [
        b"a,b\r1,2\n3,4\n5,6\n",  # the header ends with a lone CR, the rest with LF
        b"\xef\xbb\xbfa,b\r1,2\n3,4\n",  # the same after a byte order mark
        b"a,b\r1,2\r3,4\r",  # old Mac line endings: no LF anywhere
    ],
)
def test_rows_behind_a_lone_cr_in_the_header_record_are_never_dropped(
    tmp_path: Path, data: bytes, batch_format: str
) -> None:
    """Arrow and pandas end a record at a lone CR; the planner ends records at LF only. A header record
    that holds a lone CR holds rows of data too: they must not vanish as part of the header."""
    path = _write(tmp_path, data)
    reference = pacsv.read_csv(path)
    assert reference.num_rows > 0 and reference.num_rows == len(pd.read_csv(path))
    dataset = TabularDataset.from_delimited_files(path)
    try:
        parts = _job(dataset, 4, tmp_path, batch_format)
    except InputError as exc:
        assert re.search(re.escape(path) + r".*line break", str(exc)), str(exc)
        return
    rows = sum(len(p) for p in parts)  # type: ignore[arg-type]
    assert rows == reference.num_rows, (
        f"the job succeeded with {rows} rows, the file has {reference.num_rows}"
    )


def test_a_whole_file_with_old_mac_line_endings_is_refused_however_long(tmp_path: Path) -> None:
    """A CSV with CR line endings only is one LF-record, the header record, however long. One over 64 MiB was
    not looked into: the job planned no mini-batch and succeeded with none of its rows."""
    rows = 17_000_000  # 68 MB of "1,2\r"
    path = _write(tmp_path, b"a,b\r" + b"1,2\r" * rows)
    with pytest.raises(InputError, match=rf"data\.csv: the header record .* holds {rows} rows of data"):
        plan_inputs([TabularDataset.from_delimited_files(path)], 64 << 20)


@pytest.mark.parametrize(
    ("data", "rows"),
    [
        (b"a,b\r1,2\n3,4\n", 1),
        (b"\xef\xbb\xbfa,b\r1,2\r\r \t\r3,4\r", 2),  # blank pieces between are no rows
        (b'a,"b\rc"\r1,2\r"x\ry",3\r', 2),  # a CR inside quotes is data, also across chunks
        (b'a,"b\rc"\r\n1,2\n', 0),  # CRLF ends the header record: nothing to refuse
        (b"a,b\r\n" * 3, 0),
    ],
)
@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 8, 1 << 20])
def test_the_header_record_is_checked_the_same_in_chunks_of_any_size(
    tmp_path: Path, data: bytes, rows: int, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The header record is read chunk by chunk when it is longer than the planner's first chunk: the rows
    counted in it do not depend on where the chunks end (a CRLF, a quoted CR or a byte order mark split
    between two chunks)."""
    from airflow_parallel_run.core.inputs import tabular_scan

    monkeypatch.setattr(tabular_scan, "_CHUNK_BYTES", chunk)
    path = _write(tmp_path, data)
    if rows:
        with pytest.raises(InputError, match=rf"holds {rows} rows? of data after the header"):
            plan_inputs([TabularDataset.from_delimited_files(path)], 64)
    else:
        plan_inputs([TabularDataset.from_delimited_files(path)], 64)


def test_every_mini_batch_of_a_crlf_file_is_read_as_the_reference_reads_it(tmp_path: Path) -> None:
    path = _write(tmp_path, b'a,b\r\n1,x\r\n2,"y\r\nz"\r\n3,w\r\n')
    reference = pacsv.read_csv(path, parse_options=pacsv.ParseOptions(newlines_in_values=True))
    parts = _job(TabularDataset.from_delimited_files(path), 4, tmp_path, "pyarrow")
    assert len(parts) > 1
    assert pa.concat_tables(parts).equals(reference)  # type: ignore[arg-type]


def _with_nullable_ints(frame: pd.DataFrame) -> pd.DataFrame:
    """A pandas reference with the dtypes a mini-batch has (nullable Int64 for integer columns)."""
    return frame.astype(
        {c: "Int64" for c, t in zip(frame.columns, frame.dtypes, strict=True) if t == "int64"}
    )


@pytest.mark.parametrize(
    "data",
    [
        b"a,a\n1,x\n2,y\n3,z\n",  # an int column and a text column of one name
        b"a,a,a.1\n1,x,2\n3,y,4\n",  # a third column already named as pandas names the second `a`
        b"k,k\nx,1\ny,2\n",
    ],
)
def test_columns_of_one_name_keep_their_own_types_and_get_pandas_names(tmp_path: Path, data: bytes) -> None:
    """Two header fields of one name are two columns: each is read with its own type (the job's types are
    decided per column, not per name), named as `pandas.read_csv` names them (`a`, `a.1`)."""
    path = _write(tmp_path, data)
    dataset = TabularDataset.from_delimited_files(path)
    want_frame = _with_nullable_ints(pd.read_csv(path))
    frames = _job(dataset, 4, tmp_path, "pandas")
    assert len(frames) > 1
    pd.testing.assert_frame_equal(pd.concat(frames, ignore_index=True), want_frame)  # type: ignore[arg-type]
    want_table = pacsv.read_csv(path)  # Arrow's own reading keeps the duplicate names
    tables = _job(dataset, 4, tmp_path, "pyarrow")
    got = pa.concat_tables(tables)  # type: ignore[arg-type]
    assert got.column_names == list(want_frame.columns)
    assert got.rename_columns(want_table.column_names).equals(want_table), (got.schema, want_table.schema)


@pytest.mark.parametrize("batch_format", ["pandas", "pyarrow"])
def test_a_mini_batch_with_a_short_row_has_the_columns_of_the_others(
    tmp_path: Path, batch_format: str
) -> None:
    """A short row is read by pandas' parser (tabular_read._short_rows_filled); its mini-batch still has the
    header's names and the job's types, as every other mini-batch of the job."""
    header = b"a,,c\n"  # an empty name: pandas' parser would call it "Unnamed: 1"
    path = _write(tmp_path, header + b"1,2,3\n4,5\n6,7,8\n")
    names = pacsv.read_csv(pa.BufferReader(header)).column_names
    parts = _job(TabularDataset.from_delimited_files(path), 4, tmp_path, batch_format)
    assert len(parts) == 3
    if batch_format == "pyarrow":
        assert [t.column_names for t in parts] == [names] * 3  # type: ignore[attr-defined]
        assert len({t.schema for t in parts}) == 1, [t.schema for t in parts]  # type: ignore[attr-defined]
        rows = pa.concat_tables(parts).to_pylist()  # type: ignore[arg-type]
        assert [list(r.values()) for r in rows] == [[1, 2, 3], [4, 5, None], [6, 7, 8]]
    else:
        assert [list(f.columns) for f in parts] == [names] * 3  # type: ignore[attr-defined]
        assert len({tuple(map(str, f.dtypes)) for f in parts}) == 1, [f.dtypes for f in parts]  # type: ignore[attr-defined]
        frame = pd.concat(parts, ignore_index=True)  # type: ignore[arg-type]
        want = _with_nullable_ints(pd.read_csv(path)).set_axis(names, axis=1).astype({"c": "Int64"})
        pd.testing.assert_frame_equal(frame, want)


def test_columns_of_one_name_keep_their_types_when_the_first_slice_is_larger_than_the_sample(
    tmp_path: Path,
) -> None:
    """A first slice larger than the 1 MiB sample has its types from Arrow's first block
    (tabular_types._first_block_schema): there too, each of two columns of one name has its own type."""
    path = _write(tmp_path, b"a,a\n" + b"1,x\n" * 300_000)
    batches = list(plan_inputs([TabularDataset.from_delimited_files(path)], 4 << 20))
    assert len(batches) == 1 and batches[0].slices[0].end - batches[0].slices[0].start > 1 << 20
    want = pacsv.read_csv(path)
    got = TabularDataset.from_delimited_files(path).with_column_types(batches)
    assert list(got.column_types or {}) == list(pd.read_csv(path, nrows=1).columns)  # a, a.1
    assert list((got.column_types or {}).values()) == [str(f.type) for f in want.schema]  # int64, string


@REPEATABLE
@given(
    names=st.lists(st.sampled_from(["a", "b", "a.1", "a.2", "b.1", "a.1.1", "a.3"]), min_size=1, max_size=7)
)
def test_repeated_names_are_renamed_as_pandas_renames_them(names: list[str]) -> None:
    header = ",".join(names) + "\n" + ",".join("1" * len(names)) + "\n"
    assert unique_names(names) == list(pd.read_csv(io.StringIO(header)).columns)


def _write_jsonl(tmp_path: Path, lines: list[bytes]) -> str:
    path = tmp_path / "data.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return str(path)


@pytest.mark.parametrize("batch_format", ["pandas", "pyarrow"])
def test_a_lone_surrogate_in_a_string_field_fails_naming_the_file_field_and_line(
    tmp_path: Path, batch_format: str
) -> None:
    """`json.loads` reads "\\ud800" as a lone surrogate, which no UTF-8 string holds: the mini-batch fails
    naming the file, the field and the line (it raised a bare UnicodeEncodeError)."""
    path = _write_jsonl(tmp_path, [b'{"a": "x"}', b'{"a": "y"}', b'{"a": "\\ud800"}'])
    assert json.loads(Path(path).read_text().splitlines()[2])["a"] == "\ud800"
    with pytest.raises(InputError, match=re.escape(path) + r".*field 'a' \(line 3\).*surrogate"):
        _job(TabularDataset.from_json_lines_files(path), 4, tmp_path, batch_format)


@pytest.mark.parametrize("batch_format", ["pandas", "pyarrow"])
def test_a_lone_surrogate_in_an_object_field_is_kept(tmp_path: Path, batch_format: str) -> None:
    """An "object" field keeps every value exact: for pyarrow as JSON text that `json.loads` reads back as
    the reference value (escaped, since a lone surrogate is no UTF-8), for pandas as the Python value."""
    path = _write_jsonl(
        tmp_path, [b'{"a": [1]}', b'{"a": ["\\ud800", "\\u00e9"]}', b'{"a": {"k": "\\udfff"}}']
    )
    want = [json.loads(line)["a"] for line in Path(path).read_text().splitlines()]
    parts = _job(TabularDataset.from_json_lines_files(path), 4, tmp_path, batch_format)
    assert len(parts) > 1
    if batch_format == "pyarrow":
        got = [json.loads(v) for v in pa.concat_tables(parts).column("a").to_pylist()]  # type: ignore[arg-type]
    else:
        got = list(pd.concat(parts, ignore_index=True)["a"])  # type: ignore[arg-type]
    assert got == want


# Spellings that Arrow's converters (with the engine's options) read as numbers and `pandas.read_csv` keeps
# as text: integers in hex (`0x`/`0X` only; spaces around them are trimmed) and NaN spellings that are not
# pandas' missing values (any case, a sign, spaces around, a payload in parentheses).
_ARROW_ONLY_NUMBERS = [
    "0x10", "0X1f", " 0x10", "0x10 ", "0xff",
    "NAN", "Nan", "nAN", "+nan", "+NaN", "-NAN", "-Nan", " NaN", "NaN ", "nan(0)", "NaN(123)",
]  # fmt: skip
# Spellings both read alike (checked so that the guard for the ones above leaves them as they are).
_SHARED_SPELLINGS = [
    "16", " 1", "1 ", "007", "-0", "1e5", "1E5", "1.", ".5", "+.5", "inf", "-Infinity", "iNf", "1e400",
    "True", "FALSE", "nan", "-NaN", "NA", "x0x1",
]  # fmt: skip


def _pandas_like(frame: pd.DataFrame) -> pd.DataFrame:
    """A pandas reference with a mini-batch's dtypes (nullable Int64 and boolean)."""
    return _with_nullable_ints(frame).astype(
        {c: "boolean" for c, t in zip(frame.columns, frame.dtypes, strict=True) if t == "bool"}
    )


@pytest.mark.parametrize("batch_format", ["pandas", "pyarrow"])
@pytest.mark.parametrize("spelling", _ARROW_ONLY_NUMBERS + _SHARED_SPELLINGS)
@pytest.mark.parametrize("neighbour", ["1", "2.5"])
def test_a_spelling_in_the_sample_is_read_as_pandas_reads_the_column(
    tmp_path: Path, spelling: str, neighbour: str, batch_format: str
) -> None:
    """The job's types are pandas' defaults: a column whose sample holds `0x10` or `NAN` is text, as
    `pandas.read_csv` reads it (Arrow alone reads 16 and NaN), and every value is pandas' in both formats."""
    path = _write(tmp_path, f"x,k\n{neighbour},a\n{spelling},b\n{neighbour},c\n".encode())
    want = _pandas_like(pd.read_csv(path))
    parts = _job(TabularDataset.from_delimited_files(path), 6, tmp_path, batch_format)
    assert len(parts) > 1
    if batch_format == "pandas":
        got_frame = pd.concat(parts, ignore_index=True)  # type: ignore[arg-type]
        if str(got_frame["x"].dtype) == "Int64" and want["x"].dtype == "float64":
            want = want.astype({"x": "Int64"})  # ints with a missing value: nullable Int64 (README)
        pd.testing.assert_frame_equal(got_frame, want)
    else:
        got = pa.concat_tables(parts).column("x").to_pylist()  # type: ignore[arg-type]
        assert got == [None if pd.isna(v) else v for v in want["x"].tolist()], (got, want["x"].tolist())


@pytest.mark.parametrize("batch_format", ["pandas", "pyarrow"])
@pytest.mark.parametrize("spelling", _ARROW_ONLY_NUMBERS)
@pytest.mark.parametrize("neighbour", ["1", "2.5"])
def test_a_spelling_after_the_sample_fails_its_mini_batch_naming_the_column_and_the_fix(
    tmp_path: Path, spelling: str, neighbour: str, batch_format: str
) -> None:
    """Beyond the sample, in a column decided int64/float64 from numbers: pandas over the whole file would
    read the column as text, so the value fits no number type and its mini-batch fails as a word would,
    naming the file, the column and `column_types` (it was a green job with 16 or NaN)."""
    from airflow_parallel_run.core.inputs import tabular_types

    rows = "".join(f"{neighbour},r{i}\n" for i in range(30))
    path = _write(tmp_path, f"x,k\n{rows}{spelling},z\n".encode())
    assert pd.read_csv(path)["x"].dtype == object or str(pd.read_csv(path)["x"].dtype) == "str"
    dataset = TabularDataset.from_delimited_files(path)
    batches = list(plan_inputs([dataset], 64))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tabular_types, "SAMPLE_BYTES", 64)  # the sample ends before the spelling
        job_input = dataset.with_column_types(batches)
    assert (job_input.column_types or {})["x"] in ("int64", "float64")
    with pytest.raises(
        InputError,
        match=re.escape(path) + r" bytes \[\d+, \d+\): cannot read as csv with the job's column types: "
        rf"(column 'x'|In CSV column #0).*({re.escape(repr(spelling))}|{re.escape(repr(spelling.strip()))})"
        r".*column_types",
    ):
        for mb in batches:
            read_batch(job_input, mb, str(tmp_path), batch_format)


@pytest.mark.parametrize("spelling", ["0x10", "NAN"])
def test_a_spelling_in_a_first_slice_larger_than_the_sample_makes_its_column_text(
    tmp_path: Path, spelling: str
) -> None:
    """A first slice larger than the sample has its types from Arrow's first block
    (tabular_types._first_block_schema): there too, a column holding `0x10` or `NAN` is text."""
    from airflow_parallel_run.core.inputs import tabular_types

    rows = "".join(f"{i},{i}.5\n" for i in range(40))
    path = _write(tmp_path, f"i,f\n{spelling},{spelling}\n{rows}".encode())
    dataset = TabularDataset.from_delimited_files(path)
    batches = list(plan_inputs([dataset], 1 << 20))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tabular_types, "SAMPLE_BYTES", 64)
        assert batches[0].slices[0].end - batches[0].slices[0].start > tabular_types.SAMPLE_BYTES
        job_input = dataset.with_column_types(batches)
    assert job_input.column_types == {"i": "string", "f": "string"}
    assert [str(t) for t in pd.read_csv(path).dtypes] in (["object"] * 2, ["str"] * 2)


@pytest.mark.parametrize("body", [b"1\n0x10\n", b"1\n0X1f\n", b"10\nx0\n", b"1\n00\nx\n"])
def test_hex_split_between_two_reads_of_a_streamed_slice_is_seen(tmp_path: Path, body: bytes) -> None:
    """A local slice is streamed to Arrow in reads of Arrow's size: `0x` split between two of them (the `0`
    ending one read, the `x` starting the next) is still seen, so its integer columns are checked."""
    from airflow_parallel_run.core.inputs.tabular_read import _RangeReader

    path = tmp_path / "body"
    path.write_bytes(body)
    split = body.index(b"0") + 1  # the first read ends with a `0`
    with open(path, "rb", buffering=0) as f:
        reader = _RangeReader(b"", f, len(body), watch_hex=True)
        first, rest = bytearray(split), bytearray(64)
        assert reader.readinto(first) == split
        assert reader.readinto(rest) == len(body) - split
    assert bytes(first) + bytes(rest[: len(body) - split]) == body
    assert reader.hex_seen == (b"0x" in body or b"0X" in body)


@pytest.mark.parametrize(
    "data",
    [
        b"0x",
        b"a0X",
        b"x0x",
        b"xxX0X",
        b"x" * 200 + b"0x",
        b"X" * 200 + b"9X0X",
        b"x" * 200,
        b"0 x",
        b"x0",
        b"",
    ],
)
def test_hex_is_looked_for_as_a_plain_search_finds_it(data: bytes) -> None:
    from airflow_parallel_run.core.inputs.tabular_read import _hex_in

    assert _hex_in(data, len(data)) == (b"0x" in data or b"0X" in data)
    assert _hex_in(bytearray(data + b"0x"), len(data)) == (b"0x" in data or b"0X" in data)


@pytest.mark.parametrize("batch_format", ["pandas", "pyarrow"])
def test_infinities_of_both_signs_in_one_mini_batch_are_read_as_pandas_reads_them(
    tmp_path: Path, batch_format: str
) -> None:
    """inf and -inf in one float column sum to NaN (the cheap test for a NaN): they are still numbers."""
    path = _write(tmp_path, b"x\n1.5\ninf\n-inf\nnan\n2.5\n")
    want = pd.read_csv(path)["x"].tolist()
    parts = _job(TabularDataset.from_delimited_files(path), 1 << 20, tmp_path, batch_format)
    if batch_format == "pandas":
        got = pd.concat(parts, ignore_index=True)["x"].tolist()  # type: ignore[arg-type]
    else:
        got = [float("nan") if v is None else v for v in pa.concat_tables(parts).column("x").to_pylist()]  # type: ignore[arg-type]
    assert str(got) == str(want)
