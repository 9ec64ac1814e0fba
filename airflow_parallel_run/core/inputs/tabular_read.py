"""Reading tabular slices back on workers: only the bytes (or row groups) of the slices given.

Adjacent slices of one file are read with one range request and parsed once; every CSV slice gets the
file's column names from its header, parsed on its own and given to Arrow's reader (a local slice is
streamed into the parser; nothing joins header and slice). A slice's rows are exactly the rows the planner
counted, or its mini-batch fails. Errors name the file, the byte range and, for a ragged CSV row, the line
of the file.
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any, BinaryIO

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ..errors import InputError
from ..minibatch import TabularSlice
from ..storage import is_local
from .object_check import check_object
from .tabular import TabularDataset
from .tabular_jsonl import OBJECT, Records, decide_types, parse_records, read_range_records, typed_array
from .tabular_jsonl import columns as jsonl_columns
from .tabular_scan import _NL, _UTF8_BOM, _blank_bytes, _is_utf8, _QuoteTracker
from .tabular_types import arrow_types, convert_options, parse_options, read_options, unique_names

# pandas' C parser on a ragged row; its line counts records of the text it parsed (header included).
_RAGGED_ROW = re.compile(r"(Expected \d+ fields in )line (\d+)(, saw \d+)")


def read_tabular(slices: Sequence[TabularSlice], dataset: TabularDataset) -> pd.DataFrame:
    """Read exactly the given slices and concatenate them in order, as one DataFrame with a fresh index.

    Adjacent slices of the same file are read with one range request and parsed once; every CSV slice gets
    the names of the file's header [0, header_end). csv and parquet are read
    as Arrow and converted once (`read_tabular_table`); a csv without a header keeps pandas' column names
    0, 1, ... JSON Lines records are typed with the job's field types (`_read_jsonl`).
    """
    if dataset.format == "parquet":
        return _parquet_to_pandas(read_tabular_table(slices, dataset), dataset.null_columns, slices)
    if dataset.format != "jsonl":
        frame = to_pandas(read_tabular_table(slices, dataset))
        if dataset.format == "csv" and not dataset.header:
            frame.columns = list(range(frame.shape[1]))
        return frame
    jsonl: pd.DataFrame = _read_jsonl(slices, dataset, as_pandas=True)
    return jsonl


def to_pandas(table: pa.Table) -> pd.DataFrame:
    """A mini-batch's Table as a DataFrame whose dtypes do not depend on which rows it holds: integer and
    bool columns become pandas' nullable Int64/boolean (numpy's int64 and bool have no missing value, so
    plain `to_pandas()` gives float64/object for a mini-batch that happens to hold one, and int64/bool for
    its neighbour)."""
    return table.to_pandas(types_mapper=_NULLABLE.get)


def _parquet_to_pandas(
    table: pa.Table, null_columns: tuple[str, ...] | None, slices: Sequence[TabularSlice]
) -> pd.DataFrame:
    """A Parquet mini-batch as a DataFrame: its integer and bool columns that the job knows hold no missing
    value (not in `null_columns`, core/inputs/tabular_types.py: `parquet_null_columns`) as numpy's
    int64/bool, as `pandas.read_parquet` reads them, the others nullable (`to_pandas`). One of the former
    that holds a missing value after all (the file changed after planning, or its statistics were wrong)
    fails the mini-batch, naming the column: read as float64 or object it would differ from its neighbours."""
    if null_columns is None:
        return to_pandas(table)
    nullable = set(null_columns)
    plain = [i for i, f in enumerate(table.schema) if f.type in _NULLABLE and f.name not in nullable]
    for i in plain:
        column = table.column(i)
        if column.null_count:
            files = sorted({s.url for s in slices})
            raise InputError(
                f"{', '.join(files)}: column {table.schema.field(i).name!r} holds {column.null_count} missing "
                "value(s) in this mini-batch, but the files' statistics said it holds none when the job was "
                "planned (did a file change?); run the job again"
            )
    if len(plain) == sum(1 for f in table.schema if f.type in _NULLABLE):
        return table.to_pandas()  # no column needs pandas' nullable dtypes
    frame = to_pandas(table)
    # Arrow's types_mapper sees types, not columns: the others are given numpy's dtype afterwards, as columns
    # or as the index levels pandas' metadata restores them to (a DataFrame written with a named index). Their
    # names are unique (the planner counts a name two columns share as possibly null).
    for name in {table.schema.field(i).name for i in plain}:
        if name in frame.columns:
            frame[name] = frame[name].to_numpy(dtype=_numpy_dtype(frame[name].dtype))
        elif name in frame.index.names:
            frame.index = _numpy_level(frame.index, frame.index.names.index(name))
    return frame


def _numpy_level(index: pd.Index, level: int) -> pd.Index:
    """`index` with one level (of a MultiIndex, or the whole index) in numpy's dtype instead of a nullable one."""
    if not isinstance(index, pd.MultiIndex):
        return index.astype(_numpy_dtype(index.dtype))
    values = index.levels[level]  # a MultiIndex level's distinct values: a missing one is a code, not a value
    return index.set_levels(values.astype(_numpy_dtype(values.dtype)), level=level)


def _numpy_dtype(dtype: Any) -> Any:
    """numpy's dtype for a pandas nullable one (Int64 -> int64, boolean -> bool)."""
    return dtype.numpy_dtype


_NULLABLE = {
    pa.int8(): pd.Int8Dtype(),
    pa.int16(): pd.Int16Dtype(),
    pa.int32(): pd.Int32Dtype(),
    pa.int64(): pd.Int64Dtype(),
    pa.uint8(): pd.UInt8Dtype(),
    pa.uint16(): pd.UInt16Dtype(),
    pa.uint32(): pd.UInt32Dtype(),
    pa.uint64(): pd.UInt64Dtype(),
    pa.bool_(): pd.BooleanDtype(),
}


def read_tabular_table(slices: Sequence[TabularSlice], dataset: TabularDataset) -> pa.Table:
    """The given slices as one pyarrow Table, in order: Parquet row groups as stored (no copy), CSV parsed
    by Arrow with the dataset's `column_types` (the same for every slice, core/inputs/tabular_types.py),
    JSON Lines with the job's field types (core/inputs/tabular_jsonl.py)."""
    if dataset.format == "jsonl":
        table: pa.Table = _read_jsonl(slices, dataset, as_pandas=False)
        return table
    tables = [_read_group(group, dataset) for group in _coalesce(slices)]
    if not tables:
        return pa.table({})
    if len(tables) == 1:
        return tables[0]
    return pa.concat_tables(tables, promote_options="permissive")


def _coalesce(slices: Sequence[TabularSlice]) -> Iterator[list[TabularSlice]]:
    """Group runs of slices that can be fetched together: same file, and contiguous bytes for csv/jsonl."""
    group: list[TabularSlice] = []
    for s in slices:
        if group:
            prev = group[-1]
            same_file = prev.url == s.url and prev.format == s.format
            joinable = same_file and (
                s.format == "parquet" or (prev.end == s.start and prev.header_end == s.header_end)
            )
            if not joinable:
                yield group
                group = []
        group.append(s)
    if group:
        yield group


def read_csv_sample(
    slices: Sequence[TabularSlice], dataset: TabularDataset, empty_type: pa.DataType
) -> pa.Table:
    """Header + the given consecutive slices of one file, parsed with the dataset's column types (for
    inferring the job's types: a column with no value is `empty_type`)."""
    first, last = slices[0], slices[-1]
    fs, path = fsspec.core.url_to_fs(first.url, **dict(dataset.storage_options))
    where = f"{first.url} bytes [{first.start}, {last.end})"
    try:
        data = _read_range(fs, path, first.start, last.end)
        head = _read_range(fs, path, 0, first.header_end) if first.header_end else b""
    except OSError as exc:
        raise InputError(f"{where}: cannot read: {exc}") from exc
    return _parse_csv_arrow(head, data, dataset, where, slices, empty_type)


def _read_group(group: list[TabularSlice], dataset: TabularDataset) -> pa.Table:
    first, last = group[0], group[-1]
    fs, path = fsspec.core.url_to_fs(first.url, **dict(dataset.storage_options))
    if first.format == "parquet":
        row_groups = [rg for s in group for rg in s.row_groups]
        where = f"{first.url} row groups {row_groups}"
        try:
            if is_local(fs):
                # pyarrow's own file reader: its decoding threads never wait for the GIL of a Python file.
                # Not memory-mapped: a file truncated under a mapping kills the process (SIGBUS) instead
                # of raising an error that names the file.
                return pq.ParquetFile(path).read_row_groups(row_groups)
            with fs.open(path, "rb") as f:
                table = pq.ParquetFile(f).read_row_groups(row_groups)
        except Exception as exc:
            raise InputError(f"{where}: cannot read Parquet: {exc}") from exc
        check_object(fs, path, first.url, first.identity, f"row groups {row_groups}")  # or DataChangedError
        return table

    start, end, header_end = first.start, last.end, first.header_end
    where = f"{first.url} bytes [{start}, {end})"
    if first.format == "csv" and is_local(fs):
        # Local files are read with plain OS calls (no fsspec file object between the parser and the bytes),
        # streamed into Arrow's parser block by block: a whole-slice buffer, touched once and freed, cost
        # more in a fresh entry process (its pages faulted in every time) than the parse saved.
        try:
            with open(path, "rb", buffering=0) as f:
                if os.fstat(f.fileno()).st_size < end:
                    raise InputError(
                        f"{where}: the file is shorter than planned (did it change after planning?)"
                    )
                head = os.pread(f.fileno(), header_end, 0) if header_end else b""
                return _parse_csv_arrow(head, _FileRange(f, start, end - start), dataset, where, group)
        except OSError as exc:
            raise InputError(f"{where}: cannot read: {exc}") from exc
        except InputError as exc:  # the range reader's, when the file shrinks while it is parsed
            if str(exc).startswith(where):
                raise
            raise InputError(f"{where}: {exc}") from exc
    try:
        data = _read_range(fs, path, start, end)
        head = _read_range(fs, path, 0, header_end) if header_end else b""
    except OSError as exc:
        raise InputError(f"{where}: cannot read: {exc}") from exc
    if len(data) != end - start or len(head) != header_end:
        raise InputError(f"{where}: the file is shorter than planned (did it change after planning?)")
    check_object(fs, path, first.url, first.identity, f"bytes [{start}, {end})")  # or DataChangedError
    if first.format == "csv":
        return _parse_csv_arrow(head, data, dataset, where, group)
    raise InputError(f"{first.url}: unsupported tabular format {first.format!r}")


def _jsonl_bytes(group: list[TabularSlice], dataset: TabularDataset) -> tuple[bytes, str]:
    first, last = group[0], group[-1]
    fs, path = fsspec.core.url_to_fs(first.url, **dict(dataset.storage_options))
    start, end = first.start, last.end
    where = f"{first.url} bytes [{start}, {end})"
    try:
        data = _read_range(fs, path, start, end)
    except OSError as exc:
        raise InputError(f"{where}: cannot read: {exc}") from exc
    if len(data) != end - start:
        raise InputError(f"{where}: the file is shorter than planned (did it change after planning?)")
    check_object(fs, path, first.url, first.identity, f"bytes [{start}, {end})")  # or DataChangedError
    if start == 0 and data.startswith(_UTF8_BOM) and _is_utf8(dataset.encoding):
        data = data[3:]  # the JSON parser does not skip a byte order mark
    return data, where


def read_jsonl_sample(slices: Sequence[TabularSlice], dataset: TabularDataset, limit: int) -> Records:
    """The records of the first `limit` bytes of consecutive slices of one file (whole lines; at least the
    first record), for deciding the job's field types; lines that do not parse are left out (their slice
    fails when it is read)."""
    first, last = slices[0], slices[-1]
    fs, path = fsspec.core.url_to_fs(first.url, **dict(dataset.storage_options))
    where = f"{first.url} bytes [{first.start}, {last.end})"
    try:
        data = _read_range(fs, path, first.start, min(last.end, first.start + limit))
        if first.start + limit < first.end:
            cut = data.rfind(b"\n")
            data = data[: cut + 1] if cut >= 0 else _read_range(fs, path, first.start, first.end)
    except OSError as exc:
        raise InputError(f"{where}: cannot read: {exc}") from exc
    if first.start == 0 and data.startswith(_UTF8_BOM) and _is_utf8(dataset.encoding):
        data = data[3:]
    return parse_records(data, dataset, where, strict=False)


def _read_jsonl(slices: Sequence[TabularSlice], dataset: TabularDataset, as_pandas: bool) -> Any:
    """The slices' records with the job's field types (core/inputs/tabular_jsonl.py): a DataFrame (nullable
    Int64/boolean, float64, str/None; Python values for "object" fields) or a Table of that schema. Read
    without decided types (not through a job), the types are decided from these records."""
    parts = []
    for group in _coalesce(slices):
        data, where = _jsonl_bytes(group, dataset)
        parts.append((read_range_records(group, data, dataset, where), where, group[0]))
    types = dict(dataset.column_types or {})
    if dataset.column_types is None:
        types = decide_types(Records([o for r, _, _ in parts for o in r.objects], []))
    fields: dict[str, list[Any]] = {name: [] for name in types}
    arrays: dict[str, list[pa.Array]] = {name: [] for name in types}
    for records, where, first in parts:
        for name, values in jsonl_columns(records, types, where, first).items():
            if as_pandas and types[name] == OBJECT:
                fields[name].extend(values)
            else:
                arrays[name].append(typed_array(name, types[name], values, records, where, first))
    if not as_pandas:
        return pa.table(
            {n: pa.chunked_array(a, _arrow_type(types[n])) for n, a in arrays.items()}
        ).combine_chunks()
    typed = to_pandas(
        pa.table(
            {n: pa.chunked_array(a, _arrow_type(types[n])) for n, a in arrays.items() if types[n] != OBJECT}
        )
    )
    rows = sum(len(r.objects) for r, _, _ in parts)
    out = {n: pd.Series(fields[n], dtype=object) if types[n] == OBJECT else typed[n] for n in types}
    return pd.DataFrame(out, index=pd.RangeIndex(rows))


def _arrow_type(type_name: str) -> pa.DataType:
    return pa.string() if type_name == OBJECT else pa.type_for_alias(type_name)


def _parse_csv_arrow(
    head: bytes,
    data: bytes | _FileRange,
    dataset: TabularDataset,
    where: str,
    group: Sequence[TabularSlice],
    empty_type: pa.DataType | None = None,
) -> pa.Table:
    """Header + slices parsed by Arrow's CSV reader with the dataset's column types; an error names the
    file, the byte range and (for a ragged row) the line of the file, as pandas' parser reports it.

    The rows are exactly the rows the planner counted, or the mini-batch fails (`_check_rows`): a slice
    never loses or gains a row without an error."""
    planned = sum(s.rows for s in group)
    first_rows: int | None = None
    try:
        table = _arrow_csv(head, data, dataset, empty_type)
        if table.num_rows == planned:
            return _as_pandas_reads(table, head, data, dataset, where, empty_type)
        first_rows = table.num_rows
    except pa.ArrowInvalid:
        pass
    # pandas (and the planner) skip lines of only spaces/tabs, which Arrow reads as a row of one field (a
    # value in a one-column file, or the row that sets the column count when a slice starts with one)
    data = _as_bytes(data)
    trimmed, removed = _without_blank_records(data, dataset, at_file_start=group[0].start == 0)
    try:
        table = _arrow_csv(head, trimmed, dataset, empty_type)
    except pa.ArrowInvalid as exc:
        if "conversion error" in str(exc) and "invalid UTF8" not in str(exc):
            raise _type_error(where, exc) from exc  # bytes not in the encoding: pandas' message names them
        if empty_type is not None:  # deciding the job's types: another slice decides them (tabular_types.py)
            _parse_csv(_RangeReader(head, data, len(data)), dataset, len(head), where, group[0])
            raise InputError(f"{where}: cannot parse as csv: {exc}") from exc
        # A short row (fewer fields than the header) is read by pandas with the missing fields empty, and by
        # Arrow not at all: pandas' parser reads the slice as text, Arrow casts it to the job's types. A
        # ragged row that pandas refuses too fails with its message naming the line of the file.
        table = _short_rows_filled(head, data, dataset, where, group[0])
        first_rows = None
        _check_rows(table.num_rows, planned, where)
        return table
    # Each blank record taken out was one row of Arrow's first parse; more taken out than that means one of
    # them was inside a value as Arrow reads it (the value changed), fewer that Arrow saw rows the planner
    # did not.
    consistent = first_rows is None or first_rows - removed == table.num_rows
    _check_rows(table.num_rows if consistent else first_rows, planned, where)
    return _as_pandas_reads(table, head, trimmed, dataset, where, empty_type)


def _reparsed(
    head: bytes, data: bytes | _FileRange, dataset: TabularDataset, empty_type: pa.DataType | None
) -> Callable[[list[str]], pa.Table]:
    """The slice parsed again with the given columns as text."""

    def parse(names: list[str]) -> pa.Table:
        types = {**(dataset.column_types or {}), **dict.fromkeys(names, "string")}
        return _arrow_csv(head, data, dataclasses.replace(dataset, column_types=types), empty_type)

    return parse


# Arrow's integer converter reads `0x10`/`0X1f` (spaces around trimmed) as hex; pandas keeps them as text.
_HEX = r"^\s*0[xX]"


def _as_pandas_reads(
    table: pa.Table,
    head: bytes,
    data: bytes | _FileRange,
    dataset: TabularDataset,
    where: str,
    empty_type: pa.DataType | None,
) -> pa.Table:
    """`table`, checked for numbers that Arrow's converters read and `pandas.read_csv` keeps as text: a NaN
    spelled otherwise than pandas' missing values (`NAN`, `+nan`, ` NaN`, `nan(0)`: pandas' spellings are
    nulls here, so a float column never holds a NaN that pandas reads) and an integer in hex. Reading a
    mini-batch, such a value fails it as any value that does not fit the job's types; deciding the job's
    types (`empty_type` given), its column is text, as pandas reads it.

    Cheap when there is none: a vectorized NaN test of the float columns, and the integer columns are
    parsed again as text only when the bytes hold `0x` or `0X`."""
    odd = arrow_only_numbers(table, _reparsed(head, data, dataset, empty_type), _may_hold_hex(data))
    if not odd:
        return table
    if empty_type is not None:
        for i, (_, column) in odd.items():
            table = table.set_column(i, table.field(i).name, column)
        return table
    raise _arrow_only_error(where, table, odd)


def _arrow_only_error(where: str, table: pa.Table, odd: dict[int, tuple[str, Any]]) -> InputError:
    i, (value, _) = next(iter(odd.items()))
    return _type_error(
        where,
        f"column {table.field(i).name!r} ({table.field(i).type}) holds {value!r}, a number for Arrow but text for "
        "pandas.read_csv, which reads such a column as string",
    )


def arrow_only_numbers(
    table: pa.Table | pa.RecordBatch, as_text: Callable[[list[str]], Any], may_hold_hex: bool
) -> dict[int, tuple[str, Any]]:
    """The columns of `table` holding a number Arrow reads and pandas does not (`_as_pandas_reads`): index
    -> (the first such value, the column as text); `as_text(names)` parses the same rows with the columns
    of those names as text."""
    import pyarrow.compute as pc

    schema = table.schema
    # a sum is NaN when a value is (or for +inf with -inf): one pass without an array of flags, confirmed
    floats = [
        i
        for i, f in enumerate(schema)
        if pa.types.is_floating(f.type)
        and _is_nan(pc.sum(table.column(i)).as_py())
        and pc.any(pc.is_nan(table.column(i))).as_py()
    ]
    ints = [i for i, f in enumerate(schema) if pa.types.is_integer(f.type)] if may_hold_hex else []
    if not floats and not ints:
        return {}
    text = as_text([schema.field(i).name for i in floats + ints])
    odd: dict[int, tuple[str, Any]] = {}
    for i in floats + ints:
        column = text.column(i)
        found = pc.is_nan(table.column(i)) if i in floats else pc.match_substring_regex(column, _HEX)
        values = column.filter(found)
        if len(values):
            odd[i] = (values[0].as_py(), column)
    return odd


def _is_nan(value: Any) -> bool:
    return value is not None and value != value


def _may_hold_hex(data: bytes | _FileRange) -> bool:
    if isinstance(data, _FileRange):
        return data.hex_seen
    return _hex_in(data, len(data))


def _hex_in(data: bytes | bytearray, end: int) -> bool:
    """Whether data[:end] holds `0x` or `0X`. Found by looking for the letter (memchr: rare in numbers,
    while `b"0x" in data` scans byte by byte, slow on digits), then the `0` before it; data with many x's
    is scanned for the pair directly."""
    for letter, pair in ((b"x", b"0x"), (b"X", b"0X")):
        at = data.find(letter, 1, end)
        for _ in range(64):
            if at == -1:
                break
            if data[at - 1] == 0x30:
                return True
            at = data.find(letter, at + 1, end)
        else:
            if data.find(pair, 0, end) != -1:
                return True
    return False


def _type_error(where: str, exc: object) -> InputError:
    return InputError(
        f"{where}: cannot read as csv with the job's column types: {exc}. The types of the columns are decided "
        "once for every mini-batch from the start of the first file (or given with column_types); give this "
        "column's type, e.g. TabularDataset.from_delimited_files(..., column_types={'<column>': 'string'})"
    )


def _short_rows_filled(
    head: bytes, data: bytes, dataset: TabularDataset, where: str, first: TabularSlice
) -> pa.Table:
    """The slice as pandas' parser reads it (short rows filled with missing values), every column as text,
    cast to the job's column types."""
    import pyarrow.compute as pc

    frame = _parse_csv(_RangeReader(head, data, len(data)), dataset, len(head), where, first, as_text=True)
    if not dataset.header:
        frame.columns = [str(i) for i in range(frame.shape[1])]
    elif head:
        # the header's names as every other slice has them (pandas' parser names an empty one "Unnamed: 1")
        names = _header_names(head, dataset)
        if len(names) == frame.shape[1]:
            frame.columns = names
    table = pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(None)
    text = table
    types = arrow_types(dataset.column_types)
    for i, name in enumerate(table.column_names):
        column = table.column(i)
        if pa.types.is_null(column.type):
            column = column.cast(pa.string())
        target = types.get(name, pa.string())
        if pa.types.is_boolean(target):
            column = pc.utf8_lower(column)
        try:
            table = table.set_column(i, name, column.cast(target))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise _type_error(where, exc) from exc
    odd = arrow_only_numbers(
        table,
        lambda names: pa.table([c.cast(pa.string()) for c in text.columns], names=text.column_names),
        _may_hold_hex(data),
    )
    if odd:
        raise _arrow_only_error(where, table, odd)
    return table


def _check_rows(rows: int | None, planned: int, where: str) -> None:
    if rows != planned:
        raise InputError(
            f"{where}: Arrow's CSV reader found {rows} row{'s' if rows != 1 else ''} where the plan counted "
            f"{planned}, so its records are not the ones planned and the mini-batch is not run (rows would "
            "be lost or invented). Did the file change after planning?"
        )


def _without_blank_records(data: bytes, dataset: TabularDataset, at_file_start: bool) -> tuple[bytes, int]:
    """`data` without the records the planner calls blank (only the bytes of `_blank_bytes`: spaces, tabs
    unless they separate fields, CRs), and how many were taken out. Records are found as the planner finds
    them (core/inputs/tabular_scan.py): newlines inside quoted fields do not end records, and a UTF-8 byte
    order mark at the file's start is blank and does not hide the quote that follows it. The count is of
    the rows Arrow reads from the records taken out (a record of only CRs and LFs is none: an empty line)."""
    tracked = data
    if at_file_start and data.startswith(_UTF8_BOM) and _is_utf8(dataset.encoding):
        tracked = b"\r\r\r" + data[3:]
    arr = np.frombuffer(tracked, dtype=np.uint8)
    newlines = np.flatnonzero(arr == _NL)
    mask = _QuoteTracker(dataset.separator).record_ends(arr, 0, newlines, 1)
    ends = (newlines if mask is None else newlines[mask]).tolist()
    blank = _blank_bytes(dataset)
    kept, start, removed = [], 0, 0
    for end in [*ends, len(data) - 1]:
        record = tracked[start : end + 1]
        if record and not record.translate(None, blank) and record.strip(b"\n"):
            # the rows Arrow reads from it: its pieces between line ends (CR, LF or CRLF) that are not empty
            removed += sum(1 for piece in record.replace(b"\r", b"\n").split(b"\n") if piece)
        else:
            kept.append(data[start : end + 1])
        start = end + 1
    return b"".join(kept), removed


def _arrow_csv(
    head: bytes, data: bytes | _FileRange, dataset: TabularDataset, empty_type: pa.DataType | None
) -> pa.Table:
    """Arrow's parse (`pa.ArrowInvalid` for bytes it cannot read as the types). A column with no value and
    no type given becomes `empty_type` (default float64 NaN, as pandas reads it).

    The header is parsed on its own and its names given to the reader (`column_names`), so the slice's
    bytes are parsed as they were read, never joined with the header (a local file's slice is streamed)."""
    types = arrow_types(dataset.column_types)
    size = len(data)
    if dataset.header:
        names = _header_names(head, dataset) if head and size else None
    else:
        names = sorted((k for k in types if k.isdigit()), key=int) or None
    last = (data[-1] if size else _NL) if isinstance(data, bytes) else data.last_byte()
    tail = (
        b"\n" if last != _NL else b""
    )  # the file's last record: Arrow cannot infer a lone unterminated field
    prefix = head if names is None else b""
    source = (
        data.stream(tail)
        if isinstance(data, _FileRange) and names is not None
        else pa.BufferReader(prefix + _as_bytes(data) + tail)
    )
    try:
        table = pacsv.read_csv(
            source,
            read_options=read_options(dataset, names),
            parse_options=parse_options(dataset),
            convert_options=convert_options(dataset, types),
        )
    except pa.ArrowInvalid as exc:
        if "straddl" not in str(exc):
            raise
        # a record larger than Arrow's block (1 MiB): the slice as one block
        whole = prefix + _as_bytes(data) + tail
        table = pacsv.read_csv(
            pa.BufferReader(whole),
            read_options=read_options(dataset, names, max(len(whole), 1 << 20)),
            parse_options=parse_options(dataset),
            convert_options=convert_options(dataset, types),
        )
    if not dataset.header and not names:
        table = table.rename_columns([str(i) for i in range(table.num_columns)])
    elif names is None:
        table = table.rename_columns(unique_names(table.column_names))
    untyped_empty = [
        i for i, f in enumerate(table.schema) if pa.types.is_null(f.type) and f.name not in types
    ]
    for i in untyped_empty:
        table = table.set_column(i, table.field(i).name, table.column(i).cast(empty_type or pa.float64()))
    return table


_HEADER_NAMES: dict[tuple[bytes, str, str], list[str]] = {}


def _header_names(head: bytes, dataset: TabularDataset) -> list[str]:
    """The column names of a file's header bytes [0, header_end), as Arrow reads them at the start of the
    file (byte order mark and empty lines before it skipped), repeats renamed as pandas renames them
    (`unique_names`); remembered per header in the process."""
    key = (head, dataset.separator, dataset.encoding)
    names = _HEADER_NAMES.get(key)
    if names is None:
        text = head if head.endswith(b"\n") else head + b"\n"
        names = unique_names(
            pacsv.read_csv(
                pa.BufferReader(text),
                read_options=read_options(dataset, None),
                parse_options=parse_options(dataset),
                convert_options=convert_options(dataset, {}),
            ).column_names
        )
        if len(_HEADER_NAMES) > 64:
            _HEADER_NAMES.clear()
        _HEADER_NAMES[key] = names
    return names


class _FileRange:
    """`size` bytes of an open local file from `start`: streamed to the parser (`stream`), or read whole
    for the rare paths that need the bytes (`read`)."""

    def __init__(self, file: BinaryIO, start: int, size: int) -> None:
        self.file, self.start, self.size = file, start, size
        self._reader: _RangeReader | None = None

    @property
    def hex_seen(self) -> bool:
        """Whether the bytes last streamed (or these bytes, never streamed) hold `0x` or `0X`."""
        if self._reader is None or not self._reader.hex_seen and self._reader.unread:
            return _may_hold_hex(self.read())  # not streamed to the end (a record larger than a block)
        return self._reader.hex_seen

    def __len__(self) -> int:
        return self.size

    def last_byte(self) -> int:
        return os.pread(self.file.fileno(), 1, self.start + self.size - 1)[0] if self.size else _NL

    def stream(self, tail: bytes) -> Any:
        self.file.seek(self.start)
        self._reader = _RangeReader(b"", self.file, self.size, tail, watch_hex=True)
        return pa.PythonFile(self._reader, mode="r")

    def read(self) -> bytes:
        data = os.pread(self.file.fileno(), self.size, self.start)
        if len(data) != self.size:
            raise InputError("the file is shorter than planned (did it change after planning?)")
        return data


def _as_bytes(data: bytes | _FileRange) -> bytes:
    return data if isinstance(data, bytes) else data.read()


def _parse_csv(
    reader: _RangeReader,
    dataset: TabularDataset,
    header_end: int,
    where: str,
    first: TabularSlice,
    as_text: bool = False,
) -> pd.DataFrame:
    try:
        return pd.read_csv(
            reader,
            sep=dataset.separator,
            encoding=dataset.encoding,
            header=0 if header_end else None,
            dtype=str if as_text else None,
        )
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from exc
    except Exception as exc:
        text = reader.head + reader.all_bytes()  # error path only: the bytes again, for the line number
        raise InputError(
            f"{where}: cannot parse as csv: "
            f"{_line_of_file(str(exc), text, len(reader.head), first, dataset.separator)}"
        ) from exc


class _RangeReader(io.RawIOBase):
    """A read-only stream of `head`, `size` bytes of `body` (bytes, or a file positioned at the slice's
    start) and `tail`, so a parser reads header + slice without them being joined into one buffer first."""

    def __init__(
        self, head: bytes, body: bytes | BinaryIO, size: int, tail: bytes = b"", watch_hex: bool = False
    ) -> None:
        super().__init__()
        # `0x`/`0X` in the body (`_as_pandas_reads`), looked for only until found; `_last` is the byte before
        # the chunk being read (a pair split between two reads)
        self.hex_seen = not watch_hex
        self._last = b""
        self.head = head
        self._tail = memoryview(tail)
        self._head = memoryview(head)
        self._body = body
        self._start = body.tell() if not isinstance(body, bytes) else 0
        self._view = memoryview(body) if isinstance(body, bytes) else None
        self._size = size
        self._done = 0

    def readable(self) -> bool:
        return True

    @property
    def unread(self) -> bool:
        return self._done < self._size

    def readinto(self, buffer: Any) -> int:
        out = memoryview(buffer).cast("B")
        if self._head.nbytes:
            n = min(out.nbytes, self._head.nbytes)
            out[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        want = min(out.nbytes, self._size - self._done)
        if want <= 0:
            n = min(out.nbytes, self._tail.nbytes)
            out[:n] = self._tail[:n]
            self._tail = self._tail[n:]
            return n
        if self._view is not None:
            out[:want] = self._view[self._done : self._done + want]
            n = want
        else:
            n = self._body.readinto(out[:want]) or 0  # type: ignore[union-attr]
            if n == 0:
                raise InputError("the file is shorter than planned (did it change after planning?)")
        if not self.hex_seen:
            # a bytearray (what Python's buffered reads pass) is searched where it is, without a copy
            chunk = buffer if isinstance(buffer, bytearray) and out.nbytes == len(buffer) else bytes(out[:n])
            self.hex_seen = (self._last == b"0" and chunk[0] in b"xX") or _hex_in(chunk, n)
            self._last = bytes(chunk[n - 1 : n])
        self._done += n
        return n

    def all_bytes(self) -> bytes:
        """The whole body again (for error messages)."""
        if self._view is not None:
            return bytes(self._view)
        assert not isinstance(self._body, bytes)
        return os.pread(self._body.fileno(), self._size, self._start)


def _line_of_file(message: str, text: bytes, data_start: int, first: TabularSlice, separator: str) -> str:
    """pandas' ragged-row message with its 'line L' turned into the line of the file.

    pandas counts the lines of what it parsed (header bytes + slice) and, like the planner, does not end
    a line at a newline inside a quoted field; the file's line counts every newline, as an editor does.
    Slices planned without `first_line` get "line N of the slice starting at byte B" instead.
    """
    found = _RAGGED_ROW.search(message)
    if found is None:
        return message
    newlines = _newlines_before_record(text, int(found.group(2)), data_start, separator)
    if newlines is None:
        return message
    where = (
        f"line {first.first_line + newlines}"
        if first.first_line is not None
        else f"line {newlines + 1} of the slice starting at byte {first.start}"
    )
    return message[: found.start()] + found.group(1) + where + found.group(3) + message[found.end() :]


def _newlines_before_record(text: bytes, number: int, skip: int, separator: str) -> int | None:
    """Newlines in text[skip:] before CSV record `number` (1-based; quoted newlines do not end records)."""
    if text.startswith(_UTF8_BOM):
        text = b"\r\r\r" + text[3:]  # as the planner sees it (the parser skips the mark)
    arr = np.frombuffer(text, dtype=np.uint8)
    newlines = np.flatnonzero(arr == _NL)
    mask = _QuoteTracker(separator).record_ends(arr, 0, newlines, 1)
    ends = newlines if mask is None else newlines[mask]
    if not 1 <= number <= ends.size + 1:
        return None
    start = 0 if number == 1 else int(ends[number - 2]) + 1
    if start < skip:
        return None
    return int(np.searchsorted(newlines, start) - np.searchsorted(newlines, skip))


def _read_range(fs: Any, path: str, start: int, end: int) -> bytes:
    """Only the bytes [start, end): one ranged request on object stores, a seek + read locally."""
    if end <= start:
        return b""
    data = fs.cat_file(path, start=start, end=end)
    return bytes(data)
